//! Leader election on a `coordination.k8s.io/v1` Lease: only the holder
//! runs the controller (and so writes anything, status included); a standby
//! serves probes and metrics and waits.

use std::future::Future;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{info, warn};

use crate::health::Health;
use crate::labels::FIELD_MANAGER;

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

/// Runs `work` while this replica holds the Lease. When leadership is lost,
/// `work` is dropped (its writes stop) and the replica waits to lead again.
pub async fn while_leader<F, Fut>(
    client: Client,
    namespace: &str,
    lease: &str,
    identity: &str,
    health: &Health,
    mut work: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let manager = LeaseManagerBuilder::new(client, lease)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(LEASE_GRACE)
        .with_field_manager(FIELD_MANAGER)
        .build()
        .await?;
    let (mut leading, task) = manager.watch().await;
    loop {
        health.set_standby(true);
        while !*leading.borrow_and_update() {
            if leading.changed().await.is_err() {
                return finish(task).await;
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
            _ = work() => return finish(task).await,
            _ = lost => warn!(identity, "lost leadership; stopping writes"),
        }
    }
}

async fn finish(
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
) -> anyhow::Result<()> {
    task.abort();
    Ok(())
}
