//! The watches every cache is fed by: each reports its progress to
//! readiness and metrics, backs off on its own, and relists after 410 Gone.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::cache::index::Index;
use crate::ops::health::Health;
use crate::ops::metrics::{Metrics, WatchLabels};

/// What the watch helpers below accept: a statically typed Kubernetes
/// type they can decode, log and share across tasks.
pub trait Watched:
    kube::Resource<DynamicType = ()>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// A watch whose progress and errors feed readiness and metrics, and which
/// backs off and recovers on its own (410 Gone included: the watcher
/// relists).
pub fn watched<K>(
    name: &'static str,
    api: Api<K>,
    config: watcher::Config,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Watched,
{
    health.register(name);
    let (health, metrics) = (health.clone(), metrics.clone());
    watcher(api, config)
        .map(move |event| {
            match &event {
                Ok(watcher::Event::InitDone) => {
                    health.watch_ok(name);
                    health.watch_synced(name);
                }
                Ok(_) => health.watch_ok(name),
                Err(e) => {
                    health.watch_failed(name);
                    metrics
                        .watch_errors
                        .get_or_create(&WatchLabels { watch: name })
                        .inc();
                    warn!(watch = name, error = %e, "watch failed; retrying");
                }
            }
            event
        })
        .default_backoff()
}

/// A watched type kept whole in a reflector store (small sets only: the
/// resources themselves and the controller namespace's Secrets).
pub fn cached<K>(
    name: &'static str,
    api: Api<K>,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
) -> (
    Store<K>,
    impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
)
where
    K: Watched,
{
    let (store, writer) = reflector::store();
    let stream = watched(name, api, watcher::Config::default(), health, metrics)
        .modify(|o: &mut K| o.meta_mut().managed_fields = None)
        .reflect(writer);
    (store, stream)
}

/// A watched type kept as compact views in an [`Index`].
pub fn indexed<K, V>(
    name: &'static str,
    api: Api<K>,
    config: watcher::Config,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
) -> (
    Index<V>,
    impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
)
where
    K: Watched,
    V: Send + Sync + 'static,
    for<'a> V: From<&'a K>,
{
    let index = Index::default();
    let writer = index.clone();
    let stream = watched(name, api, config, health, metrics).map(move |event| {
        if let Ok(e) = &event {
            writer.apply(e);
        }
        event
    });
    (index, stream)
}

/// Removes `name` from the unsynced set once `stream` has delivered its
/// first full list, after the cache it feeds has taken it in.
pub fn track_sync<K>(
    name: &'static str,
    unsynced: &Arc<tokio::sync::watch::Sender<BTreeSet<&'static str>>>,
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static {
    unsynced.send_modify(|pending| {
        pending.insert(name);
    });
    let unsynced = unsynced.clone();
    stream.inspect(move |event| {
        if let Ok(watcher::Event::InitDone) = event {
            unsynced.send_if_modified(|pending| pending.remove(name));
        }
    })
}
