//! Leader election as a supervisor starts replicas, `regbridge run`
//! processes against the API stand-in:
//! - two with the same flags and the same environment (no `$HOSTNAME`, no
//!   `--instance`, as under systemd): exactly one leads. With a shared
//!   default identity, both once believed they held the Lease and both
//!   wrote;
//! - a leader cut off from its Lease stops writing before the Lease lapses.

use regbridge_test_support as support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use regbridge_standin::{Fault, Resource, StandIn};
use serde_json::json;
use support::*;

/// A replica whose log lines are collected as they come.
struct Replica {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Replica {
    fn start(kubeconfig: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_regbridge"))
            .args([
                "run",
                "--namespace",
                CONTROLLER_NS,
                "--leader-election=true",
                "--metrics-addr",
                "127.0.0.1:0",
                "--webhook=false",
                "--log-format",
                "text",
            ])
            .env_clear()
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("regbridge starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        Self { child, log }
    }

    fn said(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
    }

    fn leads(&self) -> bool {
        self.said("acquired leadership")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stand-in with the CRD and the controller's namespace, and a
/// kubeconfig for it in its own directory under `tag`.
async fn cluster(tag: &str) -> (StandIn, std::path::PathBuf, std::path::PathBuf) {
    let server = StandIn::start().await;
    server
        .create(&Resource::CRDS, None, installed_crd())
        .expect("CRD");
    namespace(&server, CONTROLLER_NS, json!({}));
    let dir = std::env::temp_dir().join(format!("regbridge-{tag}-{}", std::process::id()));
    let kubeconfig = write_kubeconfig(&dir, &server.url());
    (server, dir, kubeconfig)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_started_alike_never_both_lead() {
    let (server, dir, kubeconfig) = cluster("leader").await;

    let replicas = [Replica::start(&kubeconfig), Replica::start(&kubeconfig)];
    wait_for("a replica to lead", Duration::from_secs(20), || {
        replicas.iter().any(Replica::leads)
    })
    .await;
    // A Lease lasts 15 s: the other replica has no way to take it over
    // within this window, so a second leader now means a shared identity.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let leaders = replicas.iter().filter(|r| r.leads()).count();
    let logs: Vec<Vec<String>> = replicas
        .iter()
        .map(|r| r.log.lock().unwrap().clone())
        .collect();
    assert_eq!(leaders, 1, "replicas' logs: {logs:#?}");

    let lease = server
        .get(&Resource::LEASES, Some(CONTROLLER_NS), "regbridge-leader")
        .expect("the Lease exists");
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default();
    let host = hostname::get().unwrap().into_string().unwrap();
    let suffix = holder
        .strip_prefix(&format!("{host}_"))
        .unwrap_or_else(|| panic!("holder {holder:?} is the host name plus a suffix"));
    assert!(uuid::Uuid::parse_str(suffix).is_ok(), "{holder}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A leader cut off from the API server's Leases (every Lease request
/// fails) stops writing before its Lease could lapse for another replica:
/// kube-lease-manager alone would go on reporting leadership.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_stops_writing_within_the_lease_duration() {
    let (server, dir, kubeconfig) = cluster("fence").await;
    seed_dockerhub(&server);
    server
        .create(
            &Resource::CLUSTER_PULL_SECRETS,
            None,
            cluster_pull_secret("company", dockerhub_spec()),
        )
        .unwrap();
    let leader = Replica::start(&kubeconfig);
    wait_for("the replica to lead", Duration::from_secs(20), || {
        leader.leads()
    })
    .await;
    namespace_with_default_sa(&server, "before", json!({}));
    wait_for("a copy while leading", Duration::from_secs(10), || {
        server
            .get(&Resource::SECRETS, Some("before"), "regcred")
            .is_some()
    })
    .await;

    let cut = std::time::Instant::now();
    server.inject_fault(Fault::new("/leases/", 503).times(1_000_000));
    wait_for("writes stopped", Duration::from_secs(20), || {
        leader.said("stopping writes")
    })
    .await;
    let stopped = cut.elapsed();
    assert!(
        stopped < Duration::from_secs(15),
        "stopped {stopped:?} after the last renewal could succeed; a Lease lasts 15 s"
    );
    namespace_with_default_sa(&server, "after", json!({}));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        server
            .get(&Resource::SECRETS, Some("after"), "regcred")
            .is_none(),
        "a fenced replica wrote"
    );
    std::fs::remove_dir_all(&dir).ok();
}
