use async_trait::async_trait;

use crate::spec::CredentialSpec;
use crate::static_creds::StaticProvider;
use crate::{Cluster, RegistryCredential, SourceError};

/// Mints the credentials of one `credentials:` entry. One instance lives as
/// long as its entry is unchanged, so a provider may keep state between
/// mints (a Harbor robot's id, a cached STS session).
#[async_trait]
pub trait Provider: Send + Sync {
    /// Every host this entry yields, freshly minted. Called once per refresh
    /// of the entry, never once per namespace.
    async fn mint(&self, cluster: &dyn Cluster) -> Result<Vec<RegistryCredential>, ProviderError>;
}

/// Why a mint failed. Messages name the object and the category of failure;
/// they never carry credential material, because they reach status, Events
/// and logs.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("invalid credentials entry: {0}")]
    InvalidSpec(String),
    #[error("the {0} provider is not compiled into this build (cargo feature `{0}`)")]
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
    #[error("{provider}: {reason}")]
    Remote { provider: &'static str, reason: String },
    #[error("{provider}: timed out after {seconds} s")]
    Timeout { provider: &'static str, seconds: u64 },
}

/// The one place a spec entry becomes a provider.
pub fn build(spec: &CredentialSpec) -> Result<Box<dyn Provider>, ProviderError> {
    match spec {
        CredentialSpec::Static(s) => Ok(Box::new(StaticProvider::new(s.clone())?)),
        other => Err(ProviderError::NotCompiledIn(other.kind())),
    }
}
