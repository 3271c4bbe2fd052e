//! The one interface every provider implements, its error, and what the
//! factory hands each provider when it builds one. Providers depend on this
//! module, never on the factory.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::trust::{Trust, TrustError};
use crate::{Cluster, RegistryCredential, SourceError};

/// Mints the credentials of one `credentials:` entry. One instance lives as
/// long as its entry is unchanged, so a provider may keep state between
/// mints (a Harbor robot's id, a cached STS session).
#[async_trait]
pub trait Provider: Send + Sync {
    /// Every host this entry yields, freshly minted. Called once per refresh
    /// of the entry, never once per namespace.
    async fn mint(&self, cluster: &dyn Cluster) -> Result<Vec<RegistryCredential>, ProviderError>;

    /// Releases what the provider created remotely (a Harbor robot). The
    /// controller calls it from its finalizer when the entry or the resource
    /// goes away. Providers that create nothing keep this no-op.
    async fn cleanup(&self, _cluster: &dyn Cluster) -> Result<(), ProviderError> {
        Ok(())
    }

    /// A short, secret-free note for the resource's status, e.g. the id of the
    /// Harbor robot in use. `None` when there is nothing to say.
    fn status_note(&self) -> Option<String> {
        None
    }

    /// Hands a new instance (a restart, a failover) what its entry last
    /// distributed, minted at `minted_at`, before its first mint. A provider
    /// whose minting has a cost beyond a token (a Harbor rotation revokes
    /// the secret in every namespace) takes it over instead of minting at
    /// once. The default has nothing to take over.
    fn restore(&self, _previous: &[RegistryCredential], _minted_at: DateTime<Utc>) {}

    /// What this provider created outside the cluster, named so that two
    /// instances can tell they manage the same thing (a Harbor robot: its
    /// API and stored name). `None`: nothing to clean up.
    fn remote_object(&self) -> Option<String> {
        None
    }
}

/// Why a mint failed. Messages name the object and the category of failure;
/// they never carry credential material, because they reach status, Events
/// and logs.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("invalid credentials entry: {0}")]
    InvalidSpec(String),
    #[error("this provider is not compiled into this build (cargo feature `{0}`)")]
    NotCompiledIn(&'static str),
    #[error("Secret {namespace}/{name} not found")]
    SecretNotFound { namespace: String, name: String },
    #[error(
        "Secret {namespace}/{name} has type {found}; want kubernetes.io/dockerconfigjson or `username` and `password` keys"
    )]
    WrongSecretType {
        namespace: String,
        name: String,
        found: String,
    },
    #[error("{what} is malformed: {reason}")]
    Malformed { what: String, reason: String },
    #[error("reading {path} failed: {reason}")]
    File { path: String, reason: String },
    #[error(transparent)]
    Cluster(#[from] SourceError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("{provider}: {reason}")]
    Remote {
        provider: &'static str,
        reason: String,
    },
    #[error("{provider}: timed out after {seconds} s")]
    Timeout {
        provider: &'static str,
        seconds: u64,
    },
}

/// What [`build`](crate::build) needs beyond the spec entry itself.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// Name of the `ClusterPullSecret` (or `mint` config) the entry belongs
    /// to. Harbor derives its default robot name from it.
    pub resource_name: String,
    /// Upper bound on one `mint` or `cleanup` call, remote retries included.
    pub timeout: Duration,
    /// What the provider's HTTPS clients trust (`--ca-file` included).
    pub trust: Trust,
}

impl BuildContext {
    /// The default bound on one provider call.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    pub fn new(resource_name: impl Into<String>) -> Self {
        Self {
            resource_name: resource_name.into(),
            timeout: Self::DEFAULT_TIMEOUT,
            trust: Trust::system(),
        }
    }

    pub fn with_trust(mut self, trust: Trust) -> Self {
        self.trust = trust;
        self
    }
}

/// Runs one remote call under the provider's deadline.
#[cfg(any(feature = "ecr", feature = "gar", feature = "harbor", feature = "acr"))]
pub(crate) async fn deadline<T>(
    provider: &'static str,
    limit: Duration,
    call: impl Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| ProviderError::Timeout {
            provider,
            seconds: limit.as_secs().max(1),
        })?
}
