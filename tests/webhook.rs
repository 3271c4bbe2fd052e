//! The admission webhook's certificate against the API stand-in, and one
//! HTTPS round trip against the running server.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use chrono::{Duration, Utc};
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::{reflector, watcher};
use regbridge::crd::{ClusterPullSecret, ClusterPullSecretSpec};
use regbridge::index::{Index, NamespaceView};
use regbridge::metrics::Metrics;
use regbridge::webhook::{self, Webhook};
use regbridge::webhook_tls::{self, CertResolver, NOT_AFTER_ANNOTATION, TLS_SECRET};
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
    webhook_tls::dns_names("regbridge-webhook", NS, &[])
}

#[tokio::test]
async fn two_replicas_end_up_with_the_same_certificate_secret() {
    let (server, client) = standin().await;
    let now = Utc::now();
    let names = names();
    let (a, b) = tokio::join!(
        webhook_tls::ensure(&client, NS, TLS_SECRET, &names, now),
        webhook_tls::ensure(&client, NS, TLS_SECRET, &names, now),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b, "both replicas serve the same certificate");
    let secret = server
        .get(&Resource::SECRETS, Some(NS), TLS_SECRET)
        .expect("the shared Secret");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    // A third replica, later, reads the same one.
    let c = webhook_tls::ensure(&client, NS, TLS_SECRET, &names, now)
        .await
        .unwrap();
    assert_eq!(a, c);
}

#[tokio::test]
async fn a_certificate_near_expiry_is_renewed_once() {
    let (server, client) = standin().await;
    let now = Utc::now();
    let first = webhook_tls::ensure(&client, NS, TLS_SECRET, &names(), now)
        .await
        .unwrap();
    let later =
        now + Duration::days(webhook_tls::VALIDITY_DAYS - webhook_tls::RENEW_BEFORE_DAYS + 1);
    assert!(first.needs_renewal(later));
    let renewed = webhook_tls::ensure(&client, NS, TLS_SECRET, &names(), later)
        .await
        .unwrap();
    assert_ne!(renewed.cert_pem, first.cert_pem);
    assert!(!renewed.needs_renewal(later));
    // The caBundle trusts the new CA and, until it expires, the old one.
    assert!(renewed.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(renewed.ca_pem.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(renewed.ca_pem.ends_with(&first.ca_pem));
    // Another replica at the same moment keeps the renewed one.
    let again = webhook_tls::ensure(&client, NS, TLS_SECRET, &names(), later)
        .await
        .unwrap();
    assert_eq!(again, renewed);
    // A second renewal carries over only the then-current CA.
    let much_later =
        later + Duration::days(webhook_tls::VALIDITY_DAYS - webhook_tls::RENEW_BEFORE_DAYS + 1);
    let third = webhook_tls::ensure(&client, NS, TLS_SECRET, &names(), much_later)
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
    let bundle =
        webhook_tls::generate(&["localhost".to_owned()], Utc::now(), Duration::days(2)).unwrap();
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
