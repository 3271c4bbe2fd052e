//! The stand-in calls mutating admission webhooks over real HTTPS, here a small
//! server inside the test with a certificate of its own CA. No real API server can
//! run here, so the expected behaviour is kube-apiserver's published admission
//! webhook contract
//! (https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/)
//! and its mutating dispatcher (`mutating/dispatcher.go`): what the AdmissionReview
//! carries, how `failurePolicy` treats call failures, that a denial or a patch that
//! does not apply fails the write whatever the policy, and the built-in
//! ServiceAccount plugin that runs before the webhooks.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use regbridge_standin::{AdmissionOutcome, Resource, StandIn};
use serde_json::{Value, json};
use tokio_rustls::rustls;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// What the test webhook answers, after `delay`.
struct Reply {
    code: u16,
    body: Value,
    delay: Duration,
}

impl Reply {
    fn answer(review: &Value, response: Value) -> Reply {
        let mut response = response;
        if response.get("uid").is_none() {
            response["uid"] = review["request"]["uid"].clone();
        }
        Reply {
            code: 200,
            body: json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}),
            delay: Duration::ZERO,
        }
    }
    fn allow(review: &Value) -> Reply {
        Reply::answer(review, json!({"allowed": true}))
    }
    /// Allowed with a JSON Patch, base64-encoded as Go encodes `[]byte`.
    fn patch(review: &Value, ops: Value) -> Reply {
        let patch = B64.encode(serde_json::to_vec(&ops).expect("json"));
        Reply::answer(
            review,
            json!({"allowed": true, "patchType": "JSONPatch", "patch": patch}),
        )
    }
}

type Responder = Arc<dyn Fn(&Value) -> Reply + Send + Sync>;

/// One request the test webhook received.
#[derive(Clone)]
struct Seen {
    uri: String,
    review: Value,
}

/// A webhook server on 127.0.0.1 over TLS; stops when dropped.
struct TestWebhook {
    url: String,
    /// Base64 PEM of an unrelated CA and then the one that signed the server's
    /// certificate: a bundle may hold several.
    ca_bundle: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestWebhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn new_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("key"))
        .expect("ca")
}

impl TestWebhook {
    async fn start(responder: impl Fn(&Value) -> Reply + Send + Sync + 'static) -> TestWebhook {
        let responder: Responder = Arc::new(responder);
        let ca = new_ca("admission test CA");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("cert");
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "https://{}/mutate",
            listener.local_addr().expect("local addr")
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let (acceptor, responder, seen) =
                        (acceptor.clone(), responder.clone(), seen.clone());
                    tokio::spawn(async move {
                        let Ok(stream) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = hyper::service::service_fn(move |req| {
                            answer(req, responder.clone(), seen.clone())
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        let bundle = format!("{}{}", new_ca("unrelated CA").pem(), ca.pem());
        TestWebhook {
            url,
            ca_bundle: B64.encode(bundle),
            seen,
            task,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    fn reviews(&self) -> Vec<Value> {
        self.seen().into_iter().map(|s| s.review).collect()
    }

    /// A webhook entry calling this server for CREATE and UPDATE of `resources`.
    fn hook(&self, name: &str, resources: &[&str]) -> Value {
        json!({
            "name": name, "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "clientConfig": {"url": self.url, "caBundle": self.ca_bundle},
            "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": resources}],
        })
    }
}

async fn answer(
    req: hyper::Request<Incoming>,
    responder: Responder,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let uri = req.uri().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let review: Value = serde_json::from_slice(&body).unwrap_or_default();
    seen.lock().expect("seen").push(Seen {
        uri,
        review: review.clone(),
    });
    let reply = responder(&review);
    tokio::time::sleep(reply.delay).await;
    let mut resp = hyper::Response::new(Full::new(Bytes::from(
        serde_json::to_vec(&reply.body).expect("json"),
    )));
    *resp.status_mut() = hyper::StatusCode::from_u16(reply.code).expect("status");
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// A client of the stand-in's HTTP API.
struct Api {
    url: String,
    http: reqwest::Client,
}

impl Api {
    fn new(server: &StandIn) -> Api {
        Api {
            url: server.url(),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Value,
    ) -> (u16, Value) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(serde_json::to_vec(&body).expect("json"))
            .send()
            .await
            .expect("send");
        let code = resp.status().as_u16();
        (code, resp.json().await.unwrap_or_default())
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, "application/json", body)
            .await
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, "application/json", body)
            .await
    }

    async fn patch(&self, path: &str, content_type: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::PATCH, path, content_type, body)
            .await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("send");
        let code = resp.status().as_u16();
        (code, resp.json().await.unwrap_or_default())
    }
}

fn configure(server: &StandIn, name: &str, hooks: Vec<Value>) {
    server
        .create(
            &Resource::MUTATING_WEBHOOK_CONFIGURATIONS,
            None,
            json!({"metadata": {"name": name}, "webhooks": hooks}),
        )
        .expect("webhook configuration");
}

fn config_map(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

const CONFIG_MAPS: &str = "/api/v1/namespaces/default/configmaps";

fn outcomes(server: &StandIn) -> Vec<AdmissionOutcome> {
    server
        .admission_calls()
        .into_iter()
        .map(|c| c.outcome)
        .collect()
}

/// A URL nothing listens on: a port that was bound and released.
async fn refused_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    format!("https://{}/mutate", l.local_addr().expect("addr"))
}

#[tokio::test]
async fn configurations_are_served_like_other_types() {
    let server = StandIn::start().await;
    let api = Api::new(&server);
    let (code, discovery) = api.get("/apis/admissionregistration.k8s.io/v1").await;
    assert_eq!(code, 200);
    assert_eq!(
        discovery["resources"][0],
        json!({"name": "mutatingwebhookconfigurations", "singularName": "mutatingwebhookconfiguration",
               "namespaced": false, "kind": "MutatingWebhookConfiguration",
               "verbs": ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"]})
    );
    let path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations";
    let hook = json!({"name": "a.regbridge.dev", "sideEffects": "None", "admissionReviewVersions": ["v1"],
        "clientConfig": {"service": {"namespace": "regbridge", "name": "regbridge"}}});
    let (code, created) = api
        .post(
            path,
            json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
               "metadata": {"name": "regbridge"}, "webhooks": [hook]}),
        )
        .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(
        created["webhooks"][0]["clientConfig"]["service"]["port"],
        443
    );
    let item = format!("{path}/regbridge");
    let (code, patched) = api
        .patch(
            &item,
            "application/json-patch+json",
            json!([{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]),
        )
        .await;
    assert_eq!(
        (code, &patched["webhooks"][0]["failurePolicy"]),
        (200, &json!("Ignore"))
    );
    let (code, merged) = api
        .patch(
            &item,
            "application/merge-patch+json",
            json!({"metadata": {"labels": {"app": "regbridge"}}}),
        )
        .await;
    assert_eq!(
        (code, &merged["metadata"]["labels"]["app"]),
        (200, &json!("regbridge"))
    );
    let (code, strategic) = api
        .patch(
            &item,
            "application/strategic-merge-patch+json",
            json!({"webhooks": [{"name": "a.regbridge.dev", "timeoutSeconds": 5}]}),
        )
        .await;
    assert_eq!(code, 200, "{strategic}");
    let merged_hook = &strategic["webhooks"][0];
    assert_eq!(
        (
            &merged_hook["timeoutSeconds"],
            &merged_hook["failurePolicy"]
        ),
        (&json!(5), &json!("Ignore")),
        "webhooks merge by name"
    );
    let (code, list) = api.get(path).await;
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "MutatingWebhookConfigurationList");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    let (code, invalid) = api
        .put(
            &item,
            json!({"metadata": {"name": "regbridge"}, "webhooks": [{"name": "short", "sideEffects": "Some",
                   "admissionReviewVersions": ["v1"], "clientConfig": {"url": "https://x.example/m"}}]}),
        )
        .await;
    assert_eq!(code, 422, "{invalid}");
    let resp = api
        .http
        .delete(format!("{}{item}", api.url))
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        server
            .get(
                &Resource::MUTATING_WEBHOOK_CONFIGURATIONS,
                None,
                "regbridge"
            )
            .is_none()
    );
}

#[tokio::test]
async fn a_patch_is_applied_and_stored_and_the_review_describes_the_write() {
    let server = StandIn::start().await;
    let api = Api::new(&server);
    let webhook = TestWebhook::start(|review| {
        Reply::patch(
            review,
            json!([{"op": "add", "path": "/metadata/annotations", "value": {"mutated": "yes"}}]),
        )
    })
    .await;
    configure(
        &server,
        "regbridge",
        vec![webhook.hook("cm.regbridge.dev", &["configmaps"])],
    );

    let (code, created) = api
        .post(CONFIG_MAPS, config_map("app", json!({"a": "1"})))
        .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["metadata"]["annotations"]["mutated"], "yes");
    let stored = server
        .get(&Resource::CONFIG_MAPS, Some("default"), "app")
        .expect("stored");
    assert_eq!(stored["metadata"]["annotations"]["mutated"], "yes");

    let seen = webhook.seen();
    assert_eq!(seen[0].uri, "/mutate?timeout=10s");
    let review = &seen[0].review;
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    let req = &review["request"];
    assert!(req["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let kind = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
    let resource = json!({"group": "", "version": "v1", "resource": "configmaps"});
    assert_eq!(req["kind"], kind);
    assert_eq!(req["requestKind"], kind);
    assert_eq!(req["resource"], resource);
    assert_eq!(req["requestResource"], resource);
    assert_eq!(req["operation"], "CREATE");
    assert_eq!(req["name"], "app");
    assert_eq!(req["namespace"], "default");
    assert_eq!(req["userInfo"]["username"], "system:admin");
    assert_eq!(req["object"]["data"], json!({"k": "v"}));
    assert_eq!(req["object"]["metadata"]["namespace"], "default");
    assert_eq!(req["oldObject"], Value::Null);
    assert_eq!(req["dryRun"], false);
    assert_eq!(
        req["options"],
        json!({"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"})
    );

    let mut changed = stored.clone();
    changed["data"]["k"] = json!("w");
    let (code, updated) = api.put(&format!("{CONFIG_MAPS}/app"), changed).await;
    assert_eq!(code, 200, "{updated}");
    let (code, _) = api
        .patch(
            &format!("{CONFIG_MAPS}/app?fieldManager=tester"),
            "application/merge-patch+json",
            json!({"data": {"k": "x"}}),
        )
        .await;
    assert_eq!(code, 200);
    let reviews = webhook.reviews();
    let (put, patch) = (&reviews[1]["request"], &reviews[2]["request"]);
    assert_eq!(put["operation"], "UPDATE");
    assert_eq!(put["oldObject"], stored);
    assert_eq!(put["object"]["data"]["k"], "w");
    assert_eq!(put["options"]["kind"], "UpdateOptions");
    assert_eq!(patch["operation"], "UPDATE");
    assert_eq!(patch["object"]["data"]["k"], "x");
    assert_eq!(patch["oldObject"]["data"]["k"], "w");
    assert_eq!(
        patch["options"],
        json!({"kind": "PatchOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "tester"})
    );
    let uids: std::collections::BTreeSet<&str> = reviews
        .iter()
        .filter_map(|r| r["request"]["uid"].as_str())
        .collect();
    assert_eq!(uids.len(), 3, "each call has its own uid");

    // A generated name does not exist yet when the webhook is called.
    let mut generated = config_map("", json!({}));
    generated["metadata"] = json!({"generateName": "gen-"});
    let (code, _) = api.post(CONFIG_MAPS, generated).await;
    assert_eq!(code, 201);
    assert!(webhook.reviews()[3]["request"].get("name").is_none());
    let calls = server.admission_calls();
    assert_eq!(calls.len(), 4);
    assert_eq!(calls[0].webhook, "cm.regbridge.dev");
    assert_eq!(calls[0].configuration, "regbridge");
    assert_eq!(calls[0].resource, Resource::CONFIG_MAPS);
    assert_eq!(
        (calls[1].operation.as_str(), calls[1].name.as_str()),
        ("UPDATE", "app")
    );
    assert_eq!(calls[3].name, "");
    // The annotation is already there on updates: the patch changes nothing.
    assert_eq!(
        outcomes(&server),
        [
            AdmissionOutcome::Patched,
            AdmissionOutcome::Unchanged,
            AdmissionOutcome::Unchanged,
            AdmissionOutcome::Patched
        ]
    );
}

#[tokio::test]
async fn a_patch_given_as_an_array_of_numbers_is_applied() {
    let server = StandIn::start().await;
    let api = Api::new(&server);
    let webhook = TestWebhook::start(|review| {
        let ops = br#"[{"op":"add","path":"/data/added","value":"by-webhook"}]"#.to_vec();
        Reply::answer(
            review,
            json!({"allowed": true, "patchType": "JSONPatch", "patch": ops}),
        )
    })
    .await;
    configure(
        &server,
        "regbridge",
        vec![webhook.hook("cm.regbridge.dev", &["configmaps"])],
    );
    let (code, created) = api.post(CONFIG_MAPS, config_map("app", json!({}))).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["data"]["added"], "by-webhook");
}

#[tokio::test]
async fn failure_policy_decides_about_call_failures() {
    let server = StandIn::start().await;
    let api = Api::new(&server);
    let webhook = TestWebhook::start(Reply::allow).await;
    let mut ignored = webhook.hook("ignored.regbridge.dev", &["configmaps"]);
    ignored["clientConfig"]["url"] = json!(refused_url().await);
    ignored["failurePolicy"] = json!("Ignore");
    configure(&server, "a-ignored", vec![ignored]);
    let (code, body) = api.post(CONFIG_MAPS, config_map("one", json!({}))).await;
    assert_eq!(code, 201, "{body}");
    let calls = server.admission_calls();
    assert!(
        matches!(&calls[0].outcome, AdmissionOutcome::IgnoredFailure(m)
            if m.starts_with("failed calling webhook \"ignored.regbridge.dev\": failed to call webhook: Post \"https://127.0.0.1:")),
        "{calls:?}"
    );

    // Under Fail, an unreachable service, a CA that did not sign the server's
    // certificate and a non-2xx answer each fail the write with 500.
    let mut service = webhook.hook("service.regbridge.dev", &["configmaps"]);
    service["clientConfig"] =
        json!({"service": {"namespace": "regbridge", "name": "webhook", "path": "/mutate"}});
    configure(&server, "b-service", vec![service]);
    let (code, status) = api.post(CONFIG_MAPS, config_map("two", json!({}))).await;
    assert_eq!(code, 500);
    assert_eq!(status["reason"], "InternalError");
    assert!(
        status["message"].as_str().is_some_and(|m| m.starts_with(
            "Internal error occurred: failed calling webhook \"service.regbridge.dev\": failed to call webhook: Post \"https://webhook.regbridge.svc:443/mutate?timeout=10s\""
        )),
        "{status}"
    );
    server
        .delete(
            &Resource::MUTATING_WEBHOOK_CONFIGURATIONS,
            None,
            "b-service",
        )
        .expect("delete");

    let mut untrusted = webhook.hook("untrusted.regbridge.dev", &["configmaps"]);
    untrusted["clientConfig"]["caBundle"] = json!(B64.encode(new_ca("other").pem()));
    configure(&server, "c-untrusted", vec![untrusted]);
    let (code, status) = api.post(CONFIG_MAPS, config_map("three", json!({}))).await;
    assert_eq!(code, 500);
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("certificate")),
        "{status}"
    );
    assert!(webhook.seen().is_empty());
    server
        .delete(
            &Resource::MUTATING_WEBHOOK_CONFIGURATIONS,
            None,
            "c-untrusted",
        )
        .expect("delete");

    let broken = TestWebhook::start(|_| Reply {
        code: 503,
        body: json!({"error": "down"}),
        delay: Duration::ZERO,
    })
    .await;
    configure(
        &server,
        "d-broken",
        vec![broken.hook("broken.regbridge.dev", &["configmaps"])],
    );
    let (code, status) = api.post(CONFIG_MAPS, config_map("four", json!({}))).await;
    assert_eq!(code, 500, "{status}");
    assert!(
        server
            .get(&Resource::CONFIG_MAPS, Some("default"), "four")
            .is_none()
    );
    assert!(matches!(
        outcomes(&server).last(),
        Some(AdmissionOutcome::Failed(_))
    ));
}

#[tokio::test]
async fn a_slow_webhook_times_out_as_a_call_failure() {
    let server = StandIn::start().await;
    let api = Api::new(&server);
    let webhook = TestWebhook::start(|review| Reply {
        delay: Duration::from_secs(3),
        ..Reply::allow(review)
    })
    .await;
    let mut hook = webhook.hook("slow.regbridge.dev", &["configmaps"]);
    hook["timeoutSeconds"] = json!(1);
    hook["failurePolicy"] = json!("Ignore");
    configure(&server, "regbridge", vec![hook]);
    let started = std::time::Instant::now();
    let (code, _) = api.post(CONFIG_MAPS, config_map("app", json!({}))).await;
    assert_eq!(code, 201);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(webhook.seen()[0].uri, "/mutate?timeout=1s");
    assert!(
        matches!(&outcomes(&server)[0], AdmissionOutcome::IgnoredFailure(m) if m.ends_with("context deadline exceeded"))
    );
}

#[tokio::test]
async fn a_uid_mismatch_is_a_call_failure() {
    let server = StandIn::start().await;
    let api = Api::new(&server);
    let webhook = TestWebhook::start(|review| {
        Reply::answer(review, json!({"uid": "not-the-request", "allowed": true}))
    })
    .await;
    let mut ignored = webhook.hook("ignored.regbridge.dev", &["configmaps"]);
    ignored["failurePolicy"] = json!("Ignore");
    configure(&server, "a", vec![ignored]);
    let (code, _) = api.post(CONFIG_MAPS, config_map("one", json!({}))).await;
    assert_eq!(code, 201);
    configure(
        &server,
        "b",
        vec![webhook.hook("strict.regbridge.dev", &["configmaps"])],
    );
    let (code, status) = api.post(CONFIG_MAPS, config_map("two", json!({}))).await;
    assert_eq!(code, 500);
    let msg = status["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("received invalid webhook response: expected response.uid=")
            && msg.ends_with("got \"not-the-request\""),
        "{msg}"
    );
}

#[tokio::test]
async fn a_denial_is_returned_whatever_the_failure_policy() {
    let server = StandIn::start().await;
    let api = Api::new(&server);
    let webhook = TestWebhook::start(|review| {
        let name = review["request"]["name"].as_str().unwrap_or_default();
        let status = if name == "unprocessable" {
            json!({"code": 422, "reason": "Invalid", "message": "bad data"})
        } else {
            json!({"message": "not today"})
        };
        Reply::answer(review, json!({"allowed": false, "status": status}))
    })
    .await;
    let mut hook = webhook.hook("deny.regbridge.dev", &["configmaps"]);
    hook["failurePolicy"] = json!("Ignore");
    configure(&server, "regbridge", vec![hook]);
    let (code, status) = api.post(CONFIG_MAPS, config_map("app", json!({}))).await;
    assert_eq!(code, 403);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["status"], "Failure");
    assert_eq!(
        status["message"],
        "admission webhook \"deny.regbridge.dev\" denied the request: not today"
    );
    let (code, status) = api
        .post(CONFIG_MAPS, config_map("unprocessable", json!({})))
        .await;
    assert_eq!((code, &status["reason"]), (422, &json!("Invalid")));
    assert!(
        server
            .get(&Resource::CONFIG_MAPS, Some("default"), "app")
            .is_none()
    );
    assert_eq!(
        outcomes(&server)[0],
        AdmissionOutcome::Rejected(
            "admission webhook \"deny.regbridge.dev\" denied the request: not today".into()
        )
    );
}

#[tokio::test]
async fn a_patch_that_does_not_apply_fails_the_write_even_under_ignore() {
    let server = StandIn::start().await;
    let api = Api::new(&server);
    let webhook = TestWebhook::start(|review| {
        Reply::patch(
            review,
            json!([{"op": "add", "path": "/imagePullSecrets/-", "value": {"name": "regcred"}}]),
        )
    })
    .await;
    let mut hook = webhook.hook("sa.regbridge.dev", &["serviceaccounts"]);
    hook["failurePolicy"] = json!("Ignore");
    configure(&server, "regbridge", vec![hook]);
    let (code, status) = api
        .post(
            "/api/v1/namespaces/default/serviceaccounts",
            json!({"metadata": {"name": "builder"}}),
        )
        .await;
    assert_eq!(code, 500, "{status}");
    assert_eq!(status["reason"], "InternalError");
    assert!(
        server
            .get(&Resource::SERVICE_ACCOUNTS, Some("default"), "builder")
            .is_none()
    );
    assert!(matches!(
        &outcomes(&server)[0],
        AdmissionOutcome::Failed(m) if m.starts_with("Internal error occurred: ")
    ));
}

#[tokio::test]
async fn rules_and_selectors_choose_the_webhooks_called() {
    let server = StandIn::start().await;
    let api = Api::new(&server);
    let webhook = TestWebhook::start(Reply::allow).await;
    for (ns, team) in [("team-a", "a"), ("team-b", "b")] {
        server
            .create(
                &Resource::NAMESPACES,
                None,
                json!({"metadata": {"name": ns, "labels": {"team": team}}}),
            )
            .expect("namespace");
    }
    let mut by_namespace = webhook.hook("ns.regbridge.dev", &["configmaps"]);
    by_namespace["namespaceSelector"] = json!({"matchLabels": {"team": "a"}});
    let mut by_object = webhook.hook("obj.regbridge.dev", &["configmaps"]);
    by_object["objectSelector"] =
        json!({"matchExpressions": [{"key": "inject", "operator": "In", "values": ["yes"]}]});
    let mut creates_only = webhook.hook("create.regbridge.dev", &["configmaps"]);
    creates_only["rules"][0]["operations"] = json!(["CREATE"]);
    let secrets = webhook.hook("secrets.regbridge.dev", &["secrets"]);
    let mut cluster_scope = webhook.hook("cluster.regbridge.dev", &["*"]);
    cluster_scope["rules"][0]["scope"] = json!("Cluster");
    configure(
        &server,
        "regbridge",
        vec![
            by_namespace,
            by_object,
            creates_only,
            secrets,
            cluster_scope,
        ],
    );
    let called = |server: &StandIn| -> Vec<String> {
        server
            .admission_calls()
            .into_iter()
            .map(|c| c.webhook)
            .collect()
    };

    let (code, _) = api
        .post(
            "/api/v1/namespaces/team-a/configmaps",
            config_map("a", json!({})),
        )
        .await;
    assert_eq!(code, 201);
    assert_eq!(
        called(&server),
        ["ns.regbridge.dev", "create.regbridge.dev"]
    );

    let (code, _) = api
        .post(
            "/api/v1/namespaces/team-b/configmaps",
            config_map("b", json!({"inject": "yes"})),
        )
        .await;
    assert_eq!(code, 201);
    assert_eq!(
        called(&server)[2..],
        ["obj.regbridge.dev", "create.regbridge.dev"]
    );

    // On UPDATE the old object's labels are enough for objectSelector.
    let (code, _) = api
        .patch(
            "/api/v1/namespaces/team-b/configmaps/b",
            "application/merge-patch+json",
            json!({"metadata": {"labels": {"inject": "no"}}}),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(called(&server)[4..], ["obj.regbridge.dev"]);

    let (code, _) = api
        .post(
            "/api/v1/namespaces/team-b/secrets",
            json!({"metadata": {"name": "s"}, "type": "Opaque"}),
        )
        .await;
    assert_eq!(code, 201);
    assert_eq!(called(&server)[5..], ["secrets.regbridge.dev"]);
}

#[tokio::test]
async fn a_patch_racing_a_concurrent_write_is_redone() {
    let server = Arc::new(StandIn::start().await);
    let api = Api::new(&server);
    server
        .create(
            &Resource::CONFIG_MAPS,
            Some("default"),
            config_map("app", json!({})),
        )
        .expect("config map");
    let calls = Arc::new(AtomicUsize::new(0));
    // The first call writes the object behind the request's back, as another
    // client would while the webhook runs.
    let webhook = TestWebhook::start({
        let (server, calls) = (server.clone(), calls.clone());
        move |review| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                let mut cm = server
                    .get(&Resource::CONFIG_MAPS, Some("default"), "app")
                    .expect("config map");
                let writes = cm["data"].as_object().map_or(0, |d| d.len());
                cm["data"]["concurrent"] = json!(format!("write {writes}"));
                server
                    .update(&Resource::CONFIG_MAPS, Some("default"), cm)
                    .expect("concurrent write");
            }
            Reply::allow(review)
        }
    })
    .await;
    configure(
        &server,
        "regbridge",
        vec![webhook.hook("cm.regbridge.dev", &["configmaps"])],
    );
    let (code, patched) = api
        .patch(
            &format!("{CONFIG_MAPS}/app"),
            "application/merge-patch+json",
            json!({"data": {"patched": "yes"}}),
        )
        .await;
    assert_eq!(code, 200, "{patched}");
    assert_eq!(patched["data"]["concurrent"], "write 1");
    assert_eq!(patched["data"]["patched"], "yes");
    let reviews = webhook.reviews();
    assert_eq!(reviews.len(), 2, "the patch was admitted again");
    assert_eq!(
        reviews[1]["request"]["oldObject"]["data"]["concurrent"],
        "write 1"
    );

    // A PUT naming the resourceVersion it read conflicts instead.
    calls.store(0, Ordering::SeqCst);
    let mut stale = server
        .get(&Resource::CONFIG_MAPS, Some("default"), "app")
        .expect("config map");
    stale["data"]["put"] = json!("yes");
    let (code, status) = api.put(&format!("{CONFIG_MAPS}/app"), stale).await;
    assert_eq!(code, 409, "{status}");
    assert_eq!(status["reason"], "Conflict");
}

#[tokio::test]
async fn dry_runs_reach_webhooks_marked_as_dry_runs() {
    let server = StandIn::start().await;
    let api = Api::new(&server);
    let webhook = TestWebhook::start(Reply::allow).await;
    configure(
        &server,
        "regbridge",
        vec![webhook.hook("cm.regbridge.dev", &["configmaps"])],
    );
    let (code, _) = api
        .post(
            &format!("{CONFIG_MAPS}?dryRun=All"),
            config_map("app", json!({})),
        )
        .await;
    assert_eq!(code, 201);
    let req = &webhook.reviews()[0]["request"];
    assert_eq!(req["dryRun"], true);
    assert_eq!(req["options"]["dryRun"], json!(["All"]));
    assert!(server.admission_calls()[0].dry_run);
    assert!(
        server
            .get(&Resource::CONFIG_MAPS, Some("default"), "app")
            .is_none()
    );
}

#[tokio::test]
async fn pods_are_given_their_service_account_and_its_pull_secrets() {
    let server = StandIn::start().await;
    let api = Api::new(&server);
    let webhook = TestWebhook::start(Reply::allow).await;
    configure(
        &server,
        "regbridge",
        vec![webhook.hook("pods.regbridge.dev", &["pods"])],
    );
    let pods = "/api/v1/namespaces/default/pods";
    let pod = |name: &str, spec: Value| {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "app", "image": "nginx:1.27"}]);
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
    };

    let (code, status) = api.post(pods, pod("early", json!({}))).await;
    assert_eq!(code, 403);
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(
        status["message"],
        "pods \"early\" is forbidden: error looking up service account default/default: serviceaccount \"default\" not found"
    );
    assert!(webhook.seen().is_empty(), "the plugin runs before webhooks");

    server
        .create(
            &Resource::SERVICE_ACCOUNTS,
            Some("default"),
            json!({"metadata": {"name": "default"}, "imagePullSecrets": [{"name": "regcred"}]}),
        )
        .expect("default sa");
    server
        .create(
            &Resource::SERVICE_ACCOUNTS,
            Some("default"),
            json!({"metadata": {"name": "builder"}}),
        )
        .expect("builder sa");

    let (code, created) = api.post(pods, pod("web", json!({}))).await;
    assert_eq!(code, 201, "{created}");
    let spec = &created["spec"];
    assert_eq!(spec["serviceAccountName"], "default");
    assert_eq!(spec["serviceAccount"], "default");
    assert_eq!(spec["imagePullSecrets"], json!([{"name": "regcred"}]));
    assert_eq!(
        webhook.reviews()[0]["request"]["object"]["spec"]["imagePullSecrets"],
        json!([{"name": "regcred"}]),
        "webhooks see the plugin's result"
    );

    let (code, own) = api
        .post(
            pods,
            pod("own", json!({"imagePullSecrets": [{"name": "mine"}]})),
        )
        .await;
    assert_eq!(code, 201);
    assert_eq!(own["spec"]["imagePullSecrets"], json!([{"name": "mine"}]));

    let (code, deprecated) = api
        .post(pods, pod("old-style", json!({"serviceAccount": "builder"})))
        .await;
    assert_eq!(code, 201);
    assert_eq!(deprecated["spec"]["serviceAccountName"], "builder");
    assert!(deprecated["spec"].get("imagePullSecrets").is_none());

    let (code, status) = api
        .post(pods, pod("lost", json!({"serviceAccountName": "missing"})))
        .await;
    assert_eq!(code, 403);
    assert_eq!(
        status["message"],
        "pods \"lost\" is forbidden: error looking up service account default/missing: serviceaccount \"missing\" not found"
    );
}
