//! The entry point kube-runtime calls for a resource: the finalizer
//! around `apply` and `cleanup`, a panic kept to its resource, the
//! outcome's metrics, and a failing resource's own backoff.

use std::collections::BTreeSet;
use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Error as FinalizerError, Event as Finalizer, finalizer};
use kube::{Api, ResourceExt};
use tracing::{debug, warn};

use super::context::{Context, Error};
use super::{apply, cleanup};
use crate::api::crd::ClusterPullSecret;
use crate::api::labels::FINALIZER;
use crate::decide::refresh::backoff;
use crate::decide::verdicts::STALE_RETRY;
use crate::ops::metrics::ReconcileLabels;

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

pub(super) async fn reconcile(
    cps: Arc<ClusterPullSecret>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
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
pub(super) fn error_policy(
    cps: Arc<ClusterPullSecret>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
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
