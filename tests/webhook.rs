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

#[tokio::test]
async fn https_round_trip_returns_a_patch() {
    let bundle = webhook_tls::generate(
        &["127.0.0.1".to_owned(), "localhost".to_owned()],
        Utc::now(),
        Duration::days(2),
    )
    .unwrap();
    let resolver = Arc::new(CertResolver::new(&bundle.cert_pem, &bundle.key_pem).unwrap());
    let tls = Arc::new(resolver.server_config().unwrap());

    let (store, mut writer) = reflector::store::<ClusterPullSecret>();
    let cps = ClusterPullSecret::new(
        "regcred",
        ClusterPullSecretSpec {
            secret_name: None,
            credentials: vec![],
            namespaces: Default::default(),
            service_accounts: vec!["default".into()],
            refresh_before: None,
            verify: Default::default(),
        },
    );
    writer.apply_watcher_event(&watcher::Event::Apply(cps));
    let namespaces: Index<NamespaceView> = Index::default();
    namespaces.apply(&watcher::Event::Apply(Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some("team-a".into()),
            ..Default::default()
        },
        ..Default::default()
    }));
    namespaces.apply(&watcher::Event::<Namespace>::InitDone);
    let metrics = Arc::new(Metrics::default());
    let hook = Arc::new(Webhook::new(
        store,
        namespaces,
        Arc::new(AtomicBool::new(true)),
        metrics.clone(),
    ));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(webhook::serve(
        listener,
        tls,
        webhook::router(hook),
        async {
            let _ = stopped.await;
        },
    ));

    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(bundle.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "3b2e6c1a-0d4f-4a57-9a39-2f7f0c6a1e11",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"generateName": "web-", "namespace": "team-a"},
                "spec": {
                    "containers": [{"name": "web", "image": "registry.example/web:1"}],
                    "imagePullSecrets": [{"name": "theirs"}]
                }
            },
            "dryRun": false
        }
    });
    let url = format!("https://localhost:{}{}", addr.port(), webhook::PATH);
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
    let _ = server.await;
}

#[tokio::test]
async fn a_namespace_that_reaches_the_cache_a_moment_late_still_gets_the_patch() {
    let (store, mut writer) = reflector::store::<ClusterPullSecret>();
    writer.apply_watcher_event(&watcher::Event::Apply(ClusterPullSecret::new(
        "regcred",
        ClusterPullSecretSpec {
            secret_name: None,
            credentials: vec![],
            namespaces: Default::default(),
            service_accounts: vec!["default".into()],
            refresh_before: None,
            verify: Default::default(),
        },
    )));
    let namespaces: Index<NamespaceView> = Index::default();
    namespaces.apply(&watcher::Event::<Namespace>::InitDone);
    let hook = Webhook::new(
        store,
        namespaces.clone(),
        Arc::new(AtomicBool::new(true)),
        Arc::new(Metrics::default()),
    );
    let late = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        namespaces.apply(&watcher::Event::Apply(Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some("fresh".into()),
                ..Default::default()
            },
            ..Default::default()
        }));
    });
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "ServiceAccount"},
            "resource": {"group": "", "version": "v1", "resource": "serviceaccounts"},
            "namespace": "fresh",
            "name": "default",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:service-account-controller"},
            "object": {"apiVersion": "v1", "kind": "ServiceAccount",
                       "metadata": {"name": "default", "namespace": "fresh"}}
        }
    });
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
    let bundle =
        webhook_tls::generate(&["localhost".to_owned()], Utc::now(), Duration::days(2)).unwrap();
    let resolver = Arc::new(CertResolver::new(&bundle.cert_pem, &bundle.key_pem).unwrap());
    let tls = Arc::new(resolver.server_config().unwrap());
    let (store, mut writer) = reflector::store::<ClusterPullSecret>();
    for i in 0..20 {
        let mut spec = ClusterPullSecretSpec {
            secret_name: None,
            credentials: vec![],
            namespaces: Default::default(),
            service_accounts: vec!["default".into(), format!("sa-{i}-*")],
            refresh_before: None,
            verify: Default::default(),
        };
        spec.namespaces.include = vec![format!("team-{i}*"), "shared-*".into()];
        writer.apply_watcher_event(&watcher::Event::Apply(ClusterPullSecret::new(
            &format!("cps-{i}"),
            spec,
        )));
    }
    let namespaces: Index<NamespaceView> = Index::default();
    for i in 0..1000 {
        namespaces.apply(&watcher::Event::Apply(Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("team-{}-{i}", i % 20)),
                ..Default::default()
            },
            ..Default::default()
        }));
    }
    namespaces.apply(&watcher::Event::<Namespace>::InitDone);
    let metrics = Arc::new(Metrics::default());
    let hook = Arc::new(Webhook::new(
        store,
        namespaces,
        Arc::new(AtomicBool::new(true)),
        metrics.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(webhook::serve(
        listener,
        tls,
        webhook::router(hook),
        std::future::pending(),
    ));
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(bundle.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let url = format!("https://localhost:{port}{}", webhook::PATH);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
    let mut tasks = Vec::new();
    for i in 0..1000 {
        tick.tick().await;
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let ns = format!("team-{}-{i}", i % 20);
            let review = json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {
                    "uid": format!("u-{i}"),
                    "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": ns,
                    "operation": "CREATE",
                    "userInfo": {"username": "bench"},
                    "object": {"apiVersion": "v1", "kind": "Pod",
                               "metadata": {"name": format!("p-{i}"), "namespace": ns},
                               "spec": {"containers": [{"name": "c", "image": "x"}]}}
                }
            });
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
    let cps = |sas: &[&str]| {
        ClusterPullSecret::new(
            "regcred",
            ClusterPullSecretSpec {
                secret_name: None,
                credentials: vec![],
                namespaces: Default::default(),
                service_accounts: sas.iter().map(|s| s.to_string()).collect(),
                refresh_before: None,
                verify: Default::default(),
            },
        )
    };
    let (store, mut writer) = reflector::store::<ClusterPullSecret>();
    writer.apply_watcher_event(&watcher::Event::Apply(cps(&["default"])));
    let namespaces: Index<NamespaceView> = Index::default();
    namespaces.apply(&watcher::Event::Apply(Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some("team-a".into()),
            ..Default::default()
        },
        ..Default::default()
    }));
    namespaces.apply(&watcher::Event::<Namespace>::InitDone);
    let hook = Webhook::new(
        store,
        namespaces,
        Arc::new(AtomicBool::new(true)),
        Arc::new(Metrics::default()),
    );
    let review = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-2",
            "kind": {"group": "", "version": "v1", "kind": "ServiceAccount"},
            "resource": {"group": "", "version": "v1", "resource": "serviceaccounts"},
            "namespace": "team-a",
            "name": "default",
            "operation": "CREATE",
            "userInfo": {"username": "admin"},
            "object": {"apiVersion": "v1", "kind": "ServiceAccount",
                       "metadata": {"name": "default", "namespace": "team-a"}}
        }
    }))
    .unwrap();
    let patched = |out: kube::core::admission::AdmissionReview<kube::core::DynamicObject>| {
        out.response.unwrap().patch.is_some()
    };
    assert!(patched(hook.review(&review).await));
    writer.apply_watcher_event(&watcher::Event::Apply(cps(&["builder"])));
    assert!(!patched(hook.review(&review).await), "selects builder now");
    writer.apply_watcher_event(&watcher::Event::Delete(cps(&["builder"])));
    writer.apply_watcher_event(&watcher::Event::Apply(cps(&["default"])));
    assert!(patched(hook.review(&review).await));
}
