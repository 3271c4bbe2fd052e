//! The finalizer's teardown of a deleted resource: its copies and
//! references, its composed Secret, and whatever its providers created
//! outside the cluster. The finalizer stays until all of it is gone.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::apply::distribute;
use super::context::{Context, Error};
use crate::api::crd::ClusterPullSecret;
use crate::cache::selection::Selection;
use crate::decide::status;
use crate::io::status_patch::write_status;

pub(super) async fn cleanup(cps: Arc<ClusterPullSecret>, ctx: &Context) -> Result<Action, Error> {
    let name = cps.name_any();
    let selection = Selection::compile(&cps.spec).unwrap_or_else(|_| Selection::nothing());
    let done = distribute(ctx, &cps, &selection, None, &[]).await;
    let failed = done.outcome.errors.len();
    if let Some(first) = done.outcome.errors.into_iter().next() {
        return Err(Error::Writes {
            failed,
            first: Box::new(first),
        });
    }
    // The finalizer stays until every delete went through.
    if done.outcome.stale > 0 {
        return Err(Error::Stale {
            stale: done.outcome.stale,
        });
    }
    let cached = ctx.stores.managed.get(&ctx.config.namespace, &name);
    ctx.sources().delete(cached, &name).await?;
    let state = ctx.state_of(&cps);
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
        let failed = status::cleanup_failed(cps.status.as_ref(), message.clone(), Timestamp::now());
        write_status(&ctx.client, &ctx.metrics, &cps, failed).await?;
        return Err(Error::ProviderCleanup(message));
    }
    ctx.state
        .lock()
        .expect("state lock")
        .remove(&cps.uid().unwrap_or_default());
    ctx.pull_feedback.forget(&name);
    let _ = ctx.reconcile_all.send(());
    info!(resource = %name, "cleaned up");
    Ok(Action::await_change())
}
