//! The distribution controller: watches, the reconcile of one
//! `ClusterPullSecret`, and cleanup through a finalizer. Deciding lives in
//! `distribute`, `compose` and `status`; this module reads caches, calls
//! them, and hands their output to the writer.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace, Secret, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Error as FinalizerError, Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use regbridge_providers::registry::dockerconfig::{self, DATA_KEY};
use regbridge_providers::spec::CredentialSpec;
use regbridge_providers::{BuildContext, RegistryCredential, Trust, Verification, Verifier};
use tracing::{debug, info, warn};

use crate::api::crd::{ClusterPullSecret, ClusterPullSecretStatus, VerifyPolicy};
use crate::api::labels::{
    FIELD_MANAGER, FINALIZER, MINTED, RESOURCE, ROLE, ROLE_SOURCE, managed_selector, owned_by,
};
use crate::cache::index::{Index, NamespaceView, SecretView, ServiceAccountView};
use crate::cache::selection::Selection;
use crate::cache::selections::SelectionCache;
use crate::cache::watches::{cached, indexed, track_sync, watched};
use crate::decide::compose::compose;
use crate::decide::distribute::{Claim, Desired, Plan, World, copy_labels, payload_digest, plan};
use crate::decide::refresh::backoff;
use crate::decide::status::{self, Observation, Verdict};
use crate::io::cluster_access::CachedCluster;
use crate::io::credentials::{Credentials, EntryReport, MintRecord, RefreshOptions, as_entries};
use crate::io::pull_feedback::{FIELD_SELECTOR, PullFeedback, feedback};
use crate::io::writer::Writer;
use crate::ops::health::Health;
use crate::ops::metrics::{
    Metrics, NamespaceLabels, ReconcileLabels, RefreshLabels, ResourceLabels,
};

/// A namespace found to hold a foreign Secret is looked at again after this.
const FOREIGN_RECHECK: Duration = Duration::from_secs(60);
/// After writes the cache had not caught up with, look again this soon.
const STALE_RETRY: Duration = Duration::from_secs(1);
/// Resources reconciled at once. Each reconcile plans over a snapshot of
/// the caches; unbounded, hundreds of resources triggered together would
/// hold hundreds of snapshots (memory the allocator keeps) and contend for
/// two cores. A slow provider still leaves most slots free.
const RECONCILE_CONCURRENCY: u16 = 16;
/// A safety net: every resource is reconciled at least this often.
const RESYNC: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing status of {resource}: {source}")]
    Status {
        resource: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing source Secret {namespace}/{name}: {source}")]
    Source {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("{failed} writes failed, first: {first}")]
    Writes { failed: usize, first: String },
    #[error("finalizer: {0}")]
    Finalizer(String),
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

/// The caches the planner reads.
#[derive(Clone)]
pub struct Stores {
    pub resources: Store<ClusterPullSecret>,
    pub namespaces: Index<NamespaceView>,
    pub service_accounts: Index<ServiceAccountView>,
    pub managed: Index<SecretView>,
    pub sources: Store<Secret>,
}

#[derive(Default)]
struct ResourceState {
    credentials: Credentials,
    /// Namespaces where a Secret of our name is somebody else's, and when
    /// that was last seen.
    foreign: HashMap<String, Instant>,
    reported_conflicts: BTreeSet<String>,
    /// The refresh failure last reported in an Event.
    reported_failure: Option<String>,
}

pub struct Context {
    pub client: Client,
    pub config: Config,
    pub stores: Stores,
    pub metrics: Arc<Metrics>,
    recorder: Recorder,
    /// One registry handshake client, shared by every resource.
    verifier: Verifier,
    pub(crate) pull_feedback: PullFeedback,
    state: Mutex<HashMap<String, Arc<tokio::sync::Mutex<ResourceState>>>>,
    failures: Mutex<HashMap<String, u32>>,
    /// Every resource's compiled selection, for its rivals' reconciles and
    /// for pull-failure Events.
    pub(crate) selections: Arc<SelectionCache>,
    /// Tells every resource to reconcile (a deleted resource may hand
    /// namespaces over to a younger one).
    reconcile_all: tokio::sync::mpsc::UnboundedSender<()>,
    /// The caches still waiting for their first full list.
    unsynced: tokio::sync::watch::Receiver<BTreeSet<&'static str>>,
}

impl Context {
    fn state_of(&self, uid: &str) -> Arc<tokio::sync::Mutex<ResourceState>> {
        self.state
            .lock()
            .expect("state lock")
            .entry(uid.to_owned())
            .or_default()
            .clone()
    }

    pub(crate) async fn publish(
        &self,
        cps: &ClusterPullSecret,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = KubeEvent {
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
}

impl Context {
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

    /// Mints the entry serving `host` again at the resource's next
    /// reconcile.
    pub(crate) async fn refresh_host(&self, cps: &ClusterPullSecret, host: &str) {
        let state = self.state_of(&cps.uid().unwrap_or_default());
        state.lock().await.credentials.refresh_host(host);
    }
}

fn created_key(cps: &ClusterPullSecret) -> (Option<Timestamp>, String) {
    (
        cps.metadata.creation_timestamp.as_ref().map(|t| t.0),
        cps.name_any(),
    )
}

async fn write_status(
    ctx: &Context,
    cps: &ClusterPullSecret,
    status: ClusterPullSecretStatus,
) -> Result<(), Error> {
    if cps.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<ClusterPullSecret> = Api::all(ctx.client.clone());
    let body = serde_json::json!({ "status": status });
    let result = api
        .patch_status(
            &cps.name_any(),
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Merge(&body),
        )
        .await;
    ctx.metrics
        .write("clusterpullsecrets", "patch", result.is_ok());
    result.map(|_| ()).map_err(|source| Error::Status {
        resource: cps.name_any(),
        source,
    })
}

async fn reject(
    ctx: &Context,
    cps: &ClusterPullSecret,
    reason: &str,
    message: String,
) -> Result<Action, Error> {
    warn!(resource = %cps.name_any(), reason, %message, "resource is invalid; nothing distributed is changed");
    let status = status::invalid(
        cps.status.as_ref(),
        cps.metadata.generation,
        reason,
        message.clone(),
        Timestamp::now(),
    );
    if cps
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == status::READY))
        .map(|c| c.reason.as_str())
        != Some(reason)
    {
        ctx.publish(cps, EventType::Warning, reason, message).await;
    }
    write_status(ctx, cps, status).await?;
    Ok(Action::requeue(RESYNC))
}

/// What became of the composed Secret in the controller's namespace.
#[derive(Debug, PartialEq, Eq)]
enum Source {
    /// It already held the composed payload.
    Unchanged,
    Written,
    /// A Secret of that name belongs to something else; it is left alone.
    Foreign,
}

/// The composed Secret in the controller's namespace.
async fn ensure_source(
    ctx: &Context,
    name: &str,
    payload: &[u8],
    records: &[MintRecord],
) -> Result<Source, Error> {
    let ns = &ctx.config.namespace;
    let mut desired = crate::decide::distribute::desired_copy(name, name, ns, payload);
    let mut labels = copy_labels(name);
    labels.insert(ROLE.into(), ROLE_SOURCE.into());
    desired.metadata.labels = Some(labels.clone());
    // Written with the payload it describes; a payload that did not change
    // keeps the records that came with it.
    desired.metadata.annotations = Some(
        [(
            MINTED.to_string(),
            serde_json::to_string(records).unwrap_or_default(),
        )]
        .into(),
    );
    let cached = ctx.stores.managed.get(ns, name);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let err = |source| Error::Source {
        namespace: ns.clone(),
        name: name.into(),
        source,
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
            ctx.metrics.write("secrets", "update", r.is_ok());
            r.map(|_| Source::Written).map_err(err)
        }
        None => match api.create(&pp, &desired).await {
            Ok(_) => {
                ctx.metrics.write("secrets", "create", true);
                Ok(Source::Written)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                ctx.metrics.write("secrets", "create", false);
                let existing = api.get_opt(name).await.map_err(err)?;
                let ours = existing.is_some_and(|s| owned_by(s.labels(), name));
                Ok(if ours {
                    Source::Written
                } else {
                    Source::Foreign
                })
            }
            Err(e) => {
                ctx.metrics.write("secrets", "create", false);
                Err(err(e))
            }
        },
    }
}

struct Snapshot {
    namespaces: Vec<Arc<NamespaceView>>,
    service_accounts: HashMap<String, Vec<Arc<ServiceAccountView>>>,
    managed: HashMap<(String, String), Arc<SecretView>>,
}

fn snapshot(stores: &Stores) -> Snapshot {
    let mut service_accounts: HashMap<String, Vec<Arc<ServiceAccountView>>> = HashMap::new();
    for sa in stores.service_accounts.values() {
        service_accounts
            .entry(sa.namespace.clone())
            .or_default()
            .push(sa);
    }
    let mut namespaces = stores.namespaces.values();
    namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    Snapshot {
        namespaces,
        service_accounts,
        managed: stores
            .managed
            .values()
            .into_iter()
            .map(|s| ((s.namespace.clone(), s.name.clone()), s))
            .collect(),
    }
}

/// What the composed Secret of `name` holds, for a new process to take over
/// (records and credentials); nothing unless the Secret is this resource's
/// own source.
fn distributed_before(ctx: &Context, name: &str) -> (Vec<MintRecord>, Vec<RegistryCredential>) {
    let key = ObjectRef::new(name).within(&ctx.config.namespace);
    let Some(secret) = ctx.stores.sources.get(&key) else {
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

/// Every other live resource's claim, with selections compiled.
fn rival_selections(
    ctx: &Context,
    me: &ClusterPullSecret,
) -> Vec<(String, String, Arc<Selection>, bool)> {
    let mine = created_key(me);
    let resources = ctx.stores.resources.state();
    let selections = ctx.selections.selections(&resources);
    resources
        .iter()
        .zip(selections)
        .filter(|(o, _)| o.uid() != me.uid() && o.metadata.deletion_timestamp.is_none())
        .filter_map(|(o, sel)| Some((o.name_any(), o.secret_name(), sel?, created_key(o) < mine)))
        .collect()
}

async fn execute(
    ctx: &Context,
    cps: &ClusterPullSecret,
    selection: &Selection,
    payload: Option<&[u8]>,
    foreign: &[String],
) -> (Plan, crate::io::writer::Outcome) {
    let name = cps.name_any();
    let secret_name = cps.secret_name();
    let rivals = rival_selections(ctx, cps);
    let claims: Vec<Claim<'_>> = rivals
        .iter()
        .map(|(resource, secret_name, selection, older)| Claim {
            resource,
            secret_name,
            selection,
            older: *older,
        })
        .collect();
    let snap = snapshot(&ctx.stores);
    let world = World {
        namespaces: &snap.namespaces,
        service_accounts: &snap.service_accounts,
        managed: &snap.managed,
        controller_namespace: &ctx.config.namespace,
        foreign,
    };
    let desired = Desired {
        resource: &name,
        secret_name: &secret_name,
        selection,
        payload,
    };
    let the_plan = plan(&desired, &claims, &world);
    let summary = Plan {
        secrets: Vec::new(),
        service_accounts: Vec::new(),
        selected: the_plan.selected.clone(),
        conflicts: the_plan.conflicts.clone(),
    };
    let writer = Writer {
        client: &ctx.client,
        metrics: &ctx.metrics,
        resource: &name,
        secret_name: &secret_name,
        payload,
        concurrency: ctx.config.write_concurrency,
    };
    let outcome = writer.execute(the_plan).await;
    (summary, outcome)
}

/// Drops foreign markers that are due a re-check and no longer hold.
async fn recheck_foreign(ctx: &Context, secret_name: &str, foreign: &mut HashMap<String, Instant>) {
    let due: Vec<String> = foreign
        .iter()
        .filter(|(_, seen)| seen.elapsed() > FOREIGN_RECHECK)
        .map(|(ns, _)| ns.clone())
        .collect();
    for ns in due {
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        match api.get_metadata_opt(secret_name).await {
            Ok(Some(_)) => {
                foreign.insert(ns, Instant::now());
            }
            Ok(None) => {
                foreign.remove(&ns);
            }
            Err(_) => {}
        }
    }
}

async fn apply(cps: Arc<ClusterPullSecret>, ctx: &Context) -> Result<Action, Error> {
    let name = cps.name_any();
    let started = Instant::now();
    let selection = match Selection::compile(&cps.spec) {
        Ok(s) => s,
        Err(e) => return reject(ctx, &cps, "InvalidSelector", e.to_string()).await,
    };
    let refresh_before = match cps
        .spec
        .refresh_before
        .as_deref()
        .map(regbridge_providers::duration::parse)
        .transpose()
    {
        Ok(d) => d,
        Err(e) => return reject(ctx, &cps, "InvalidRefreshBefore", e.to_string()).await,
    };
    if let Some(i) = cps
        .spec
        .credentials
        .iter()
        .position(|c| matches!(c, CredentialSpec::Static(s) if s.file.is_some()))
    {
        return reject(
            ctx,
            &cps,
            "FileNotSupported",
            format!("credentials[{i}].static.file is only read by `regbridge mint`; use secretRef"),
        )
        .await;
    }
    if let Some((i, e)) = cps
        .spec
        .credentials
        .iter()
        .enumerate()
        .find_map(|(i, c)| match c {
            CredentialSpec::Harbor(h) => regbridge_providers::duration::parse(&h.rotate_every)
                .err()
                .map(|e| (i, e)),
            _ => None,
        })
    {
        return reject(
            ctx,
            &cps,
            "InvalidRotateEvery",
            format!("credentials[{i}].harbor.rotateEvery: {e}"),
        )
        .await;
    }
    let state = ctx.state_of(&cps.uid().unwrap_or_default());
    let mut state = state.lock().await;
    if let Err((i, e)) = state
        .credentials
        .update_specs(&cps.spec.credentials, &ctx.build_context(&name))
    {
        return reject(
            ctx,
            &cps,
            "InvalidCredentials",
            format!("credentials[{i}]: {e}"),
        )
        .await;
    }
    let cluster = ctx.cluster();
    let now = Utc::now();
    if state.credentials.has_unminted() {
        let (records, distributed) = distributed_before(ctx, &name);
        let restored =
            state
                .credentials
                .restore(&records, &distributed, now, refresh_before, &mut || {
                    rand_jitter()
                });
        if restored > 0 {
            info!(resource = %name, entries = restored, "took over the credentials distributed before");
        }
    }
    for e in state.credentials.cleanup_retired(&cluster).await {
        warn!(resource = %name, error = %e, "cleanup of a removed credentials entry failed; retrying");
        ctx.publish(
            &cps,
            EventType::Warning,
            status::CLEANUP_FAILED,
            e.to_string(),
        )
        .await;
    }
    let options = RefreshOptions {
        refresh_before,
        verifier: (cps.spec.verify != VerifyPolicy::Off).then_some(&ctx.verifier),
        enforce: cps.spec.verify == VerifyPolicy::Enforce,
    };
    let attempts = state
        .credentials
        .refresh_due(&cluster, now, &options, &mut || rand_jitter())
        .await;
    for a in &attempts {
        let labels = RefreshLabels {
            resource: name.clone(),
            provider: a.provider,
            result: if a.ok { "ok" } else { "error" },
        };
        ctx.metrics.refreshes.get_or_create(&labels).inc();
        ctx.metrics
            .refresh_duration
            .get_or_create(&labels)
            .observe(a.elapsed.as_secs_f64());
        for (registry, result) in &a.verified {
            ctx.metrics
                .verifications
                .get_or_create(&crate::ops::metrics::VerificationLabels {
                    resource: name.clone(),
                    registry: registry.clone(),
                    result,
                })
                .inc();
        }
        if let Some(message) = &a.rejected {
            ctx.publish(
                &cps,
                EventType::Warning,
                "CredentialRejected",
                message.clone(),
            )
            .await;
        }
        if a.clamped_expiry {
            warn!(resource = %name, provider = a.provider, "provider reported an expiry in the past; clamped");
        }
        if a.short_lived {
            info!(resource = %name, provider = a.provider, "provider returned a credential near its expiry; asking again soon");
        }
    }
    let reports = state.credentials.reports(now);
    if let Some(bad) = reports.iter().find(|r| r.invalid) {
        let message = format!(
            "credentials[{}] ({}): {}",
            bad.index,
            bad.provider,
            bad.last_error.as_deref().unwrap_or("invalid")
        );
        let reason = "CredentialsInvalid";
        reject(ctx, &cps, reason, message).await?;
        let wait = state
            .credentials
            .next_wakeup(now)
            .map(|at| (at - now).to_std().unwrap_or_default());
        return Ok(Action::requeue(wait.unwrap_or(RESYNC)));
    }
    let current = state.credentials.current(now);
    let composed = compose(&as_entries(&current));
    let credentials_verdict = status::credentials_verdict(&reports, composed.hosts.len());
    // One Event per new failure text, not one per reconcile.
    let failure_text = (!credentials_verdict.is_ok()).then(|| credentials_verdict.message.clone());
    if let Some(text) = &failure_text
        && failure_text != state.reported_failure
    {
        let reason = match credentials_verdict.reason.as_str() {
            status::EXPIRED => status::EXPIRED,
            _ => "RefreshFailed",
        };
        ctx.publish(&cps, EventType::Warning, reason, text.clone())
            .await;
    }
    state.reported_failure = failure_text;
    let verified = (cps.spec.verify != VerifyPolicy::Off).then(|| verification_verdict(&reports));
    for h in &composed.hosts {
        if let Some(exp) = h.expires_at {
            ctx.metrics
                .credential_expiry
                .get_or_create(&crate::ops::metrics::CredentialLabels {
                    resource: name.clone(),
                    registry: h.host.clone(),
                    provider: h.provider,
                })
                .set(exp.timestamp() as f64);
        }
    }

    let source = ensure_source(
        ctx,
        &name,
        &composed.dockerconfigjson,
        &state.credentials.records(),
    )
    .await?;
    if source == Source::Foreign {
        return reject(
            ctx,
            &cps,
            "SourceSecretConflict",
            format!(
                "Secret {}/{name} exists and is not managed by this resource",
                ctx.config.namespace
            ),
        )
        .await;
    }

    recheck_foreign(ctx, &cps.secret_name(), &mut state.foreign).await;
    let foreign: Vec<String> = state.foreign.keys().cloned().collect();
    let (summary, outcome) = execute(
        ctx,
        &cps,
        &selection,
        Some(&composed.dockerconfigjson),
        &foreign,
    )
    .await;
    for ns in &outcome.foreign {
        state.foreign.insert(ns.clone(), Instant::now());
    }
    let mut conflicts: BTreeSet<String> = summary.conflicts.iter().cloned().collect();
    conflicts.extend(outcome.foreign.iter().cloned());
    let failed: BTreeSet<&str> = outcome.errors.iter().map(|e| e.namespace()).collect();
    let selected = summary.selected.len() as u32;
    let synced = summary
        .selected
        .iter()
        .filter(|ns| !conflicts.contains(*ns) && !failed.contains(ns.as_str()))
        .count() as u32;

    let new_conflicts: Vec<&String> = conflicts.difference(&state.reported_conflicts).collect();
    if !new_conflicts.is_empty() {
        let shown: Vec<&str> = new_conflicts.iter().take(5).map(|s| s.as_str()).collect();
        ctx.publish(
            &cps,
            EventType::Warning,
            "SecretConflict",
            format!(
                "Secret {} exists in {} namespace(s) and is not managed by this resource: {}{}",
                cps.secret_name(),
                new_conflicts.len(),
                shown.join(", "),
                if new_conflicts.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            ),
        )
        .await;
    }
    state.reported_conflicts = conflicts.clone();
    if let Some(first) = outcome.errors.first() {
        ctx.publish(
            &cps,
            EventType::Warning,
            "DistributionFailed",
            format!(
                "{} writes failed, first: {}",
                outcome.errors.len(),
                first.brief()
            ),
        )
        .await;
    }
    let distributed = if let Some(first) = outcome.errors.first() {
        Verdict::fail(
            "WritesFailed",
            format!(
                "{} writes failed, first: {}; retrying",
                outcome.errors.len(),
                first.brief()
            ),
        )
    } else if !conflicts.is_empty() {
        Verdict::fail(
            "Conflict",
            format!(
                "{} namespace(s) hold a Secret named {} that this resource does not manage",
                conflicts.len(),
                cps.secret_name()
            ),
        )
    } else {
        Verdict::ok("Distributed", format!("{synced}/{selected} namespaces"))
    };
    for (state_name, value) in [
        ("selected", selected),
        ("synced", synced),
        ("conflicting", conflicts.len() as u32),
    ] {
        ctx.metrics
            .namespaces
            .get_or_create(&NamespaceLabels {
                resource: name.clone(),
                state: state_name,
            })
            .set(value as i64);
    }
    let conflict_list: Vec<String> = conflicts.into_iter().collect();
    let obs = Observation {
        generation: cps.metadata.generation,
        credentials: credentials_verdict,
        distributed,
        verified,
        hosts: &composed.hosts,
        entries: &reports,
        selected,
        synced,
        conflicts: &conflict_list,
        warnings: composed.warnings.clone(),
        source_unchanged: source == Source::Unchanged,
        pull_failures: ctx.pull_feedback.status_of(&name),
    };
    write_status(
        ctx,
        &cps,
        status::build(cps.status.as_ref(), &obs, Timestamp::now()),
    )
    .await?;
    ctx.metrics
        .reconcile_duration
        .get_or_create(&ResourceLabels {
            resource: name.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    if let Some(first) = outcome.errors.first() {
        return Err(Error::Writes {
            failed: outcome.errors.len(),
            first: first.to_string(),
        });
    }
    info!(resource = %name, selected, synced, hosts = composed.hosts.len(), "reconciled");
    if outcome.stale > 0 {
        return Ok(Action::requeue(STALE_RETRY));
    }
    let now = Utc::now();
    let mut wait = state
        .credentials
        .next_wakeup(now)
        .map(|at| (at - now).to_std().unwrap_or_default().min(RESYNC))
        .unwrap_or(RESYNC);
    // Foreign Secrets are not watched: look again for one that went away.
    if !state.foreign.is_empty() {
        wait = wait.min(FOREIGN_RECHECK);
    }
    Ok(Action::requeue(wait))
}

/// `Verified`: every registry answered the credential with success (or
/// allows anonymous pulls). False on the first rejection; Unknown while a
/// registry cannot be reached, since nodes may still reach it.
fn verification_verdict(reports: &[EntryReport]) -> Verdict {
    let checked: Vec<(&String, &Verification)> = reports
        .iter()
        .flat_map(|r| r.verified.iter().map(|(h, c)| (h, &c.verification)))
        .collect();
    if let Some((host, v)) = checked.iter().find(|(_, v)| v.is_rejected()) {
        return Verdict::fail("Rejected", format!("{host}: {v}"));
    }
    if let Some((host, v)) = checked.iter().find(|(_, v)| v.result() == "Unreachable") {
        return Verdict::unknown("Unreachable", format!("{host}: {v}"));
    }
    if checked.is_empty() {
        return Verdict::unknown("NotChecked", "no registry has been checked yet");
    }
    Verdict::ok("Verified", format!("{} registries verified", checked.len()))
}

fn rand_jitter() -> f64 {
    // Sub-second clock noise is jitter enough to spread refreshes apart.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    (nanos as f64 / 1e9) * 2.0 - 1.0
}

async fn cleanup(cps: Arc<ClusterPullSecret>, ctx: &Context) -> Result<Action, Error> {
    let name = cps.name_any();
    let selection = Selection::compile(&cps.spec).unwrap_or_else(|_| Selection::nothing());
    let (_, outcome) = execute(ctx, &cps, &selection, None, &[]).await;
    if let Some(first) = outcome.errors.first() {
        return Err(Error::Writes {
            failed: outcome.errors.len(),
            first: first.to_string(),
        });
    }
    // The finalizer stays until every delete went through.
    if outcome.stale > 0 {
        return Err(Error::Writes {
            failed: outcome.stale,
            first: "a copy changed since it was cached; retrying".into(),
        });
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    if let Some(source) = ctx.stores.managed.get(&ctx.config.namespace, &name)
        && source.owner.as_deref() == Some(name.as_str())
    {
        match api.delete(&name, &Default::default()).await {
            Ok(_) => ctx.metrics.write("secrets", "delete", true),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                ctx.metrics.write("secrets", "delete", false);
                return Err(Error::Source {
                    namespace: ctx.config.namespace.clone(),
                    name,
                    source,
                });
            }
        }
    }
    let uid = cps.uid().unwrap_or_default();
    let state = ctx.state_of(&uid);
    let cluster = ctx.cluster();
    // From the spec, not from memory: this process may never have minted
    // for the resource (it was deleted while another replica led).
    let mut errors: Vec<String> = {
        let mut state = state.lock().await;
        let unbuilt = state
            .credentials
            .build_for_cleanup(&cps.spec.credentials, &ctx.build_context(&name));
        for (i, e) in &unbuilt {
            warn!(resource = %name, entry = i, error = %e, "credentials entry cannot be built; nothing of it is cleaned up");
        }
        let errors = state.credentials.cleanup(&cluster).await;
        errors.iter().map(ToString::to_string).collect()
    };
    if !errors.is_empty() {
        errors.dedup();
        let message = errors.join("; ");
        warn!(resource = %name, error = %message, "provider cleanup failed; the finalizer stays");
        ctx.publish(
            &cps,
            EventType::Warning,
            status::CLEANUP_FAILED,
            message.clone(),
        )
        .await;
        write_status(
            ctx,
            &cps,
            status::cleanup_failed(cps.status.as_ref(), message.clone(), Timestamp::now()),
        )
        .await?;
        return Err(Error::ProviderCleanup(message));
    }
    ctx.state.lock().expect("state lock").remove(&uid);
    ctx.pull_feedback.forget(&name);
    let _ = ctx.reconcile_all.send(());
    info!(resource = %name, "cleaned up");
    Ok(Action::await_change())
}

pub async fn reconcile(cps: Arc<ClusterPullSecret>, ctx: Arc<Context>) -> Result<Action, Error> {
    // A reconcile plans against the caches: before each has its first full
    // list, a source Secret or a copy not yet cached looks missing, and a
    // restart would create again what exists (a 409 each).
    let _ = ctx.unsynced.clone().wait_for(BTreeSet::is_empty).await;
    let name = cps.name_any();
    let deleting = cps.metadata.deletion_timestamp.is_some();
    let api: Api<ClusterPullSecret> = Api::all(ctx.client.clone());
    let result = contained(finalizer(&api, FINALIZER, cps, |event| async {
        match event {
            Finalizer::Apply(o) => apply(o, &ctx).await,
            Finalizer::Cleanup(o) => cleanup(o, &ctx).await,
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
        Ok(other) => other.map_err(|e| Error::Finalizer(e.to_string())),
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
pub fn error_policy(cps: Arc<ClusterPullSecret>, error: &Error, ctx: Arc<Context>) -> Action {
    let name = cps.name_any();
    let mut failures = ctx.failures.lock().expect("failures lock");
    let n = failures.entry(name.clone()).or_default();
    *n += 1;
    warn!(resource = %name, error = %error, attempt = *n, "reconcile failed");
    Action::requeue(backoff(*n))
}

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
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "regbridge".into(),
            instance: Some(config.instance.clone()),
        },
    );
    let selections = Arc::new(SelectionCache::default());
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
        pull_feedback: PullFeedback::default(),
        state: Mutex::default(),
        failures: Mutex::default(),
        selections: selections.clone(),
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
    // A copy's event matters to its owner, and to the resources of the same
    // `secretName` selecting its namespace, which may take it over.
    let by_label = {
        let (stores, selections) = (stores.clone(), selections.clone());
        move |s: Secret| {
            let owner = s.labels().get(RESOURCE).cloned();
            let (namespace, name) = (s.namespace().unwrap_or_default(), s.name_any());
            let view = stores.namespaces.get("", &namespace);
            resources_where(&stores, &selections, |o, selection| {
                Some(o.name_any()) == owner
                    || (o.secret_name() == name && may_select(view.as_deref(), selection))
            })
        }
    };
    controller
        .watches_stream(triggers(ns_stream.touched_objects()), {
            let (stores, selections) = (stores.clone(), selections.clone());
            move |ns: Namespace| {
                let view = NamespaceView::from(&ns);
                concerned(&stores, &selections, &view.name, Some(&view))
            }
        })
        .watches_stream(triggers(sa_stream.touched_objects()), {
            let (stores, selections) = (stores.clone(), selections.clone());
            move |sa: ServiceAccount| {
                let namespace = sa.namespace().unwrap_or_default();
                let view = stores.namespaces.get("", &namespace);
                concerned(&stores, &selections, &namespace, view.as_deref())
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
        .reconcile_on(feedback(ctx.clone(), pull_events))
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
    selections: &SelectionCache,
    namespace: &str,
    view: Option<&NamespaceView>,
) -> Vec<ObjectRef<ClusterPullSecret>> {
    resources_where(stores, selections, |r, selection| {
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
    selections: &SelectionCache,
    keep: impl Fn(&ClusterPullSecret, Option<&Selection>) -> bool,
) -> Vec<ObjectRef<ClusterPullSecret>> {
    let resources = stores.resources.state();
    let compiled = selections.selections(&resources);
    resources
        .iter()
        .zip(compiled)
        .filter(|(r, selection)| keep(r, selection.as_deref()))
        .map(|(r, _)| ObjectRef::from_obj(&**r))
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
