//! Leader election on a `coordination.k8s.io/v1` Lease: only the holder
//! runs the controller (and so writes anything, status included); a standby
//! serves probes and metrics and waits.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{info, warn};

use crate::api::labels::FIELD_MANAGER;
use crate::ops::health::Health;

/// Seconds a Lease stays valid after its last renewal.
pub const LEASE_SECONDS: u64 = 15;
/// Renew this long before the Lease would expire.
pub const LEASE_GRACE: u64 = 5;

/// This replica's identity when `--instance` is not given: the OS hostname
/// (from the system, not only `$HOSTNAME`, which a supervisor or a shell
/// may not export) plus a random suffix, as client-go does. Two replicas
/// started alike on one host, or on hosts of one name, never share it, so
/// they can never both believe they hold the Lease.
pub fn default_identity() -> String {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "regbridge".into());
    format!("{host}_{}", uuid::Uuid::new_v4())
}

/// The Lease could not be set up; leadership was never sought.
#[derive(Debug, thiserror::Error)]
#[error("setting up Lease {namespace}/{lease}: {source}")]
pub struct LeaderError {
    namespace: String,
    lease: String,
    #[source]
    source: kube_lease_manager::LeaseManagerError,
}

/// Writes stop this long before the Lease could lapse for other replicas.
const FENCE_MARGIN: Duration = Duration::from_secs(2);

/// Runs `work` while this replica holds the Lease. When leadership is lost,
/// `work` is dropped (its writes stop) and the replica waits to lead again.
///
/// kube-lease-manager keeps reporting leadership while its renewals fail
/// (it logs and backs off), so a leader cut off from the API server would
/// write on after its Lease expired and another replica took over. A fence
/// therefore reads the Lease itself every few seconds and drops `work`
/// once the last renewal it saw is about to lapse (`FENCE_MARGIN` before
/// `renewTime + leaseDurationSeconds`).
pub async fn while_leader<F, Fut>(
    client: Client,
    namespace: &str,
    lease: &str,
    identity: &str,
    health: &Health,
    mut work: F,
) -> Result<(), LeaderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let manager = LeaseManagerBuilder::new(client.clone(), lease)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(LEASE_GRACE)
        .with_field_manager(FIELD_MANAGER)
        .build()
        .await
        .map_err(|source| LeaderError {
            namespace: namespace.to_owned(),
            lease: lease.to_owned(),
            source,
        })?;
    let (mut leading, task) = manager.watch().await;
    let (held_until, mut fence) = tokio::sync::watch::channel(None);
    let confirming = tokio::spawn(confirm(
        Api::namespaced(client, namespace),
        lease.to_owned(),
        identity.to_owned(),
        held_until,
    ));
    loop {
        health.set_standby(true);
        // Lead once the manager says so and the fence has seen it.
        while !(*leading.borrow_and_update() && held(&fence.borrow_and_update())) {
            tokio::select! {
                changed = leading.changed() => if changed.is_err() {
                    {
                    finish(task, confirming);
                    return Ok(());
                }
                },
                changed = fence.changed() => if changed.is_err() {
                    {
                    finish(task, confirming);
                    return Ok(());
                }
                },
            }
        }
        info!(identity, "acquired leadership");
        health.set_standby(false);
        let lost = async {
            loop {
                if leading.changed().await.is_err() || !*leading.borrow_and_update() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = work() => {
                finish(task, confirming);
                return Ok(());
            }
            _ = lost => warn!(identity, "lost leadership; stopping writes"),
            _ = fenced(&mut fence) => warn!(identity, "the Lease was not renewed in time; stopping writes until it is"),
        }
    }
}

/// Whether the Lease is known to be held until a time still ahead.
fn held(until: &Option<Instant>) -> bool {
    until.is_some_and(|t| t > Instant::now())
}

/// Resolves when the Lease's hold, as last confirmed, runs out.
async fn fenced(until: &mut tokio::sync::watch::Receiver<Option<Instant>>) {
    loop {
        let Some(deadline) = *until.borrow_and_update() else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => return,
            changed = until.changed() => if changed.is_err() { return },
        }
    }
}

/// Reads the Lease every [`LEASE_GRACE`] / 2 and publishes until when it is
/// known to be this replica's: `renewTime + leaseDurationSeconds`, less
/// [`FENCE_MARGIN`], on this process's clock. A failed read publishes
/// nothing, so the last deadline runs out on its own.
async fn confirm(
    api: Api<Lease>,
    lease: String,
    identity: String,
    held_until: tokio::sync::watch::Sender<Option<Instant>>,
) {
    loop {
        if let Ok(found) = api.get_opt(&lease).await {
            let spec = found.and_then(|l| l.spec);
            let until = spec
                .filter(|s| s.holder_identity.as_deref() == Some(identity.as_str()))
                .and_then(|s| {
                    let renewed = s.renew_time?.0;
                    let lasts = i64::from(s.lease_duration_seconds?);
                    let lapses = renewed
                        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(lasts))
                        .ok()?;
                    let left = k8s_openapi::jiff::Timestamp::now().duration_until(lapses);
                    let left = Duration::try_from(left).unwrap_or_default();
                    Some(Instant::now() + left.saturating_sub(FENCE_MARGIN))
                });
            held_until.send_replace(until);
        }
        tokio::time::sleep(Duration::from_secs(LEASE_GRACE) / 2).await;
    }
}

fn finish(
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
    confirming: tokio::task::JoinHandle<()>,
) {
    task.abort();
    confirming.abort();
}
