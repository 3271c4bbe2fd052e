//! The `regbridge` binary's start-up: a port already in use is an error
//! that names its flag, not a replica that runs without it.

use regbridge_test_support as support;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// `regbridge run` with `args`, against a kubeconfig whose API server is
/// never reached (a bind failure comes first); its exit status and stderr,
/// or `None` if it was still running after 20 s.
fn run(args: &[&str]) -> Option<(bool, String)> {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("regbridge-cli-{}-{run}", std::process::id()));
    let kubeconfig = support::write_kubeconfig(&dir, "http://127.0.0.1:9");
    let mut child = Command::new(env!("CARGO_BIN_EXE_regbridge"))
        .arg("run")
        .args(["--leader-election=false"])
        .args(args)
        .env("KUBECONFIG", &kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("regbridge starts");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return Some((
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn a_metrics_port_in_use_stops_run() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (ok, stderr) = run(&["--metrics-addr", &addr, "--webhook=false"])
        .expect("regbridge exits instead of running without its metrics port");
    assert!(!ok);
    assert!(
        stderr.contains(&format!("binding --metrics-addr {addr}")),
        "{stderr}"
    );
}

#[test]
fn a_webhook_port_in_use_stops_run() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (ok, stderr) = run(&["--metrics-addr", "127.0.0.1:0", "--webhook-addr", &addr])
        .expect("regbridge exits instead of running without its webhook port");
    assert!(!ok);
    assert!(
        stderr.contains(&format!("binding --webhook-addr {addr}")),
        "{stderr}"
    );
}
