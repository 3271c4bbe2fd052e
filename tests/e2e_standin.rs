//! The end-to-end scenarios of `tests/e2e.rs`, against the API stand-in, so
//! the code that will run against a real cluster is exercised on every run.
//! The stand-in calls the admission webhook as kube-apiserver does, over
//! HTTPS to the configuration's `url`.

use regbridge_test_support as support;

use regbridge_standin::StandIn;

#[tokio::test]
async fn e2e_scenarios_on_the_stand_in() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let server = StandIn::start().await;
    // Connected as `tests/e2e.rs` connects, through a kubeconfig: the
    // stand-in is on loopback, so the webhook listens there too.
    let dir = std::env::temp_dir().join(format!("regbridge-e2e-{}", std::process::id()));
    let kubeconfig = support::write_kubeconfig(&dir, &server.url());
    let (client, endpoint) = support::e2e::connect(&kubeconfig).await;
    assert!(endpoint.host.is_loopback());
    support::e2e::run_all(client, "rb-e2e-standin", endpoint).await;
}
