//! What sets a reconcile off: the resources themselves (spec and
//! lifecycle, never the status regbridge writes), and changes to
//! namespaces, ServiceAccounts, copies and source Secrets, each routed only
//! to the resources it can matter to. Also the controller's assembly.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace, Secret, ServiceAccount};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use regbridge_providers::Verifier;

use super::context::{Config, Context};
use super::entry::{error_policy, reconcile};
use crate::api::crd::ClusterPullSecret;
use crate::api::labels::{RESOURCE, managed_selector};
use crate::cache::Stores;
use crate::cache::index::NamespaceView;
use crate::cache::selection::Selection;
use crate::cache::selections::SelectionCache;
use crate::cache::watches::{cached, indexed, track_sync, watched};
use crate::io::pull_feedback::{FIELD_SELECTOR, Handle, PullFeedback, feedback};
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;

/// Resources reconciled at once. Each reconcile plans over a snapshot of
/// the caches; unbounded, hundreds of resources triggered together would
/// hold hundreds of snapshots (memory the allocator keeps) and contend for
/// two cores. A slow provider still leaves most slots free.
const RECONCILE_CONCURRENCY: u16 = 16;

/// Each watch backs off on its own and its errors are already counted; kept
/// from the controller, an error would back off the combined trigger stream,
/// delaying every other watch with it.
fn triggers<K: Send + 'static>(
    stream: impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    stream.filter(|r| std::future::ready(r.is_ok()))
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: Config,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let resources: Api<ClusterPullSecret> = Api::all(client.clone());
    let (namespaces, ns_stream) = indexed(
        "namespaces",
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
        &health,
        &metrics,
    );
    let (service_accounts, sa_stream) = indexed(
        "serviceaccounts",
        Api::<ServiceAccount>::all(client.clone()),
        watcher::Config::default(),
        &health,
        &metrics,
    );
    let (managed, managed_stream) = indexed(
        "managed-secrets",
        Api::<Secret>::all(client.clone()),
        watcher::Config::default().labels(&managed_selector()),
        &health,
        &metrics,
    );
    let (sources, sources_stream) = cached(
        "source-secrets",
        Api::<Secret>::namespaced(client.clone(), &config.namespace),
        &health,
        &metrics,
    );
    let (resources, resources_stream) = cached("clusterpullsecrets", resources, &health, &metrics);
    let unsynced = Arc::new(tokio::sync::watch::Sender::new(BTreeSet::new()));
    let ns_stream = track_sync("namespaces", &unsynced, ns_stream);
    let sa_stream = track_sync("serviceaccounts", &unsynced, sa_stream);
    let managed_stream = track_sync("managed-secrets", &unsynced, managed_stream);
    let sources_stream = track_sync("source-secrets", &unsynced, sources_stream);
    let resources_stream = track_sync("clusterpullsecrets", &unsynced, resources_stream);
    let (trigger_all, all_rx) = tokio::sync::mpsc::unbounded_channel();
    let controller = Controller::for_stream(
        triggers(resources_stream.applied_objects())
            .predicate_filter(spec_or_lifecycle, Default::default()),
        resources.clone(),
    );
    let stores = Stores {
        resources,
        namespaces,
        service_accounts,
        managed,
        sources,
        selections: Arc::new(SelectionCache::default()),
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "regbridge".into(),
            instance: Some(config.instance.clone()),
        },
    );
    let verifier = Verifier::default()
        .with_trust(config.trust.clone())
        .expect("a Trust holds only roots a client was already built with");
    let ctx = Arc::new(Context {
        client,
        config,
        stores: stores.clone(),
        metrics,
        recorder,
        verifier,
        pull_feedback: Arc::new(PullFeedback::default()),
        state: Mutex::default(),
        failures: Mutex::default(),
        reconcile_all: trigger_all,
        unsynced: unsynced.subscribe(),
    });
    // Only the kubelet's pull failures, selected by the server: no Event
    // is cached.
    let pull_events = watched(
        "pull-events",
        Api::<CoreEvent>::all(ctx.client.clone()),
        watcher::Config::default().fields(FIELD_SELECTOR),
        &health,
        &ctx.metrics,
    );
    let pull_handle = Arc::new(Handle {
        client: ctx.client.clone(),
        metrics: ctx.metrics.clone(),
        stores: stores.clone(),
        log: ctx.pull_feedback.clone(),
        respond: ctx.clone(),
    });
    // A copy's event matters to its owner, and to the resources of the same
    // `secretName` selecting its namespace, which may take it over.
    let by_label = {
        let stores = stores.clone();
        move |s: Secret| {
            let owner = s.labels().get(RESOURCE).cloned();
            let (namespace, name) = (s.namespace().unwrap_or_default(), s.name_any());
            let view = stores.namespace(&namespace);
            resources_where(&stores, |o, selection| {
                Some(o.name_any()) == owner
                    || (o.secret_name() == name && may_select(view.as_deref(), selection))
            })
        }
    };
    controller
        .watches_stream(triggers(ns_stream.touched_objects()), {
            let stores = stores.clone();
            move |ns: Namespace| {
                let view = NamespaceView::from(&ns);
                concerned(&stores, &view.name, Some(&view))
            }
        })
        .watches_stream(triggers(sa_stream.touched_objects()), {
            let stores = stores.clone();
            move |sa: ServiceAccount| {
                let namespace = sa.namespace().unwrap_or_default();
                let view = stores.namespace(&namespace);
                concerned(&stores, &namespace, view.as_deref())
            }
        })
        .watches_stream(triggers(managed_stream.touched_objects()), by_label)
        .watches_stream(triggers(sources_stream.touched_objects()), {
            let store = stores.resources.clone();
            move |s: Secret| {
                let (namespace, name) = (s.namespace().unwrap_or_default(), s.name_any());
                store
                    .state()
                    .iter()
                    .filter(|o| o.name_any() == name || reads(o, &namespace, &name))
                    .map(|o| ObjectRef::from_obj(&**o))
                    .collect::<Vec<_>>()
            }
        })
        .with_config(
            kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY),
        )
        .reconcile_all_on(tokio_stream_from(all_rx))
        .reconcile_on(feedback(pull_handle, pull_events))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

/// The resources a change in `namespace` can matter to: those selecting it
/// (as `view` describes it) and those holding a copy there, which may have
/// to take it and their references back. Reconciling only these keeps one
/// namespace or ServiceAccount event from planning every tenant's resource
/// over every namespace. (A reference whose removal failed after its copy
/// went is retried by that reconcile's own error backoff.)
fn concerned(
    stores: &Stores,
    namespace: &str,
    view: Option<&NamespaceView>,
) -> Vec<ObjectRef<ClusterPullSecret>> {
    resources_where(stores, |r, selection| {
        may_select(view, selection)
            || stores
                .managed
                .get(namespace, &r.secret_name())
                .is_some_and(|copy| copy.owner.as_deref() == Some(r.name_any().as_str()))
    })
}

/// The cached resources `keep` accepts, given each one's compiled selection
/// (`None`: its spec does not compile).
fn resources_where(
    stores: &Stores,
    keep: impl Fn(&ClusterPullSecret, Option<&Selection>) -> bool,
) -> Vec<ObjectRef<ClusterPullSecret>> {
    stores
        .with_selections()
        .into_iter()
        .filter(|(r, selection)| keep(r, selection.as_deref()))
        .map(|(r, _)| ObjectRef::from_obj(&*r))
        .collect()
}

/// Whether a resource with `selection` selects the namespace `view`
/// describes. A namespace not cached yet selects nothing: its own event,
/// still to come, reconciles the resources that select it, and they find
/// what is already cached in it.
fn may_select(view: Option<&NamespaceView>, selection: Option<&Selection>) -> bool {
    match (view, selection) {
        (Some(view), Some(selection)) => selection.selects_namespace(view),
        _ => false,
    }
}

/// What a reconcile reads from the resource object itself: its spec (the
/// generation), its finalizers and whether it is being deleted. The status
/// regbridge writes changes none of them, so writing it triggers nothing.
fn spec_or_lifecycle(o: &ClusterPullSecret) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        o.metadata.generation,
        o.finalizers(),
        o.metadata.deletion_timestamp.is_some(),
    )
        .hash(&mut h);
    Some(h.finish())
}

/// Whether a resource's credentials read the Secret `namespace/name`.
fn reads(resource: &ClusterPullSecret, namespace: &str, name: &str) -> bool {
    resource
        .spec
        .credentials
        .iter()
        .flat_map(|c| c.secret_refs())
        .any(|r| r.namespace == namespace && r.name == name)
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<()>,
) -> impl Stream<Item = ()> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
