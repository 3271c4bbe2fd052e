//! End to end against a real cluster: runs when `REGBRIDGE_E2E_KUBECONFIG`
//! names a kubeconfig, and skips (saying so) otherwise. It creates and deletes
//! its own namespaces, all prefixed `rb-e2e-<random>-`, and its resource
//! selects only those, so it touches nothing else in the cluster. The
//! controller runs in this process against the cluster. The same scenarios
//! run against the API stand-in in `tests/e2e_standin.rs`.

mod support;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

#[tokio::test]
async fn e2e_scenarios_on_a_real_cluster() {
    let Some(path) = std::env::var_os("REGBRIDGE_E2E_KUBECONFIG") else {
        eprintln!("SKIP e2e: REGBRIDGE_E2E_KUBECONFIG is not set");
        return;
    };
    let kc = Kubeconfig::read_from(&path).expect("REGBRIDGE_E2E_KUBECONFIG is readable");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable");
    let client = Client::try_from(config).expect("client");
    let tag = format!("rb-e2e-{}", std::process::id());
    support::e2e::run_scenarios(client, &tag).await;
}
