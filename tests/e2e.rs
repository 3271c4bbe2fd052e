//! End to end against a real cluster: runs when `REGBRIDGE_E2E_KUBECONFIG`
//! names a kubeconfig, and skips (saying so) otherwise. It creates and deletes
//! its own namespaces, all prefixed `rb-e2e-<pid>-`, and its resources
//! select only those, so it touches nothing else in the cluster. The
//! controller and the admission webhook run in this process against the
//! cluster; the API server reaches the webhook by `url` (see
//! `webhook_endpoint` in `tests/support/src/e2e.rs`). The same scenarios run against the API stand-in in
//! `tests/e2e_standin.rs`.
//!
//! Optional settings:
//! - `REGBRIDGE_E2E_WEBHOOK_HOST`: the address of this machine the API server
//!   can reach;
//! - `REGBRIDGE_E2E_WEBHOOK_PORT`: the port to serve the webhook on (any free
//!   one by default);
//! - `REGBRIDGE_E2E_FIRST_PODS`: how many pods to create right after their
//!   ServiceAccounts (1,000 by default).

use regbridge_test_support as support;

#[tokio::test]
async fn e2e_scenarios_on_a_real_cluster() {
    let Some(path) = std::env::var_os("REGBRIDGE_E2E_KUBECONFIG") else {
        eprintln!("SKIP e2e: REGBRIDGE_E2E_KUBECONFIG is not set");
        return;
    };
    let (client, endpoint) = support::e2e::connect(std::path::Path::new(&path)).await;
    let tag = format!("rb-e2e-{}", std::process::id());
    support::e2e::run_all(client, &tag, endpoint).await;
}
