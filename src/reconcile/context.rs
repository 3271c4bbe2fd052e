//! What every step of a resource's reconcile shares: the controller's
//! configuration and caches, each resource's state between runs, the Event
//! recorder, and the one error type of a reconcile.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::Error as FinalizerError;
use kube::{Client, Resource, ResourceExt};
use regbridge_providers::{BuildContext, Trust, Verifier};
use tracing::warn;

use crate::api::crd::ClusterPullSecret;
use crate::cache::Stores;
use crate::io::cluster_access::CachedCluster;
use crate::io::credentials::Credentials;
use crate::io::pull_feedback::{PullFeedback, Respond};
use crate::io::source::{SourceError, SourceSecrets};
use crate::io::status_patch::StatusError;
use crate::io::writer::WriteError;
use crate::ops::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Status(Box<StatusError>),
    #[error(transparent)]
    Source(Box<SourceError>),
    #[error("{failed} writes failed, first: {first}")]
    Writes {
        failed: usize,
        #[source]
        first: Box<WriteError>,
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

// Boxed: a kube error is large, and every reconcile returns this.
impl From<StatusError> for Error {
    fn from(e: StatusError) -> Self {
        Self::Status(Box::new(e))
    }
}

impl From<SourceError> for Error {
    fn from(e: SourceError) -> Self {
        Self::Source(Box::new(e))
    }
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
pub(super) struct ResourceState {
    pub(super) credentials: Credentials,
    /// Namespaces where a Secret of our name is somebody else's, and when
    /// that was last seen.
    pub(super) foreign: HashMap<String, Instant>,
    pub(super) reported_conflicts: BTreeSet<String>,
    /// The credentials failure last reported in an Event.
    pub(super) reported_failure: Option<String>,
}

pub(super) struct Context {
    pub(super) client: Client,
    pub(super) config: Config,
    pub(super) stores: Stores,
    pub(super) metrics: Arc<Metrics>,
    pub(super) recorder: Recorder,
    /// One registry handshake client, shared by every resource.
    pub(super) verifier: Verifier,
    pub(super) pull_feedback: Arc<PullFeedback>,
    pub(super) state: Mutex<HashMap<String, Arc<tokio::sync::Mutex<ResourceState>>>>,
    pub(super) failures: Mutex<HashMap<String, u32>>,
    /// Tells every resource to reconcile (a deleted resource may hand
    /// namespaces over to a younger one).
    pub(super) reconcile_all: tokio::sync::mpsc::UnboundedSender<()>,
    /// The caches still waiting for their first full list.
    pub(super) unsynced: tokio::sync::watch::Receiver<BTreeSet<&'static str>>,
}

impl Context {
    pub(super) fn state_of(
        &self,
        cps: &ClusterPullSecret,
    ) -> Arc<tokio::sync::Mutex<ResourceState>> {
        self.state
            .lock()
            .expect("state lock")
            .entry(cps.uid().unwrap_or_default())
            .or_default()
            .clone()
    }

    /// The cluster as providers see it: cached sources, live TokenRequests.
    pub(super) fn cluster(&self) -> CachedCluster {
        CachedCluster {
            client: self.client.clone(),
            sources: self.stores.sources.clone(),
            namespace: self.config.namespace.clone(),
        }
    }

    /// What providers are built with for the resource `name`.
    pub(super) fn build_context(&self, name: &str) -> BuildContext {
        BuildContext::new(name).with_trust(self.config.trust.clone())
    }

    pub(super) async fn publish(
        &self,
        cps: &ClusterPullSecret,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &cps.object_ref(&())).await {
            warn!(resource = %cps.name_any(), error = %e, "publishing Event failed");
        }
    }

    pub(super) fn sources(&self) -> SourceSecrets<'_> {
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
