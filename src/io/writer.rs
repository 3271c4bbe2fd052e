//! The thin I/O layer under the planner: executes a [`Plan`](crate::decide::distribute::Plan) with bounded
//! concurrency, checks ownership before every write, and retries the one
//! write that races other writers (the ServiceAccount list) from fresh state.

use std::collections::HashSet;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, stream};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Client, ResourceExt};
use tracing::{debug, warn};

use crate::api::labels::{FIELD_MANAGER, owned_by};
use crate::cache::index::ServiceAccountView;
use crate::decide::distribute::{Reference, SecretWrite, ServiceAccountWrite, Verb, desired_copy};
use crate::decide::sa_patch::{add_reference, added_by_us, remove_reference};
use crate::ops::metrics::Metrics;

/// How many times a ServiceAccount patch is recomputed after another writer
/// got in first.
pub const SA_PATCH_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{} Secret {namespace}/{name}: {source}", verb.as_str())]
    Secret {
        verb: Verb,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("patch ServiceAccount {namespace}/{name}: {source}")]
    ServiceAccount {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "patch ServiceAccount {namespace}/{name}: still contended after {SA_PATCH_ATTEMPTS} attempts"
    )]
    Contended { namespace: String, name: String },
}

impl WriteError {
    /// One line for status and Events: what failed, and the API server's
    /// reason and code (`Forbidden (403)`) without its full Status.
    pub fn brief(&self) -> String {
        let cause = |e: &kube::Error| match e {
            kube::Error::Api(s) if !s.reason.is_empty() => format!("{} ({})", s.reason, s.code),
            kube::Error::Api(s) => format!("HTTP {}", s.code),
            other => other.to_string(),
        };
        match self {
            Self::Secret {
                verb,
                namespace,
                name,
                source,
            } => format!(
                "{} Secret {namespace}/{name}: {}",
                verb.as_str(),
                cause(source)
            ),
            Self::ServiceAccount {
                namespace,
                name,
                source,
            } => format!("patch ServiceAccount {namespace}/{name}: {}", cause(source)),
            Self::Contended { .. } => self.to_string(),
        }
    }

    pub fn namespace(&self) -> &str {
        match self {
            Self::Secret { namespace, .. }
            | Self::ServiceAccount { namespace, .. }
            | Self::Contended { namespace, .. } => namespace,
        }
    }
}

/// What executing a plan found besides success.
#[derive(Default, Debug)]
pub struct Outcome {
    /// Namespaces where create met a Secret regbridge does not manage.
    pub foreign: Vec<String>,
    /// Writes refused with 409 because the cache lagged behind the server.
    pub stale: usize,
    pub errors: Vec<WriteError>,
}

pub struct Writer<'a> {
    pub client: &'a Client,
    pub metrics: &'a Metrics,
    pub resource: &'a str,
    pub secret_name: &'a str,
    pub payload: Option<&'a [u8]>,
    pub concurrency: usize,
}

enum Done {
    Ok,
    Foreign(String),
    /// The precondition failed because the cache had not yet seen an
    /// earlier write: not a failure, just a reason to look again soon.
    Stale,
    Err(WriteError),
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// A create or delete that found no namespace to write in: it is gone
/// (404), or terminating (403 with the `NamespaceTerminating` cause). Any
/// other 403 is a refusal (RBAC, an admission policy) and a failure: the
/// Secret is missing there.
fn namespace_unavailable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) if s.code == 404 => true,
        kube::Error::Api(s) if s.code == 403 => s
            .details
            .as_ref()
            .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating")),
        _ => false,
    }
}

impl Writer<'_> {
    /// Carries out a plan's writes: Secrets, then ServiceAccounts.
    pub async fn execute(
        &self,
        secrets: Vec<SecretWrite>,
        service_accounts: Vec<ServiceAccountWrite>,
    ) -> Outcome {
        // Secrets first: a create that meets a foreign Secret (which the
        // cache cannot show) must keep that namespace's ServiceAccounts from
        // being pointed at it.
        // Futures are made as slots free up, never all at once: a write
        // future holds its request state, and a fan-out to thousands of
        // namespaces must not hold thousands of them.
        let limit = self.concurrency.max(1);
        // A failed create leaves no Secret to point at either.
        let mut results: Vec<Done> = self.run_secrets(secrets, limit).await;
        let no_secret: HashSet<String> = results
            .iter()
            .filter_map(|r| match r {
                Done::Foreign(ns) => Some(ns.clone()),
                Done::Err(WriteError::Secret {
                    verb: Verb::Create,
                    namespace,
                    ..
                }) => Some(namespace.clone()),
                _ => None,
            })
            .collect();
        let accounts: Vec<ServiceAccountWrite> = service_accounts
            .into_iter()
            .filter(|w| !(w.intent == Reference::Add && no_secret.contains(&w.namespace)))
            .collect();
        let accounts = self.run_accounts(accounts, limit).await;
        results.extend(accounts);
        let mut out = Outcome::default();
        for r in results {
            match r {
                Done::Ok => {}
                Done::Foreign(ns) => out.foreign.push(ns),
                Done::Stale => out.stale += 1,
                Done::Err(e) => out.errors.push(e),
            }
        }
        out
    }

    fn run_secrets(&self, writes: Vec<SecretWrite>, limit: usize) -> BoxFuture<'_, Vec<Done>> {
        stream::iter(writes)
            .map(move |w| self.secret(w))
            .buffer_unordered(limit)
            .collect()
            .boxed()
    }

    fn run_accounts(
        &self,
        writes: Vec<ServiceAccountWrite>,
        limit: usize,
    ) -> BoxFuture<'_, Vec<Done>> {
        stream::iter(writes)
            .map(move |w| self.service_account(w))
            .buffer_unordered(limit)
            .collect()
            .boxed()
    }

    async fn secret(&self, write: SecretWrite) -> Done {
        let verb = write.verb();
        let (namespace, name) = match &write {
            SecretWrite::Create { namespace } | SecretWrite::Update { namespace, .. } => {
                (namespace.clone(), self.secret_name.to_string())
            }
            SecretWrite::Delete {
                namespace, name, ..
            } => (namespace.clone(), name.clone()),
        };
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let result = match write {
            SecretWrite::Create { .. } => {
                let payload = self.payload.unwrap_or_default();
                api.create(
                    &pp,
                    &desired_copy(self.resource, self.secret_name, &namespace, payload),
                )
                .await
                .map(|_| ())
            }
            SecretWrite::Update {
                resource_version, ..
            } => {
                let mut s = desired_copy(
                    self.resource,
                    self.secret_name,
                    &namespace,
                    self.payload.unwrap_or_default(),
                );
                s.metadata.resource_version = Some(resource_version);
                api.replace(&name, &pp, &s).await.map(|_| ())
            }
            SecretWrite::Delete {
                resource_version, ..
            } => {
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        resource_version: Some(resource_version),
                        uid: None,
                    }),
                    ..Default::default()
                };
                api.delete(&name, &dp).await.map(|_| ())
            }
        };
        self.metrics.write("secrets", verb.as_str(), result.is_ok());
        let conflict = result.as_ref().err().and_then(status_code) == Some(409);
        match (verb, result) {
            (_, Ok(())) => Done::Ok,
            // The namespace is gone or terminating: nothing to do there.
            (Verb::Create | Verb::Delete, Err(e)) if namespace_unavailable(&e) => {
                debug!(
                    namespace,
                    verb = verb.as_str(),
                    "namespace unavailable, skipped"
                );
                Done::Ok
            }
            (Verb::Update | Verb::Delete, Err(_)) if conflict => {
                debug!(
                    namespace,
                    verb = verb.as_str(),
                    "resourceVersion moved on; the cache will catch up"
                );
                Done::Stale
            }
            (Verb::Create, Err(_)) if conflict => {
                match api.get_opt(&name).await {
                    Ok(Some(existing)) if !owned_by(existing.labels(), self.resource) => {
                        Done::Foreign(namespace)
                    }
                    // Ours after all (the cache lagged): the next reconcile compares it.
                    Ok(_) => Done::Ok,
                    Err(source) => Done::Err(WriteError::Secret {
                        verb,
                        namespace,
                        name,
                        source,
                    }),
                }
            }
            (_, Err(source)) => Done::Err(WriteError::Secret {
                verb,
                namespace,
                name,
                source,
            }),
        }
    }

    async fn service_account(&self, write: ServiceAccountWrite) -> Done {
        let ServiceAccountWrite {
            namespace,
            name,
            secret,
            intent,
            patch,
        } = write;
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &namespace);
        let pp = PatchParams::apply(FIELD_MANAGER);
        let mut patch = patch;
        for _ in 0..SA_PATCH_ATTEMPTS {
            let result = api
                .patch(&name, &pp, &Patch::<()>::Json(patch.clone()))
                .await;
            self.metrics
                .write("serviceaccounts", "patch", result.is_ok());
            match result {
                Ok(_) => return Done::Ok,
                Err(e) if status_code(&e) == Some(404) => return Done::Ok,
                // 422: a `test` op failed, another writer changed the list.
                // 409: a conflict. Either way: re-read and recompute.
                Err(e) if matches!(status_code(&e), Some(409 | 422)) => {
                    let fresh = match api.get_opt(&name).await {
                        Ok(Some(sa)) => ServiceAccountView::from(&sa),
                        Ok(None) => return Done::Ok,
                        Err(source) => {
                            return Done::Err(WriteError::ServiceAccount {
                                namespace,
                                name,
                                source,
                            });
                        }
                    };
                    let next = match intent {
                        Reference::Add => add_reference(&fresh, &secret),
                        Reference::Remove if added_by_us(&fresh).contains(&secret.as_str()) => {
                            remove_reference(&fresh, &secret)
                        }
                        Reference::Remove => None,
                    };
                    match next {
                        Some(p) => {
                            debug!(
                                namespace,
                                name, "ServiceAccount changed underneath, retrying"
                            );
                            patch = p;
                        }
                        None => return Done::Ok,
                    }
                }
                Err(source) => {
                    warn!(namespace, name, error = %source, "ServiceAccount patch failed");
                    return Done::Err(WriteError::ServiceAccount {
                        namespace,
                        name,
                        source,
                    });
                }
            }
        }
        Done::Err(WriteError::Contended { namespace, name })
    }
}
