//! The reconcile of a live resource, as a pipeline: validate, mint (and
//! verify), compose, write the source Secret, plan and write the copies,
//! report, write status, choose when to look again. Each judgement is a
//! pure function in `decide`; this module only sequences them and does the
//! calls between.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::context::{Context, Error, ResourceState};
use super::report;
use crate::api::crd::{ClusterPullSecret, VerifyPolicy};
use crate::cache::selection::Selection;
use crate::decide::compose::{Composed, compose};
use crate::decide::distribute::{Claim, Desired, Plan, World, plan};
use crate::decide::entries::EntryReport;
use crate::decide::status::{self, Observation, Verdict};
use crate::decide::validate::{Rejection, Valid, tenant_identities, validate};
use crate::decide::verdicts::{self, Distribution, FOREIGN_RECHECK, RESYNC, Written};
use crate::io::credentials::{RefreshOptions, as_entries};
use crate::io::source::{Source, distributed_before};
use crate::io::status_patch::write_status;
use crate::io::writer::{Outcome, Writer};

pub(super) async fn apply(cps: Arc<ClusterPullSecret>, ctx: &Context) -> Result<Action, Error> {
    let started = Instant::now();
    let valid = match validate(&cps.spec).and_then(|v| {
        tenant_identities(&cps.spec, &v.selection, |ns| ctx.stores.namespace(ns)).map(|()| v)
    }) {
        Ok(v) => v,
        Err(rejection) => return reject(ctx, &cps, rejection).await,
    };
    let state = ctx.state_of(&cps);
    let mut state = state.lock().await;
    let now = Utc::now();
    if let Err(rejection) = mint(ctx, &cps, &valid, &mut state, now).await {
        return reject(ctx, &cps, rejection).await;
    }
    let reports = state.credentials.reports(now);
    if let Some(rejection) = verdicts::invalid_entry(&reports) {
        reject(ctx, &cps, rejection).await?;
        let wakeup = state.credentials.next_wakeup(now);
        return Ok(Action::requeue(verdicts::requeue(
            wakeup, now, false, false,
        )));
    }
    let current = state.credentials.current(now);
    let composed = compose(&as_entries(&current));
    let credentials = status::credentials_verdict(&reports, composed.hosts.len());
    report::credentials(
        ctx,
        &cps,
        &mut state.reported_failure,
        &credentials,
        &composed,
    )
    .await;
    let source = match write_source(ctx, &cps, &composed, &state).await? {
        Ok(source) => source,
        Err(rejection) => return reject(ctx, &cps, rejection).await,
    };
    let copies = copy(ctx, &cps, &valid.selection, &composed, &mut state).await;
    write_observation(ctx, &cps, credentials, &reports, &composed, &copies, source).await?;
    report::reconciled(ctx, &cps.name_any(), started);
    requeue(&cps, copies, &composed, &state)
}

/// Writes the composed Secret; a Secret of that name that is not this
/// resource's refuses the resource.
async fn write_source(
    ctx: &Context,
    cps: &ClusterPullSecret,
    composed: &Composed,
    state: &ResourceState,
) -> Result<Result<Source, Rejection>, Error> {
    let name = cps.name_any();
    let cached = ctx.stores.managed.get(&ctx.config.namespace, &name);
    let records = state.credentials.records();
    let source = (ctx.sources())
        .ensure(cached, &name, &composed.dockerconfigjson, &records)
        .await?;
    Ok(match source {
        Source::Foreign => Err(Rejection::new(
            "SourceSecretConflict",
            format!(
                "Secret {}/{name} exists and is not managed by this resource",
                ctx.config.namespace
            ),
        )),
        other => Ok(other),
    })
}

/// Writes status from what this pass saw: conditions, entries and counts.
async fn write_observation(
    ctx: &Context,
    cps: &ClusterPullSecret,
    credentials: Verdict,
    reports: &[EntryReport],
    composed: &Composed,
    copies: &Copies,
    source: Source,
) -> Result<(), Error> {
    let conflicts: Vec<String> = copies.distribution.conflicts.iter().cloned().collect();
    let observation = Observation {
        generation: cps.metadata.generation,
        credentials,
        distributed: copies.distribution.verdict.clone(),
        verified: (cps.spec.verify != VerifyPolicy::Off).then(|| verdicts::verification(reports)),
        hosts: &composed.hosts,
        entries: reports,
        selected: copies.distribution.selected,
        synced: copies.distribution.synced,
        conflicts: &conflicts,
        warnings: composed.warnings.clone(),
        source_unchanged: source == Source::Unchanged,
        pull_failures: ctx.pull_feedback.status_of(&cps.name_any()),
    };
    let new_status = status::build(cps.status.as_ref(), &observation, Timestamp::now());
    write_status(&ctx.client, &ctx.metrics, cps, new_status).await?;
    Ok(())
}

/// What copying to the namespaces came to.
struct Copies {
    distribution: Distribution,
    outcome: Outcome,
}

/// Plans and writes the copies and references, remembers where a foreign
/// Secret was met, and reports the result.
async fn copy(
    ctx: &Context,
    cps: &ClusterPullSecret,
    selection: &Selection,
    composed: &Composed,
    state: &mut ResourceState,
) -> Copies {
    recheck_foreign(ctx, &cps.secret_name(), &mut state.foreign).await;
    let foreign: Vec<String> = state.foreign.keys().cloned().collect();
    let payload = Some(composed.dockerconfigjson.as_slice());
    let done = distribute(ctx, cps, selection, payload, &foreign).await;
    for ns in &done.outcome.foreign {
        state.foreign.insert(ns.clone(), Instant::now());
    }
    let written = Written {
        foreign: &done.outcome.foreign,
        failed: done.outcome.errors.iter().map(|e| e.namespace()).collect(),
        first_error: done.outcome.errors.first().map(|e| e.brief()),
    };
    let distribution = verdicts::distribution(
        &cps.secret_name(),
        &done.selected,
        &done.conflicts,
        &written,
    );
    report::distribution(
        ctx,
        cps,
        &mut state.reported_conflicts,
        &distribution,
        &written,
    )
    .await;
    Copies {
        distribution,
        outcome: done.outcome,
    }
}

/// A failed write fails the reconcile (its backoff retries); otherwise the
/// next look is at the next refresh, expiry or foreign re-check.
fn requeue(
    cps: &ClusterPullSecret,
    copies: Copies,
    composed: &Composed,
    state: &ResourceState,
) -> Result<Action, Error> {
    let Copies {
        distribution,
        outcome: Outcome { errors, stale, .. },
    } = copies;
    let failed = errors.len();
    if let Some(first) = errors.into_iter().next() {
        return Err(Error::Writes {
            failed,
            first: Box::new(first),
        });
    }
    info!(resource = %cps.name_any(), selected = distribution.selected, synced = distribution.synced, hosts = composed.hosts.len(), "reconciled");
    let now = Utc::now();
    let wakeup = state.credentials.next_wakeup(now);
    Ok(Action::requeue(verdicts::requeue(
        wakeup,
        now,
        stale > 0,
        !state.foreign.is_empty(),
    )))
}

/// Refuses the resource: status and (once) an Event say why, and nothing
/// distributed is changed.
async fn reject(
    ctx: &Context,
    cps: &ClusterPullSecret,
    rejection: Rejection,
) -> Result<Action, Error> {
    let Rejection { reason, message } = rejection;
    warn!(resource = %cps.name_any(), reason, %message, "resource is invalid; nothing distributed is changed");
    let invalid = status::invalid(
        cps.status.as_ref(),
        cps.metadata.generation,
        reason,
        message.clone(),
        Timestamp::now(),
    );
    if verdicts::announce_rejection(cps.status.as_ref(), reason) {
        ctx.publish(cps, EventType::Warning, reason, message).await;
    }
    write_status(&ctx.client, &ctx.metrics, cps, invalid).await?;
    Ok(Action::requeue(RESYNC))
}

/// Builds the providers of changed entries, takes over what an earlier
/// process distributed, deletes what retired entries created, and mints
/// (and verifies) every entry that is due.
async fn mint(
    ctx: &Context,
    cps: &ClusterPullSecret,
    valid: &Valid,
    state: &mut ResourceState,
    now: DateTime<Utc>,
) -> Result<(), Rejection> {
    let name = cps.name_any();
    state
        .credentials
        .update_specs(&cps.spec.credentials, &ctx.build_context(&name))
        .map_err(|(i, e)| Rejection::new("InvalidCredentials", format!("credentials[{i}]: {e}")))?;
    let cluster = ctx.cluster();
    if state.credentials.has_unminted() {
        let (records, distributed) =
            distributed_before(&ctx.stores.sources, &ctx.config.namespace, &name);
        let restored = state.credentials.restore(
            &records,
            &distributed,
            now,
            valid.refresh_before,
            &mut rand_jitter,
        );
        if restored > 0 {
            info!(resource = %name, entries = restored, "took over the credentials distributed before");
        }
    }
    for e in state.credentials.cleanup_retired(&cluster).await {
        warn!(resource = %name, error = %e, "cleanup of a removed credentials entry failed; retrying");
        ctx.publish(
            cps,
            EventType::Warning,
            status::CLEANUP_FAILED,
            e.to_string(),
        )
        .await;
    }
    let options = RefreshOptions {
        refresh_before: valid.refresh_before,
        verifier: (cps.spec.verify != VerifyPolicy::Off).then_some(&ctx.verifier),
        enforce: cps.spec.verify == VerifyPolicy::Enforce,
    };
    let attempts = state
        .credentials
        .refresh_due(&cluster, now, &options, &mut rand_jitter)
        .await;
    report::attempts(ctx, cps, &attempts).await;
    Ok(())
}

/// What planning and writing the copies came to.
pub(super) struct Distributed {
    /// Namespaces that receive the Secret (conflicting ones included).
    pub selected: Vec<String>,
    /// Selected namespaces the planner saw a foreign Secret in.
    pub conflicts: Vec<String>,
    pub outcome: Outcome,
}

/// Plans the copies and references against a snapshot of the caches, then
/// writes the plan. `payload: None` withdraws everything (cleanup).
pub(super) async fn distribute(
    ctx: &Context,
    cps: &ClusterPullSecret,
    selection: &Selection,
    payload: Option<&[u8]>,
    foreign: &[String],
) -> Distributed {
    let name = cps.name_any();
    let secret_name = cps.secret_name();
    let rivals = rivals(ctx, cps);
    let claims: Vec<Claim<'_>> = rivals
        .iter()
        .map(|(secret_name, selection, older)| Claim {
            secret_name,
            selection,
            older: *older,
        })
        .collect();
    let snap = ctx.stores.snapshot();
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
    let Plan {
        secrets,
        service_accounts,
        selected,
        conflicts,
    } = plan(&desired, &claims, &world);
    let writer = Writer {
        client: &ctx.client,
        metrics: &ctx.metrics,
        resource: &name,
        secret_name: &secret_name,
        payload,
        concurrency: ctx.config.write_concurrency,
    };
    let outcome = writer.execute(secrets, service_accounts).await;
    Distributed {
        selected,
        conflicts,
        outcome,
    }
}

/// Every other live resource's claim: its Secret name, selection, and
/// whether it is older (the older claim wins a namespace).
fn rivals(ctx: &Context, me: &ClusterPullSecret) -> Vec<(String, Arc<Selection>, bool)> {
    let created = |o: &ClusterPullSecret| {
        (
            o.metadata.creation_timestamp.as_ref().map(|t| t.0),
            o.name_any(),
        )
    };
    let mine = created(me);
    ctx.stores
        .with_selections()
        .into_iter()
        .filter(|(o, _)| o.uid() != me.uid() && o.metadata.deletion_timestamp.is_none())
        .filter_map(|(o, sel)| Some((o.secret_name(), sel?, created(&o) < mine)))
        .collect()
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

fn rand_jitter() -> f64 {
    // Sub-second clock noise is jitter enough to spread refreshes apart.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    (nanos as f64 / 1e9) * 2.0 - 1.0
}
