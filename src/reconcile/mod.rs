//! One `ClusterPullSecret`'s reconcile, run by kube-runtime's controller:
//! the finalizer around it, the per-resource state kept between runs, and
//! the backoff of a failing resource. The pipeline is in `apply`, the
//! teardown in `cleanup`, what sets a reconcile off in `triggers`, and what
//! it announces (Events, metrics) in `report`.

mod apply;
mod cleanup;
mod report;
mod triggers;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::finalizer::{Error as FinalizerError, Event as Finalizer, finalizer};
use kube::{Api, Client, ResourceExt};
use regbridge_providers::{BuildContext, Trust, Verifier};
use tracing::{debug, warn};

pub use self::triggers::run;
use crate::api::crd::ClusterPullSecret;
use crate::api::labels::FINALIZER;
use crate::cache::Stores;
use crate::decide::refresh::backoff;
use crate::decide::verdicts::STALE_RETRY;
use crate::io::cluster_access::CachedCluster;
use crate::io::credentials::Credentials;
use crate::io::pull_feedback::{PullFeedback, Respond};
use crate::io::source::{SourceError, SourceSecrets};
use crate::io::status_patch::StatusError;
use crate::io::writer::WriteError;
use crate::ops::metrics::{Metrics, ReconcileLabels};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Status(#[from] StatusError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{failed} writes failed, first: {first}")]
    Writes {
        failed: usize,
        #[source]
        first: WriteError,
    },
    #[error("{stale} copies changed since they were cached; retrying")]
    Stale { stale: usize },
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<FinalizerError<Error>>),
    #[error("deleting what the providers created: {0}")]
    ProviderCleanup(String),
    #[error("the reconcile panicked: {0}")]
    Panicked(String),
}

/// Runs `work`, turning a panic into an error of the one resource it was
/// for: unwound out of kube-runtime, it would end the process, and with it
/// every other resource's distribution and the webhook.
async fn contained<T>(work: impl std::future::Future<Output = T>) -> Result<T, Error> {
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .map_err(|payload| {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Error::Panicked(message.chars().take(200).collect())
        })
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Where source Secrets are read and composed Secrets written.
    pub namespace: String,
    /// Concurrent API writes per reconcile.
    pub write_concurrency: usize,
    /// This replica's name in Events.
    pub instance: String,
    /// What registry handshakes and providers trust (`--ca-file`).
    pub trust: Trust,
}

/// What one resource's reconciles keep between runs.
#[derive(Default)]
struct ResourceState {
    credentials: Credentials,
    /// Namespaces where a Secret of our name is somebody else's, and when
    /// that was last seen.
    foreign: HashMap<String, Instant>,
    reported_conflicts: BTreeSet<String>,
    /// The credentials failure last reported in an Event.
    reported_failure: Option<String>,
}

struct Context {
    client: Client,
    config: Config,
    stores: Stores,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    /// One registry handshake client, shared by every resource.
    verifier: Verifier,
    pull_feedback: Arc<PullFeedback>,
    state: Mutex<HashMap<String, Arc<tokio::sync::Mutex<ResourceState>>>>,
    failures: Mutex<HashMap<String, u32>>,
    /// Tells every resource to reconcile (a deleted resource may hand
    /// namespaces over to a younger one).
    reconcile_all: tokio::sync::mpsc::UnboundedSender<()>,
    /// The caches still waiting for their first full list.
    unsynced: tokio::sync::watch::Receiver<BTreeSet<&'static str>>,
}

impl Context {
    fn state_of(&self, cps: &ClusterPullSecret) -> Arc<tokio::sync::Mutex<ResourceState>> {
        self.state
            .lock()
            .expect("state lock")
            .entry(cps.uid().unwrap_or_default())
            .or_default()
            .clone()
    }

    /// The cluster as providers see it: cached sources, live TokenRequests.
    fn cluster(&self) -> CachedCluster {
        CachedCluster {
            client: self.client.clone(),
            sources: self.stores.sources.clone(),
            namespace: self.config.namespace.clone(),
        }
    }

    /// What providers are built with for the resource `name`.
    fn build_context(&self, name: &str) -> BuildContext {
        BuildContext::new(name).with_trust(self.config.trust.clone())
    }

    fn sources(&self) -> SourceSecrets<'_> {
        SourceSecrets {
            client: &self.client,
            metrics: &self.metrics,
            namespace: &self.config.namespace,
        }
    }
}

#[async_trait]
impl Respond for Context {
    async fn announce(&self, cps: &ClusterPullSecret, note: String) {
        self.publish(cps, EventType::Warning, "PullAuthFailed", note)
            .await;
    }

    async fn remint(&self, cps: &ClusterPullSecret, host: &str) {
        let state = self.state_of(cps);
        state.lock().await.credentials.refresh_host(host);
    }
}

async fn reconcile(cps: Arc<ClusterPullSecret>, ctx: Arc<Context>) -> Result<Action, Error> {
    // A reconcile plans against the caches: before each has its first full
    // list, a source Secret or a copy not yet cached looks missing, and a
    // restart would create again what exists (a 409 each).
    let _ = ctx.unsynced.clone().wait_for(BTreeSet::is_empty).await;
    let name = cps.name_any();
    let deleting = cps.metadata.deletion_timestamp.is_some();
    let api: Api<ClusterPullSecret> = Api::all(ctx.client.clone());
    let result = contained(finalizer(&api, FINALIZER, cps, |event| async {
        match event {
            Finalizer::Apply(o) => apply::apply(o, &ctx).await,
            Finalizer::Cleanup(o) => cleanup::cleanup(o, &ctx).await,
        }
    }))
    .await;
    let result = match result {
        Err(panicked) => Err(panicked),
        // The cached copy predates the finalizer this replica has just
        // added (the add's `test` guard failed): the watch event bringing
        // the new copy is on its way, so this is not a failure.
        Ok(Err(FinalizerError::AddFinalizer(kube::Error::Api(e)))) if e.code == 422 => {
            debug!(resource = %name, "finalizer already added; waiting for the cache");
            Ok(Action::requeue(STALE_RETRY))
        }
        Ok(other) => other.map_err(|e| match e {
            FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e) => e,
            other => Error::Finalizer(Box::new(other)),
        }),
    };
    ctx.metrics
        .reconciles
        .get_or_create(&ReconcileLabels {
            resource: name.clone(),
            result: match &result {
                Ok(_) => "ok",
                Err(Error::Panicked(_)) => "panic",
                Err(_) => "error",
            },
        })
        .inc();
    // Cleaned up: its series go too, this reconcile's count included, or a
    // deleted resource's last expiry would stay on /metrics and alert.
    if deleting && result.is_ok() {
        ctx.metrics.forget_resource(&name);
    }
    if result.is_ok() {
        ctx.failures.lock().expect("failures lock").remove(&name);
    }
    result
}

/// Requeues a failing resource with its own exponential backoff, so one
/// broken resource neither spins nor delays the others.
fn error_policy(cps: Arc<ClusterPullSecret>, error: &Error, ctx: Arc<Context>) -> Action {
    let name = cps.name_any();
    let mut failures = ctx.failures.lock().expect("failures lock");
    let n = failures.entry(name.clone()).or_default();
    *n += 1;
    warn!(resource = %name, error = %error, attempt = *n, "reconcile failed");
    Action::requeue(backoff(*n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_reconcile_is_an_error_of_its_own() {
        let margin: fn() -> Option<u64> = || None;
        let panicked = contained(async { margin().expect("an out-of-range value") }).await;
        match panicked {
            Err(Error::Panicked(message)) => assert_eq!(message, "an out-of-range value"),
            other => panic!("{other:?}"),
        }
        assert_eq!(contained(async { 7 }).await.ok(), Some(7));
    }
}
