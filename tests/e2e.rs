//! End to end against a real cluster: runs when `REGBRIDGE_E2E_KUBECONFIG`
//! names a kubeconfig, and skips (saying so) otherwise. It creates and deletes
//! its own namespaces, all prefixed `rb-e2e-<pid>-`, and its resources
//! select only those, so it touches nothing else in the cluster. The
//! controller and the admission webhook run in this process against the
//! cluster; the API server reaches the webhook by `url` (see
//! [`webhook_endpoint`]). The same scenarios run against the API stand-in in
//! `tests/e2e_standin.rs`.
//!
//! Optional settings:
//! - `REGBRIDGE_E2E_WEBHOOK_HOST`: the address of this machine the API server
//!   can reach;
//! - `REGBRIDGE_E2E_WEBHOOK_PORT`: the port to serve the webhook on (any free
//!   one by default);
//! - `REGBRIDGE_E2E_FIRST_PODS`: how many pods to create right after their
//!   ServiceAccounts (1,000 by default).

mod support;

use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs, UdpSocket};

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use support::e2e::WebhookEndpoint;

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
    let endpoint = webhook_endpoint(&config.cluster_url);
    let client = Client::try_from(config).expect("client");
    let tag = format!("rb-e2e-{}", std::process::id());
    support::e2e::run_all(client, &tag, endpoint).await;
}

/// Where the API server can reach this process: `REGBRIDGE_E2E_WEBHOOK_HOST`
/// when set; loopback for an API server on loopback; otherwise the address
/// this machine uses to reach the API server, which the API server can
/// usually route back to (a kind node reaching its host, a VM its peer).
fn webhook_endpoint(server: &axum::http::Uri) -> WebhookEndpoint {
    let port = std::env::var("REGBRIDGE_E2E_WEBHOOK_PORT")
        .ok()
        .map(|p| p.parse().expect("REGBRIDGE_E2E_WEBHOOK_PORT is a port"))
        .unwrap_or(0);
    if let Ok(host) = std::env::var("REGBRIDGE_E2E_WEBHOOK_HOST") {
        let host = host
            .parse()
            .expect("REGBRIDGE_E2E_WEBHOOK_HOST is an IP address");
        return WebhookEndpoint { host, port };
    }
    let api = (
        server.host().expect("the cluster URL has a host"),
        server.port_u16().unwrap_or(443),
    )
        .to_socket_addrs()
        .expect("the API server's address resolves")
        .next()
        .expect("the API server has an address");
    let host = if api.ip().is_loopback() {
        api.ip()
    } else {
        let unspecified = match api {
            std::net::SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            std::net::SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        // A connected UDP socket sends nothing; it only picks the route.
        let probe = UdpSocket::bind((unspecified, 0)).expect("a UDP socket");
        probe.connect(api).expect("a route to the API server");
        probe.local_addr().expect("a local address").ip()
    };
    WebhookEndpoint { host, port }
}
