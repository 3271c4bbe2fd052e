//! The scale scenario and a many-tenant one, as benchmarks: they
//! measure and print, and assert only that the work completed. Run them with
//! `cargo test --test scale -- --ignored --nocapture --test-threads=1`
//! (tests/run.sh does, as its `bench_scale` step).
//!
//! The controller runs as its own process (`regbridge run`, leader election
//! off) against the in-process API stand-in, so its RSS is its own. Set
//! `REGBRIDGE_SCALE_BINARY` to measure another build (tests/run.sh passes
//! the release binary); `REGBRIDGE_SCALE_NAMESPACES` (default 2000),
//! `REGBRIDGE_SCALE_MAX_NAMESPACES` (default 10000) and
//! `REGBRIDGE_SCALE_RESOURCES` (default 200) set the sizes, and
//! `REGBRIDGE_SCALE_LOG` the controller's log filter (default `warn`). Figures
//! against the stand-in are not figures against kube-apiserver: the stand-in
//! answers in-process, without etcd, auth or admission.

use regbridge_test_support as support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use regbridge_standin::{Resource, StandIn};
use serde_json::json;
use support::*;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Controller {
    fn start(server: &StandIn, dir: &std::path::Path) -> Self {
        let kubeconfig = write_kubeconfig(dir, &server.url());
        let binary = std::env::var("REGBRIDGE_SCALE_BINARY")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_regbridge").into());
        let child = Command::new(binary)
            .args([
                "run",
                "--leader-election=false",
                "--metrics-addr",
                "127.0.0.1:0",
                "--webhook-addr",
                "127.0.0.1:0",
                "--namespace",
                CONTROLLER_NS,
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("REGBRIDGE_SCALE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("regbridge starts");
        Self(child)
    }

    fn rss_mib(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    }
}

fn seed(server: &StandIn, from: usize, to: usize) {
    for i in from..to {
        namespace_with_default_sa(server, &format!("ns-{i:05}"), json!({}));
    }
}

/// How many namespaces hold a copy whose payload equals the source's.
fn covered(server: &StandIn, payload: &serde_json::Value) -> usize {
    let copies = server
        .list(&Resource::SECRETS, None)
        .into_iter()
        .filter(|s| {
            s["metadata"]["labels"]["regbridge.dev/role"] == "copy"
                && &s["data"][".dockerconfigjson"] == payload
        })
        .count();
    let referenced = server
        .list(&Resource::SERVICE_ACCOUNTS, None)
        .into_iter()
        .filter(|s| {
            s["imagePullSecrets"]
                .as_array()
                .is_some_and(|l| l.iter().any(|r| r["name"] == "regcred"))
        })
        .count();
    copies.min(referenced)
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "{what} did not finish within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// The composed source of the resource `name`, as its copies hold it.
fn source_payload(server: &StandIn, name: &str) -> serde_json::Value {
    server
        .get(&Resource::SECRETS, Some(CONTROLLER_NS), name)
        .map(|s| s["data"][".dockerconfigjson"].clone())
        .unwrap_or_default()
}

/// A stand-in with the CRD, the controller's namespace and the Docker Hub
/// credential every resource here composes.
async fn prepared() -> StandIn {
    let server = StandIn::start().await;
    server
        .create(&Resource::CRDS, None, support::installed_crd())
        .unwrap();
    namespace(&server, CONTROLLER_NS, json!({}));
    server
        .create(
            &Resource::SECRETS,
            Some(CONTROLLER_NS),
            dockerhub_secret("me", PASSWORD),
        )
        .unwrap();
    server
}

/// Creates namespace `name` with its default ServiceAccount and waits until
/// regbridge has patched the SA; returns how long that took from the SA's
/// creation.
async fn new_namespace_patched(server: &StandIn, name: &str) -> Duration {
    namespace(server, name, json!({}));
    let appeared = Instant::now();
    service_account(server, name, "default", &[]);
    wait_until("new SA patched", Duration::from_secs(60), || {
        server
            .get(&Resource::SERVICE_ACCOUNTS, Some(name), "default")
            .is_some_and(|s| s["imagePullSecrets"][0]["name"] == "regcred")
    })
    .await;
    appeared.elapsed()
}

/// p50 and p99 of `samples`, in ms.
fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() * 99 / 100]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn scale_figures() {
    let n = env_usize("REGBRIDGE_SCALE_NAMESPACES", 2000);
    let max = env_usize("REGBRIDGE_SCALE_MAX_NAMESPACES", 10_000).max(n);
    let server = prepared().await;
    seed(&server, 0, n);
    let dir = std::env::temp_dir().join(format!("regbridge-scale-{}", std::process::id()));
    let controller = Controller::start(&server, &dir);
    tokio::time::sleep(Duration::from_secs(2)).await; // caches sync
    let mut spec = dockerhub_spec();
    spec["namespaces"] = json!({"include": ["ns-*"]});

    // 1. Existing namespaces covered after the resource is created.
    let created = Instant::now();
    server
        .create(
            &Resource::CLUSTER_PULL_SECRETS,
            None,
            cluster_pull_secret("company", spec),
        )
        .unwrap();
    let mut payload = json!(null);
    wait_until("initial fan-out", Duration::from_secs(600), || {
        payload = source_payload(&server, "company");
        !payload.is_null() && covered(&server, &payload) >= n
    })
    .await;
    let fan_out = created.elapsed();

    // 2. A new namespace's default SA patched after the SA appears.
    let mut latencies = Vec::new();
    for i in 0..100 {
        latencies.push(new_namespace_patched(&server, &format!("ns-new-{i:03}")).await);
    }
    let (p50, p99) = percentiles(latencies);
    let total = n + 100;

    // 3. A source change reaching every namespace.
    let changed = Instant::now();
    server
        .update(
            &Resource::SECRETS,
            Some(CONTROLLER_NS),
            dockerhub_secret("me", "rotated-password"),
        )
        .unwrap();
    wait_until("propagation", Duration::from_secs(600), || {
        let now = source_payload(&server, "company");
        now != payload && covered(&server, &now) >= total
    })
    .await;
    let propagation = changed.elapsed();

    // 4. Steady state: writes over 5 s with nothing changing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.clear_requests();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let steady_writes = server.writes().len();
    let rss_at_n = controller.rss_mib();

    // 5. RSS with `max` namespaces.
    seed(&server, n, max);
    let final_payload = source_payload(&server, "company");
    wait_until("growth to max", Duration::from_secs(900), || {
        covered(&server, &final_payload) >= max + 100
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_at_max = controller.rss_mib();

    println!("scale figures (controller: separate process; API: in-process stand-in)");
    println!(
        "  {n} existing namespaces covered (Secret + default SA) in {:.2} s",
        fan_out.as_secs_f64()
    );
    println!(
        "  new namespace default SA patched after the SA appears: p50 {p50:.0} ms, p99 {p99:.0} ms (100 samples)"
    );
    println!(
        "  source change reached {total} namespaces in {:.2} s",
        propagation.as_secs_f64()
    );
    println!("  writes in 5 s of steady state: {steady_writes}");
    println!(
        "  controller RSS: {rss_at_n:.1} MiB at {total} namespaces, {rss_at_max:.1} MiB at {} namespaces",
        max + 100
    );
    assert_eq!(steady_writes, 0, "steady state must make no writes");
}

/// Many tenants: `REGBRIDGE_SCALE_RESOURCES` resources (default 200), each
/// selecting its own 10 namespaces. Every Namespace and ServiceAccount event
/// is planned by every resource, so this measures what that costs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn many_resources_figures() {
    let resources = env_usize("REGBRIDGE_SCALE_RESOURCES", 200);
    let per = 10;
    let server = prepared().await;
    for i in 0..resources {
        for j in 0..per {
            namespace_with_default_sa(&server, &format!("t{i:03}-{j}"), json!({}));
        }
    }
    let dir = std::env::temp_dir().join(format!("regbridge-many-{}", std::process::id()));
    let controller = Controller::start(&server, &dir);
    tokio::time::sleep(Duration::from_secs(2)).await; // caches sync

    let created = Instant::now();
    for i in 0..resources {
        let mut spec = dockerhub_spec();
        spec["namespaces"] = json!({"include": [format!("t{i:03}-*")]});
        server
            .create(
                &Resource::CLUSTER_PULL_SECRETS,
                None,
                cluster_pull_secret(&format!("tenant-{i:03}"), spec),
            )
            .unwrap();
    }
    let total = resources * per;
    let mut payload = json!(null);
    wait_until("every tenant covered", Duration::from_secs(900), || {
        payload = source_payload(&server, "tenant-000");
        !payload.is_null() && covered(&server, &payload) >= total
    })
    .await;
    let fan_out = created.elapsed();

    let mut latencies = Vec::new();
    for s in 0..50 {
        let name = format!("t{:03}-new-{s}", s * 7 % resources);
        latencies.push(new_namespace_patched(&server, &name).await);
    }
    let (p50, p99) = percentiles(latencies);

    tokio::time::sleep(Duration::from_secs(2)).await;
    server.clear_requests();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let steady_writes = server.writes().len();
    let rss = controller.rss_mib();

    println!("many resources (controller: separate process; API: in-process stand-in)");
    println!(
        "  {resources} resources covering their {total} namespaces after creation: {:.2} s",
        fan_out.as_secs_f64()
    );
    println!(
        "  new namespace default SA patched after the SA appears: p50 {p50:.0} ms, p99 {p99:.0} ms (50 samples)"
    );
    println!("  writes in 5 s of steady state: {steady_writes}");
    println!("  controller RSS: {rss:.1} MiB");
    assert_eq!(steady_writes, 0, "steady state must make no writes");
}
