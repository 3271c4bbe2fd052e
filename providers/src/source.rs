use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::Redacted;
use crate::spec::{SecretRef, ServiceAccountRef};

/// The parts of a Kubernetes Secret a provider reads.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretData {
    pub type_: Option<String>,
    pub data: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for SecretData {
    // Keys only: the values are credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretData")
            .field("type", &self.type_)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "reading Secrets needs a cluster; `regbridge mint` takes `file:` for static credentials instead"
    )]
    NoCluster,
    #[error("reading Secret {namespace}/{name} failed: {reason}")]
    Read {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("requesting a token for ServiceAccount {namespace}/{name} failed: {reason}")]
    Token {
        namespace: String,
        name: String,
        reason: String,
    },
}

/// What providers may ask of the cluster. The controller answers Secrets from
/// its watch cache and tokens through the TokenRequest API; `mint` has no
/// cluster and answers [`SourceError::NoCluster`].
#[async_trait]
pub trait Cluster: Send + Sync {
    /// `Ok(None)` when the Secret does not exist.
    async fn secret(&self, reference: &SecretRef) -> Result<Option<SecretData>, SourceError>;

    /// A short-lived token for `sa` with this audience, for per-tenant cloud
    /// identity.
    async fn service_account_token(
        &self,
        sa: &ServiceAccountRef,
        audience: &str,
    ) -> Result<Redacted<String>, SourceError>;
}

/// The cluster as `regbridge mint` sees it: there is none.
pub struct NoCluster;

#[async_trait]
impl Cluster for NoCluster {
    async fn secret(&self, _: &SecretRef) -> Result<Option<SecretData>, SourceError> {
        Err(SourceError::NoCluster)
    }

    async fn service_account_token(
        &self,
        _: &ServiceAccountRef,
        _: &str,
    ) -> Result<Redacted<String>, SourceError> {
        Err(SourceError::NoCluster)
    }
}
