//! The end-to-end scenarios of `tests/e2e.rs`, against the API stand-in, so
//! the code that will run against a real cluster is exercised on every run.

mod support;

use regbridge_standin::StandIn;

#[tokio::test]
async fn e2e_scenarios_on_the_stand_in() {
    let server = StandIn::start().await;
    let config = kube::Config::new(server.url().parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    support::e2e::run_scenarios(client, "rb-e2e-standin").await;
}
