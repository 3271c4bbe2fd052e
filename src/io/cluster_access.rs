//! What providers may ask of the cluster, answered from the controller's
//! caches (Secrets) and the TokenRequest API (per-tenant identity).

use async_trait::async_trait;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::PostParams;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use regbridge_providers::spec::{SecretRef, ServiceAccountRef};
use regbridge_providers::{Cluster, Redacted, SecretData, SourceError};

/// Lifetime of per-tenant identity tokens: the API minimum is 600 s, and a
/// token is used once, straight away.
const TOKEN_SECONDS: i64 = 600;

pub struct CachedCluster {
    pub client: Client,
    /// Secrets of the controller's namespace, the only place sources are read.
    pub sources: Store<Secret>,
    pub namespace: String,
}

#[async_trait]
impl Cluster for CachedCluster {
    async fn secret(&self, r: &SecretRef) -> Result<Option<SecretData>, SourceError> {
        if r.namespace != self.namespace {
            return Err(SourceError::Read {
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                reason: format!(
                    "source Secrets must live in the controller's namespace {:?}",
                    self.namespace
                ),
            });
        }
        let found = self
            .sources
            .get(&ObjectRef::new(&r.name).within(&r.namespace));
        Ok(found.map(|s| SecretData {
            type_: s.type_.clone(),
            data: s
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
        }))
    }

    async fn service_account_token(
        &self,
        sa: &ServiceAccountRef,
        audience: &str,
    ) -> Result<Redacted<String>, SourceError> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &sa.namespace);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![audience.into()]),
                expiration_seconds: Some(TOKEN_SECONDS),
                ..Default::default()
            }),
            ..Default::default()
        };
        let answer = api
            .create_token_request(&sa.name, &PostParams::default(), &request)
            .await
            .map_err(|e| SourceError::Token {
                namespace: sa.namespace.clone(),
                name: sa.name.clone(),
                reason: match e {
                    kube::Error::Api(s) => format!("{} {}", s.code, s.reason),
                    _ => "request failed".into(),
                },
            })?;
        let token = answer.status.and_then(|s| s.token).unwrap_or_default();
        Ok(Redacted::new(token))
    }
}
