//! Pull failures fed back to the resource: the kubelet's `Failed` pull
//! Events, watched with a server-side field selector (never cached), are
//! attributed by `pull_failures` to the resources whose Secret should have
//! served the image. This module is the thin I/O around that decision.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tracing::debug;

use crate::api::crd::{ClusterPullSecret, PullFailureStatus};
use crate::cache::Stores;
use crate::decide::pull_failures::classify::bounded;
use crate::decide::pull_failures::log::{PULL_FAILURES_CAP, PullFailureLog};
use crate::decide::pull_failures::remint::RemintGate;
use crate::decide::pull_failures::{
    DETAIL_MAX, NAME_MAX, PullEvent, ResourceView, attribute, event_time,
};
use crate::ops::metrics::{Metrics, RegistryLabels};

/// The kubelet's "Failed to pull image" Events.
pub const FIELD_SELECTOR: &str = "involvedObject.kind=Pod,type=Warning,reason=Failed";

/// Per-resource pull failure logs, and the once-a-minute re-mint gate.
#[derive(Default)]
pub struct PullFeedback {
    logs: Mutex<HashMap<String, PullFailureLog>>,
    gate: Mutex<RemintGate>,
}

impl PullFeedback {
    /// What status shows for a resource: the total and the newest entries.
    pub fn status_of(&self, resource: &str) -> (u64, Vec<PullFailureStatus>) {
        let logs = self.logs.lock().expect("pull log lock");
        logs.get(resource)
            .map(|log| {
                (
                    log.total,
                    log.recent.iter().map(PullFailureStatus::from).collect(),
                )
            })
            .unwrap_or_default()
    }

    pub fn forget(&self, resource: &str) {
        self.logs.lock().expect("pull log lock").remove(resource);
    }
}

/// What pull feedback asks of the controller when a failure is counted.
#[async_trait]
pub trait Respond: Send + Sync {
    /// Says on the resource (a Warning Event) that a pull failed to
    /// authenticate.
    async fn announce(&self, cps: &ClusterPullSecret, note: String);
    /// Has the entry serving `host` mint again at the resource's next
    /// reconcile.
    async fn remint(&self, cps: &ClusterPullSecret, host: &str);
}

/// What pull feedback reads and where it keeps its logs: the caches, a
/// client for the pods it diagnoses, and metrics. Nothing of the
/// controller's own state.
pub struct Handle {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub stores: Stores,
    pub log: Arc<PullFeedback>,
    pub respond: Arc<dyn Respond>,
}

fn chrono_of(t: &k8s_openapi::jiff::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32)
}

/// Attributes one Event; returns the resources whose status changed.
async fn handle(ctx: &Handle, ev: &CoreEvent) -> Vec<ObjectRef<ClusterPullSecret>> {
    let namespace = ev.namespace().unwrap_or_default();
    let pod = ev.involved_object.name.clone().unwrap_or_default();
    let message = ev.message.clone().unwrap_or_default();
    let time = event_time(
        ev.last_timestamp.as_ref().and_then(|t| chrono_of(&t.0)),
        ev.event_time.as_ref().and_then(|t| chrono_of(&t.0)),
        ev.first_timestamp.as_ref().and_then(|t| chrono_of(&t.0)),
        Utc::now(),
    );
    let ns_view = ctx.stores.namespace(&namespace);
    let live: Vec<(Arc<ClusterPullSecret>, bool)> = ctx
        .stores
        .with_selections()
        .into_iter()
        .filter(|(r, _)| r.metadata.deletion_timestamp.is_none())
        .map(|(r, selection)| {
            let selects = match (&selection, &ns_view) {
                (Some(sel), Some(ns)) => sel.selects_namespace(ns),
                _ => false,
            };
            (r, selects)
        })
        .collect();
    let keys: Vec<(String, bool, Vec<String>)> = live
        .iter()
        .map(|(r, selects)| {
            let hosts = r
                .status
                .as_ref()
                .map(|s| s.registries.iter().map(|h| h.host.clone()).collect())
                .unwrap_or_default();
            (r.name_any(), *selects, hosts)
        })
        .collect();
    let views: Vec<ResourceView<'_>> = keys
        .iter()
        .map(|(name, selects, hosts)| ResourceView {
            name,
            selects_namespace: *selects,
            keys: hosts,
        })
        .collect();
    let event = PullEvent {
        namespace: &namespace,
        pod: &pod,
        message: &message,
        time,
        reporting_component: ev.reporting_component.as_deref(),
        source_component: ev.source.as_ref().and_then(|s| s.component.as_deref()),
    };
    let attributions = match attribute(&event, &views) {
        Ok(a) => a,
        Err(why) => {
            debug!(
                namespace = bounded(&namespace, NAME_MAX),
                pod = bounded(&pod, NAME_MAX),
                ?why,
                "pull Event not counted"
            );
            return Vec::new();
        }
    };
    let mut changed = Vec::new();
    for mut a in attributions {
        let Some((cps, _)) = live.iter().find(|(r, _)| r.name_any() == a.resource) else {
            continue;
        };
        a.failure.diagnosis = diagnose(ctx, &namespace, &pod, &cps.secret_name())
            .await
            .map(|d| bounded(&d, DETAIL_MAX));
        let counted = {
            let mut logs = ctx.log.logs.lock().expect("pull log lock");
            let log = logs.entry(a.resource.to_string()).or_default();
            log.record(a.failure.clone(), PULL_FAILURES_CAP)
                .then_some(log.total)
        };
        let Some(total) = counted else {
            continue;
        };
        ctx.metrics
            .pull_auth_failures
            .get_or_create(&RegistryLabels {
                resource: a.resource.to_string(),
                registry: a.failure.host.clone(),
            })
            .inc();
        // A count and a host: the Event goes to `default`, where other
        // tenants may read it; which pod pulled which image is on status.
        ctx.respond
            .announce(
                cps,
                format!(
                "an image pull from {} failed to authenticate: {}; failed pulls counted: {total}, the newest in status.pullFailures",
                a.failure.host, a.auth_reason
            ),
        )
        .await;
        let remint = ctx.log.gate.lock().expect("gate lock").try_trigger(
            a.resource,
            &a.failure.host,
            Utc::now(),
        );
        if remint {
            ctx.respond.remint(cps, &a.failure.host).await;
        }
        changed.push(ObjectRef::from_obj(&**cps));
    }
    changed
}

/// The commonest cause of an auth failure is a pod that never got the
/// Secret: its ServiceAccount is not selected, or the pod was admitted
/// before the reference was added (pods copy it only at admission).
///
/// A name longer than any object name the API server accepts names no pod:
/// it is not looked up.
async fn diagnose(ctx: &Handle, namespace: &str, pod: &str, secret: &str) -> Option<String> {
    if pod.len() > NAME_MAX || namespace.len() > NAME_MAX {
        return None;
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let found = pods.get_opt(pod).await.ok().flatten()?;
    let spec = found.spec?;
    let references = spec
        .image_pull_secrets
        .iter()
        .flatten()
        .any(|r| r.name == secret);
    let account = spec
        .service_account_name
        .unwrap_or_else(|| "default".into());
    Some(if references {
        format!("the pod references Secret {secret}; the registry refused its credential")
    } else {
        format!(
            "the pod does not reference Secret {secret}: its ServiceAccount {account} is not selected, or the pod was created before the reference was added (recreate it)"
        )
    })
}

/// Attributes every pull-failure Event as it arrives; yields the resources
/// to reconcile so their status shows it.
pub fn feedback(
    ctx: Arc<Handle>,
    events: impl Stream<Item = Result<watcher::Event<CoreEvent>, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = ObjectRef<ClusterPullSecret>> + Send + 'static {
    events
        .filter_map(|e| async move {
            match e {
                Ok(watcher::Event::Apply(ev)) | Ok(watcher::Event::InitApply(ev)) => Some(ev),
                _ => None,
            }
        })
        .then(move |ev| {
            let ctx = ctx.clone();
            async move { handle(&ctx, &ev).await }
        })
        .flat_map(futures::stream::iter)
}
