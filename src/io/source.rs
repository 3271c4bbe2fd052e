//! The composed Secret in the controller's namespace: written with the
//! records of what was minted, read back by a new process to take those
//! credentials over, and deleted with its resource. A Secret of that name
//! that regbridge does not own is never touched.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use regbridge_providers::RegistryCredential;
use regbridge_providers::registry::dockerconfig::{self, DATA_KEY};

use crate::api::labels::{FIELD_MANAGER, MINTED, ROLE, ROLE_SOURCE, owned_by};
use crate::cache::index::SecretView;
use crate::decide::distribute::{copy_labels, desired_copy, payload_digest};
use crate::decide::entries::MintRecord;
use crate::ops::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
#[error("{verb} source Secret {namespace}/{name}: {source}")]
pub struct SourceError {
    verb: &'static str,
    namespace: String,
    name: String,
    #[source]
    source: kube::Error,
}

/// What became of the composed Secret.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    /// It already held the composed payload.
    Unchanged,
    Written,
    /// A Secret of that name belongs to something else; it is left alone.
    Foreign,
}

/// The controller namespace's composed Secrets, written as `name`.
pub struct SourceSecrets<'a> {
    pub client: &'a Client,
    pub metrics: &'a Metrics,
    pub namespace: &'a str,
}

impl SourceSecrets<'_> {
    fn error(&self, verb: &'static str, name: &str, source: kube::Error) -> SourceError {
        SourceError {
            verb,
            namespace: self.namespace.into(),
            name: name.into(),
            source,
        }
    }

    /// Makes the Secret `name` hold `payload`, given what the cache has of
    /// it (`cached`). Its annotation carries `records`: written with the
    /// payload they describe, so an unchanged payload keeps the records that
    /// came with it.
    pub async fn ensure(
        &self,
        cached: Option<Arc<SecretView>>,
        name: &str,
        payload: &[u8],
        records: &[MintRecord],
    ) -> Result<Source, SourceError> {
        let ns = self.namespace;
        let mut desired = desired_copy(name, name, ns, payload);
        let mut labels = copy_labels(name);
        labels.insert(ROLE.into(), ROLE_SOURCE.into());
        desired.metadata.labels = Some(labels);
        desired.metadata.annotations = Some(
            [(
                MINTED.to_string(),
                serde_json::to_string(records).unwrap_or_default(),
            )]
            .into(),
        );
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match cached {
            Some(s) if s.owner.as_deref() != Some(name) => Ok(Source::Foreign),
            Some(s)
                if s.managed
                    && s.role.as_deref() == Some(ROLE_SOURCE)
                    && s.content == payload_digest(payload) =>
            {
                Ok(Source::Unchanged)
            }
            Some(s) => {
                desired.metadata.resource_version = Some(s.resource_version.clone());
                let r = api.replace(name, &pp, &desired).await;
                self.metrics.write("secrets", "update", r.is_ok());
                r.map(|_| Source::Written)
                    .map_err(|e| self.error("update", name, e))
            }
            None => match api.create(&pp, &desired).await {
                Ok(_) => {
                    self.metrics.write("secrets", "create", true);
                    Ok(Source::Written)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    self.metrics.write("secrets", "create", false);
                    let existing = api
                        .get_opt(name)
                        .await
                        .map_err(|e| self.error("read", name, e))?;
                    let ours = existing.is_some_and(|s| owned_by(s.labels(), name));
                    Ok(if ours {
                        Source::Written
                    } else {
                        Source::Foreign
                    })
                }
                Err(e) => {
                    self.metrics.write("secrets", "create", false);
                    Err(self.error("create", name, e))
                }
            },
        }
    }

    /// Deletes the Secret `name` if the cache shows it is that resource's.
    pub async fn delete(
        &self,
        cached: Option<Arc<SecretView>>,
        name: &str,
    ) -> Result<(), SourceError> {
        if cached.is_none_or(|s| s.owner.as_deref() != Some(name)) {
            return Ok(());
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), self.namespace);
        match api.delete(name, &Default::default()).await {
            Ok(_) => {
                self.metrics.write("secrets", "delete", true);
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => {
                self.metrics.write("secrets", "delete", false);
                Err(self.error("delete", name, e))
            }
        }
    }
}

/// What the composed Secret of `name` holds, for a new process to take over
/// (records and credentials); nothing unless the Secret is this resource's
/// own source.
pub fn distributed_before(
    sources: &Store<Secret>,
    namespace: &str,
    name: &str,
) -> (Vec<MintRecord>, Vec<RegistryCredential>) {
    let Some(secret) = sources.get(&ObjectRef::new(name).within(namespace)) else {
        return Default::default();
    };
    if !owned_by(secret.labels(), name)
        || secret.labels().get(ROLE).map(String::as_str) != Some(ROLE_SOURCE)
    {
        return Default::default();
    }
    let records = secret
        .annotations()
        .get(MINTED)
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default();
    let credentials = secret
        .data
        .as_ref()
        .and_then(|d| d.get(DATA_KEY))
        .and_then(|payload| dockerconfig::parse(&payload.0).ok())
        .unwrap_or_default();
    (records, credentials)
}
