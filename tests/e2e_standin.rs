//! The end-to-end scenarios of `tests/e2e.rs`, against the API stand-in, so
//! the code that will run against a real cluster is exercised on every run.
//! The stand-in calls the admission webhook as kube-apiserver does, over
//! HTTPS to the configuration's `url`.

mod support;

use regbridge_standin::StandIn;
use support::e2e::WebhookEndpoint;

#[tokio::test]
async fn e2e_scenarios_on_the_stand_in() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let server = StandIn::start().await;
    let config = kube::Config::new(server.url().parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let endpoint = WebhookEndpoint {
        host: std::net::Ipv4Addr::LOCALHOST.into(),
        port: 0,
    };
    support::e2e::run_all(client, "rb-e2e-standin", endpoint).await;
}
