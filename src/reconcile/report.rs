//! What a reconcile announces: Events on the resource and Prometheus
//! series. Which Events are new is decided in `decide::verdicts`; this
//! module sends them and sets the gauges.

use std::collections::BTreeSet;
use std::time::Instant;

use kube::ResourceExt;
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::context::Context;
use crate::api::crd::ClusterPullSecret;
use crate::decide::compose::Composed;
use crate::decide::entries::Attempt;
use crate::decide::status::Verdict;
use crate::decide::verdicts::{self, Distribution, Written};
use crate::ops::metrics::{
    CredentialLabels, NamespaceLabels, RefreshLabels, ResourceLabels, VerificationLabels,
};

/// Each mint attempt: its count and duration, its handshakes, and an Event
/// when the registry refused the new credential.
pub(super) async fn attempts(ctx: &Context, cps: &ClusterPullSecret, attempts: &[Attempt]) {
    let name = cps.name_any();
    for a in attempts {
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
                .get_or_create(&VerificationLabels {
                    resource: name.clone(),
                    registry: registry.clone(),
                    result,
                })
                .inc();
        }
        if let Some(message) = &a.rejected {
            ctx.publish(
                cps,
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
}

/// A new credentials failure's Event, and each served credential's expiry.
pub(super) async fn credentials(
    ctx: &Context,
    cps: &ClusterPullSecret,
    announced: &mut Option<String>,
    verdict: &Verdict,
    composed: &Composed,
) {
    if let Some((reason, text)) = verdicts::credentials_event(verdict, announced.as_deref()) {
        ctx.publish(cps, EventType::Warning, reason, text).await;
    }
    *announced = (!verdict.is_ok()).then(|| verdict.message.clone());
    for h in &composed.hosts {
        if let Some(exp) = h.expires_at {
            ctx.metrics
                .credential_expiry
                .get_or_create(&CredentialLabels {
                    resource: cps.name_any(),
                    registry: h.host.clone(),
                    provider: h.provider,
                })
                .set(exp.timestamp() as f64);
        }
    }
}

/// New conflicts' and failed writes' Events, and the namespace gauges.
pub(super) async fn distribution(
    ctx: &Context,
    cps: &ClusterPullSecret,
    announced: &mut BTreeSet<String>,
    distribution: &Distribution,
    written: &Written<'_>,
) {
    let secret_name = cps.secret_name();
    if let Some(text) = verdicts::conflicts_event(&secret_name, announced, &distribution.conflicts)
    {
        ctx.publish(cps, EventType::Warning, "SecretConflict", text)
            .await;
    }
    announced.clone_from(&distribution.conflicts);
    if let Some(first) = &written.first_error {
        let text = format!("{} writes failed, first: {first}", written.failed.len());
        ctx.publish(cps, EventType::Warning, "DistributionFailed", text)
            .await;
    }
    for (state, value) in [
        ("selected", distribution.selected),
        ("synced", distribution.synced),
        ("conflicting", distribution.conflicts.len() as u32),
    ] {
        ctx.metrics
            .namespaces
            .get_or_create(&NamespaceLabels {
                resource: cps.name_any(),
                state,
            })
            .set(value as i64);
    }
}

pub(super) fn reconciled(ctx: &Context, name: &str, started: Instant) {
    ctx.metrics
        .reconcile_duration
        .get_or_create(&ResourceLabels {
            resource: name.into(),
        })
        .observe(started.elapsed().as_secs_f64());
}
