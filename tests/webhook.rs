//! The admission webhook's certificate against the API stand-in, HTTPS
//! round trips against the running server, and its limits under slow
//! clients.

use regbridge_test_support as support;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use chrono::{Duration, Utc};
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::{reflector, watcher};
use regbridge::api::crd::{ClusterPullSecret, ClusterPullSecretSpec};
use regbridge::cache::index::{Index, NamespaceView};
use regbridge::ops::metrics::Metrics;
use regbridge::webhook::tls::{self, CertResolver, NOT_AFTER_ANNOTATION, TLS_SECRET};
use regbridge::webhook::{self, Webhook};
use regbridge_standin::{Resource, StandIn};
use serde_json::{Value, json};

const NS: &str = "regbridge";

async fn standin() -> (StandIn, kube::Client) {
    let server = StandIn::start().await;
    server
        .create(
            &Resource::NAMESPACES,
            None,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
        )
        .expect("namespace");
    let config = kube::Config::new(server.url().parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    (server, client)
}

fn names() -> Vec<String> {
    tls::dns_names("regbridge-webhook", NS, &[])
}

#[tokio::test]
async fn two_replicas_end_up_with_the_same_certificate_secret() {
    let (server, client) = standin().await;
    let now = Utc::now();
    let names = names();
    let (a, b) = tokio::join!(
        tls::ensure(&client, NS, TLS_SECRET, &names, now),
        tls::ensure(&client, NS, TLS_SECRET, &names, now),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b, "both replicas serve the same certificate");
    let secret = server
        .get(&Resource::SECRETS, Some(NS), TLS_SECRET)
        .expect("the shared Secret");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    // A third replica, later, reads the same one.
    let c = tls::ensure(&client, NS, TLS_SECRET, &names, now)
        .await
        .unwrap();
    assert_eq!(a, c);
}

#[tokio::test]
async fn a_certificate_near_expiry_is_renewed_once() {
    let (server, client) = standin().await;
    let now = Utc::now();
    let first = tls::ensure(&client, NS, TLS_SECRET, &names(), now)
        .await
        .unwrap();
    let later = now + Duration::days(tls::VALIDITY_DAYS - tls::RENEW_BEFORE_DAYS + 1);
    assert!(first.needs_renewal(later));
    let renewed = tls::ensure(&client, NS, TLS_SECRET, &names(), later)
        .await
        .unwrap();
    assert_ne!(renewed.cert_pem, first.cert_pem);
    assert!(!renewed.needs_renewal(later));
    // The caBundle trusts the new CA and, until it expires, the old one.
    assert!(renewed.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(renewed.ca_pem.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(renewed.ca_pem.ends_with(&first.ca_pem));
    // Another replica at the same moment keeps the renewed one.
    let again = tls::ensure(&client, NS, TLS_SECRET, &names(), later)
        .await
        .unwrap();
    assert_eq!(again, renewed);
    // A second renewal carries over only the then-current CA.
    let much_later = later + Duration::days(tls::VALIDITY_DAYS - tls::RENEW_BEFORE_DAYS + 1);
    let third = tls::ensure(&client, NS, TLS_SECRET, &names(), much_later)
        .await
        .unwrap();
    assert_eq!(third.ca_pem.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(!third.ca_pem.contains(first.ca_pem.trim()));
    let secret = server
        .get(&Resource::SECRETS, Some(NS), TLS_SECRET)
        .unwrap();
    assert_eq!(
        secret["metadata"]["annotations"][NOT_AFTER_ANNOTATION],
        third.not_after.to_rfc3339()
    );
}

fn resource(name: &str, service_accounts: &[&str], include: &[&str]) -> ClusterPullSecret {
    let mut spec = ClusterPullSecretSpec {
        secret_name: None,
        credentials: vec![],
        namespaces: Default::default(),
        service_accounts: service_accounts.iter().map(|s| s.to_string()).collect(),
        refresh_before: None,
        verify: Default::default(),
    };
    spec.namespaces.include = include.iter().map(|s| s.to_string()).collect();
    ClusterPullSecret::new(name, spec)
}

fn add_namespace(index: &Index<NamespaceView>, name: &str) {
    index.apply(&watcher::Event::Apply(Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    }));
}

/// A synced namespace index holding `names`.
fn namespace_index<I: IntoIterator<Item = String>>(names: I) -> Index<NamespaceView> {
    let index: Index<NamespaceView> = Index::default();
    for name in names {
        add_namespace(&index, &name);
    }
    index.apply(&watcher::Event::<Namespace>::InitDone);
    index
}

fn webhook(
    resources: impl IntoIterator<Item = ClusterPullSecret>,
    namespaces: Index<NamespaceView>,
) -> (
    Webhook,
    Arc<Metrics>,
    reflector::store::Writer<ClusterPullSecret>,
) {
    let (store, mut writer) = reflector::store::<ClusterPullSecret>();
    for r in resources {
        writer.apply_watcher_event(&watcher::Event::Apply(r));
    }
    let metrics = Arc::new(Metrics::default());
    let hook = Webhook::new(
        store,
        namespaces,
        Arc::new(AtomicBool::new(true)),
        metrics.clone(),
    );
    (hook, metrics, writer)
}

/// Serves `hook` over HTTPS on a loopback port until `stop` completes;
/// returns its URL and a client trusting its CA.
async fn serve_https(
    hook: Webhook,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> (String, reqwest::Client) {
    let bundle = tls::generate(&["localhost".to_owned()], Utc::now(), Duration::days(2)).unwrap();
    let resolver = Arc::new(CertResolver::new(&bundle.cert_pem, &bundle.key_pem).unwrap());
    let tls = Arc::new(resolver.server_config().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(webhook::serve(
        listener,
        tls,
        webhook::router(Arc::new(hook)),
        stop,
    ));
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(bundle.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    (format!("https://localhost:{port}{}", webhook::PATH), client)
}

/// An AdmissionReview of a CREATE, as the API server sends it.
fn create_review(uid: &str, kind: &str, resource: &str, object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": resource},
            "namespace": object["metadata"]["namespace"],
            "name": object["metadata"]["name"].as_str().unwrap_or(""),
            "operation": "CREATE",
            "userInfo": {"username": "admin"},
            "object": object,
            "dryRun": false
        }
    })
}

#[tokio::test]
async fn https_round_trip_returns_a_patch() {
    let (hook, metrics, _writer) = webhook(
        [resource("regcred", &["default"], &[])],
        namespace_index(["team-a".to_string()]),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (url, client) = serve_https(hook, async {
        let _ = stopped.await;
    })
    .await;
    let review = create_review(
        "3b2e6c1a-0d4f-4a57-9a39-2f7f0c6a1e11",
        "Pod",
        "pods",
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "web-", "namespace": "team-a"},
            "spec": {
                "containers": [{"name": "web", "image": "registry.example/web:1"}],
                "imagePullSecrets": [{"name": "theirs"}]
            }
        }),
    );
    let response: Value = client
        .post(&url)
        .json(&review)
        .send()
        .await
        .expect("HTTPS round trip")
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = &response["response"];
    assert_eq!(r["uid"], "3b2e6c1a-0d4f-4a57-9a39-2f7f0c6a1e11");
    assert_eq!(r["allowed"], true);
    assert_eq!(r["patchType"], "JSONPatch");
    let bytes: Vec<u8> = r["patch"]
        .as_array()
        .expect("patch bytes")
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    assert_eq!(
        pod["spec"]["imagePullSecrets"],
        json!([{"name": "theirs"}, {"name": "regcred"}])
    );
    let text = metrics.encode();
    assert!(
        text.contains("regbridge_admissions_total{kind=\"pod\",result=\"patched\"} 1"),
        "{text}"
    );
    let _ = stop.send(());
}

fn service_account_review(uid: &str, namespace: &str) -> Value {
    create_review(
        uid,
        "ServiceAccount",
        "serviceaccounts",
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "default", "namespace": namespace}}),
    )
}

#[tokio::test]
async fn a_namespace_that_reaches_the_cache_a_moment_late_still_gets_the_patch() {
    let namespaces = namespace_index([]);
    let (hook, _, _writer) = webhook([resource("regcred", &["default"], &[])], namespaces.clone());
    let late = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        add_namespace(&namespaces, "fresh");
    });
    let review = service_account_review("u-1", "fresh");
    let out = hook.review(&serde_json::to_vec(&review).unwrap()).await;
    late.await.unwrap();
    let response = out.response.expect("a response");
    assert_eq!(response.uid, "u-1");
    assert!(
        response.patch.is_some(),
        "patched once the namespace arrived"
    );
}

/// A benchmark, not a timed test: 1,000 admissions over HTTPS at 100/s
/// against 20 resources and 1,000 namespaces; prints p50 and p99.
/// `cargo test --release --test webhook -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn admission_latency_at_100_per_second() {
    let resources = (0..20).map(|i| {
        resource(
            &format!("cps-{i}"),
            &["default", &format!("sa-{i}-*")],
            &[&format!("team-{i}*"), "shared-*"],
        )
    });
    let namespaces = namespace_index((0..1000).map(|i| format!("team-{}-{i}", i % 20)));
    let (hook, metrics, _writer) = webhook(resources, namespaces);
    let (url, client) = serve_https(hook, std::future::pending()).await;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
    let mut tasks = Vec::new();
    for i in 0..1000 {
        tick.tick().await;
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let ns = format!("team-{}-{i}", i % 20);
            let review = create_review(
                &format!("u-{i}"),
                "Pod",
                "pods",
                json!({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": format!("p-{i}"), "namespace": ns},
                       "spec": {"containers": [{"name": "c", "image": "x"}]}}),
            );
            let started = std::time::Instant::now();
            let r = client.post(&url).json(&review).send().await.unwrap();
            assert!(r.status().is_success());
            let _ = r.bytes().await.unwrap();
            started.elapsed()
        }));
    }
    let mut times = Vec::new();
    for t in tasks {
        times.push(t.await.unwrap());
    }
    times.sort();
    println!(
        "admission over HTTPS at 100/s: p50 {:?}, p99 {:?} ({} requests)",
        times[times.len() / 2],
        times[times.len() * 99 / 100],
        times.len()
    );
    let text = metrics.encode();
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_default()
    };
    let (sum, count) = (
        line("regbridge_admission_duration_seconds_sum"),
        line("regbridge_admission_duration_seconds_count"),
    );
    println!(
        "in the handler: mean {:.3} ms over {count} admissions",
        sum / count * 1000.0
    );
}

#[tokio::test]
async fn a_changed_resource_is_compiled_again() {
    let (hook, _, mut writer) = webhook(
        [resource("regcred", &["default"], &[])],
        namespace_index(["team-a".to_string()]),
    );
    let review = serde_json::to_vec(&service_account_review("u-2", "team-a")).unwrap();
    let patched = |out: kube::core::admission::AdmissionReview<kube::core::DynamicObject>| {
        out.response.unwrap().patch.is_some()
    };
    assert!(patched(hook.review(&review).await));
    let builder = resource("regcred", &["builder"], &[]);
    writer.apply_watcher_event(&watcher::Event::Apply(builder.clone()));
    assert!(!patched(hook.review(&review).await), "selects builder now");
    writer.apply_watcher_event(&watcher::Event::Delete(builder));
    writer.apply_watcher_event(&watcher::Event::Apply(resource(
        "regcred",
        &["default"],
        &[],
    )));
    assert!(patched(hook.review(&review).await));
}

/// `regbridge run` as its own process, so that its RSS is its own, serving
/// the webhook on a loopback port with the certificate in `tls_dir`.
struct Server {
    child: std::process::Child,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    fn start(kubeconfig: &std::path::Path, tls_dir: &std::path::Path) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_regbridge"))
            .args(["run", "--namespace", support::CONTROLLER_NS])
            .args(["--leader-election=false", "--log-format", "json"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(["--webhook-addr", "127.0.0.1:0"])
            .arg("--webhook-tls-dir")
            .arg(tls_dir)
            .env_clear()
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("regbridge starts");
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    log.lock().unwrap().push(line);
                }
            });
        }
        Self { child, log }
    }

    /// The webhook's address, from its "serving the admission webhook" line.
    async fn webhook_addr(&self) -> std::net::SocketAddr {
        let started = std::time::Instant::now();
        loop {
            let log = self.log.lock().unwrap().clone();
            let found = log.iter().find_map(|l| {
                let line: Value = serde_json::from_str(l).ok()?;
                let fields = &line["fields"];
                (fields["message"] == "serving the admission webhook")
                    .then(|| fields["addr"].as_str()?.parse().ok())?
            });
            if let Some(addr) = found {
                return addr;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "the webhook did not listen within 20 s; its log:\n{}",
                log.join("\n")
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Samples the RSS every 20 ms until `stop` is set; returns the peak.
    fn sample_rss(&self, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
        let pid = self.child.id();
        tokio::spawn(async move {
            let mut peak = rss(pid);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                peak = peak.max(rss(pid));
            }
            peak
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process's resident memory in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

const MIB: f64 = 1024.0 * 1024.0;

/// `count` pod reviews at 100/s through one keep-alive client, as the
/// latency benchmark sends them, each answered with a patch; returns the p99.
async fn p99_at_100_per_second(
    client: &reqwest::Client,
    url: &str,
    count: usize,
) -> std::time::Duration {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
    let mut times = Vec::new();
    for i in 0..count {
        tick.tick().await;
        let review = create_review(
            &format!("u-{i}"),
            "Pod",
            "pods",
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": format!("p-{i}"), "namespace": "team-a"},
                   "spec": {"containers": [{"name": "c", "image": "x"}]}}),
        );
        let started = std::time::Instant::now();
        let response: Value = client
            .post(url)
            .json(&review)
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .await
            .expect("a review is answered")
            .json()
            .await
            .unwrap();
        times.push(started.elapsed());
        assert!(response["response"]["patch"].is_array(), "{response}");
    }
    times.sort();
    times[times.len() * 99 / 100]
}

/// What a slow client does once its TLS handshake is done.
#[derive(Clone, Copy)]
enum Slow {
    /// Sends nothing.
    Silent,
    /// Sends part of a request's headers.
    PartialHead,
    /// Sends headers and all of a body of this length but its last byte.
    AlmostAllOfABody(usize),
}

/// Opens a TLS connection, behaves as `how`, says so on `opened`, then
/// waits (at most `hold`) for the server to close it; returns what the
/// server sent before closing, or `None` if it kept the connection open.
async fn slow_client(
    addr: std::net::SocketAddr,
    tls: tokio_rustls::TlsConnector,
    how: Slow,
    opened: tokio::sync::mpsc::Sender<()>,
    hold: std::time::Duration,
) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tls.connect(name, tcp).await.expect("TLS handshake");
    let (mut read, mut write) = tokio::io::split(stream);
    let head = "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n";
    let (sent, was_sent) = tokio::sync::oneshot::channel();
    let writing = tokio::spawn(async move {
        match how {
            Slow::Silent => {}
            Slow::PartialHead => {
                let _ = write.write_all(&head.as_bytes()[..60]).await;
            }
            Slow::AlmostAllOfABody(len) => {
                let head = format!("{head}Content-Length: {len}\r\n\r\n");
                let _ = write.write_all(head.as_bytes()).await;
                // Spaces are valid JSON padding; the last byte never comes.
                let _ = write.write_all(&vec![b' '; len - 1]).await;
            }
        }
        let _ = write.flush().await;
        let _ = sent.send(());
        // Keep the write half (and so the connection) open.
        std::future::pending::<()>().await;
    });
    let mut got = Vec::new();
    let outcome = tokio::time::timeout(hold, async {
        // A body the server does not read cannot be sent in full: count
        // the client as open once the server has had a second of it.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), was_sent).await;
        let _ = opened.send(()).await;
        let mut buf = [0u8; 4096];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writing.abort();
    outcome.ok().map(|_| got)
}

/// Opens `count` slow clients at once, of `kinds` in turn, and returns
/// their tasks once each has sent what it sends.
async fn open_slow_clients(
    addr: std::net::SocketAddr,
    tls: &tokio_rustls::TlsConnector,
    kinds: &[Slow],
    count: usize,
    hold: std::time::Duration,
) -> Vec<tokio::task::JoinHandle<Option<Vec<u8>>>> {
    let (opened, mut done) = tokio::sync::mpsc::channel(count);
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let how = kinds[i % kinds.len()];
            tokio::spawn(slow_client(addr, tls.clone(), how, opened.clone(), hold))
        })
        .collect();
    for _ in 0..count {
        tokio::time::timeout(std::time::Duration::from_secs(20), done.recv())
            .await
            .expect("every slow client connects within 20 s");
    }
    tasks
}

/// About 150 slow connections used to get the controller OOM-killed: no
/// header or idle timeout, no connection cap, and every body buffered up to
/// 2 MiB. Against the real `regbridge run`: 300 clients that finish TLS and
/// then send nothing or part of a header cost it little memory, real reviews
/// meanwhile answer as fast as without them, and the server closes them
/// after the header timeout. Then 100 clients that send all of a 1.9 MB body
/// but its last byte cost only the review slots' worth, and get 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_connections_neither_exhaust_memory_nor_delay_a_real_review() {
    use std::time::{Duration, Instant};
    let standin = StandIn::start().await;
    standin
        .create(&Resource::CRDS, None, support::installed_crd())
        .expect("CRD");
    support::namespace(&standin, support::CONTROLLER_NS, json!({}));
    support::seed_dockerhub(&standin);
    support::namespace_with_default_sa(&standin, "team-a", json!({}));
    let mut spec = support::dockerhub_spec();
    spec["serviceAccounts"] = json!(["default"]);
    standin
        .create(
            &Resource::CLUSTER_PULL_SECRETS,
            None,
            support::cluster_pull_secret("regcred", spec),
        )
        .unwrap();

    let dir = std::env::temp_dir().join(format!("regbridge-webhook-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bundle = tls::generate(
        &["localhost".to_owned()],
        Utc::now(),
        chrono::Duration::days(2),
    )
    .unwrap();
    std::fs::write(dir.join("tls.crt"), &bundle.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &bundle.key_pem).unwrap();
    let kubeconfig = support::write_kubeconfig(&dir, &standin.url());
    let server = Server::start(&kubeconfig, &dir);
    let addr = server.webhook_addr().await;
    let url = format!("https://localhost:{}{}", addr.port(), webhook::PATH);
    let ca = reqwest::Certificate::from_pem(bundle.ca_pem.as_bytes()).unwrap();
    let client = || {
        reqwest::Client::builder()
            .add_root_certificate(ca.clone())
            .resolve("localhost", addr)
            .build()
            .unwrap()
    };
    let tls = {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::{CertificateDer, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(bundle.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    };

    // Baseline: once the webhook's caches have synced (a review comes back
    // patched), the benchmark's traffic for a moment.
    let quiet = client();
    let synced = Instant::now();
    loop {
        let review = service_account_review("warm-up", "team-a");
        if let Ok(r) = quiet.post(&url).json(&review).send().await
            && r.json::<Value>()
                .await
                .is_ok_and(|v| v["response"]["patch"].is_array())
        {
            break;
        }
        assert!(
            synced.elapsed() < Duration::from_secs(20),
            "no patched review"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p99_quiet = p99_at_100_per_second(&quiet, &url, 150).await;
    let rss_quiet = rss(server.child.id());

    // 300 slow clients, held open longer than the server should allow.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = server.sample_rss(stop.clone());
    let hold = webhook::HEADER_READ_TIMEOUT + Duration::from_secs(5);
    let opened_at = Instant::now();
    let kinds = [Slow::Silent, Slow::PartialHead];
    let stalled = open_slow_clients(addr, &tls, &kinds, 300, hold).await;
    let opening = opened_at.elapsed();
    let busy = client();
    let p99_busy = p99_at_100_per_second(&busy, &url, 150).await;
    let still_open = stalled.iter().filter(|t| !t.is_finished()).count();
    let measured_after = opened_at.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let rss_busy = peak.await.unwrap();
    let mut closed_by_server = 0;
    for t in stalled {
        closed_by_server += t.await.unwrap().is_some() as usize;
    }
    let closed_after = opened_at.elapsed();
    let growth = rss_busy.saturating_sub(rss_quiet) as f64 / MIB;
    println!(
        "300 stalled connections (opened in {opening:?}): RSS {:.1} -> {:.1} MiB (+{growth:.1}); \
         p99 {p99_quiet:?} -> {p99_busy:?}; {still_open} still open after {measured_after:?}; \
         {closed_by_server} closed by the server within {closed_after:?}",
        rss_quiet as f64 / MIB,
        rss_busy as f64 / MIB,
    );
    assert_eq!(
        still_open, 300,
        "all slow clients were open while reviews ran"
    );
    assert_eq!(
        closed_by_server, 300,
        "the server closes clients that stall"
    );
    // A connection outside a review costs under 64 KiB: rustls's buffers
    // and hyper's 16 KiB read buffer (see webhook::MAX_CONNECTIONS).
    let bound = 300.0 * 64.0 / 1024.0;
    assert!(
        growth <= bound,
        "RSS grew {growth:.1} MiB, bound {bound:.1}"
    );
    assert!(
        p99_busy <= p99_quiet * 3 + Duration::from_millis(5),
        "p99 {p99_busy:?} with the slow clients, {p99_quiet:?} without"
    );

    // 100 clients that send nearly all of a 1.9 MB body: each body used to
    // be buffered; now only the review slots' are.
    let rss_quiet = rss(server.child.id());
    let stop = Arc::new(AtomicBool::new(false));
    let peak = server.sample_rss(stop.clone());
    let body = 1_900_000;
    let hold = webhook::REVIEW_TIMEOUT + Duration::from_secs(5);
    let kinds = [Slow::AlmostAllOfABody(body)];
    let trickling = open_slow_clients(addr, &tls, &kinds, 100, hold).await;
    let mut timed_out = 0;
    for t in trickling {
        let answer = t.await.unwrap().unwrap_or_default();
        timed_out += answer.starts_with(b"HTTP/1.1 408") as usize;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let rss_busy = peak.await.unwrap();
    let growth = rss_busy.saturating_sub(rss_quiet) as f64 / MIB;
    println!(
        "100 unfinished 1.9 MB bodies: RSS {:.1} -> {:.1} MiB (+{growth:.1}); {timed_out} answered 408",
        rss_quiet as f64 / MIB,
        rss_busy as f64 / MIB,
    );
    assert_eq!(timed_out, 100, "each unfinished body is answered 408");
    // Each review slot holds at most a body, a copy of it and the parsed
    // object (webhook::MAX_REVIEWS_IN_FLIGHT); other connections their buffers.
    let bound = (webhook::MAX_REVIEWS_IN_FLIGHT * 3 * body) as f64 / MIB + 100.0 * 64.0 / 1024.0;
    assert!(
        growth <= bound,
        "RSS grew {growth:.1} MiB, bound {bound:.1}"
    );
    // And the webhook still answers.
    p99_at_100_per_second(&client(), &url, 10).await;
    std::fs::remove_dir_all(&dir).ok();
}
