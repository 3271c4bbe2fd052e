//! A stateful in-process stand-in for the Kubernetes API server, for regbridge's
//! integration tests. It serves plain HTTP on `127.0.0.1:<random port>` and keeps
//! every object as untyped JSON with a global resourceVersion, like etcd.
//!
//! ```no_run
//! # async fn demo() {
//! use regbridge_standin::{Fault, Resource, StandIn};
//! let server = StandIn::start().await;
//! // In the controller's tests (kube is not a dependency of this crate):
//! // let config = kube::Config::new(server.url().parse().unwrap());
//! // let client = kube::Client::try_from(config).unwrap();
//! server.inject_fault(Fault::new("/secrets", 500).times(1));
//! let secret = server.get(&Resource::SECRETS, Some("default"), "pull");
//! let writes = server.requests().iter().filter(|r| r.method != "GET").count();
//! # let _ = (secret, writes);
//! # }
//! ```
//!
//! Served: core/v1 namespaces, secrets, serviceaccounts (+ `/token`), configmaps,
//! pods (stored as given), events; events.k8s.io/v1 events; coordination.k8s.io/v1
//! leases; admissionregistration.k8s.io/v1 mutatingwebhookconfigurations (with the
//! server's defaults and validation); apiextensions.k8s.io/v1
//! customresourcedefinitions and the custom resources of every CRD created (scope,
//! status subresource, generation, structural schema).
//! Lists and watches support label and field selectors, paging, resourceVersion
//! semantics, bookmarks, streaming lists and metadata-only (`PartialObjectMetadata`)
//! answers; writes support PUT, JSON/merge/strategic patches and server-side apply
//! with managedFields conflicts. Creates and updates of namespaced objects go
//! through mutating admission as on a real server: the built-in ServiceAccount
//! plugin for pods (the `default` ServiceAccount, a 403 when it is missing, its
//! `imagePullSecrets`), then every matching webhook of the
//! MutatingWebhookConfigurations, called over HTTPS with an AdmissionReview (what is
//! left out is listed in `admission.rs`). The behaviour is checked against a corpus
//! recorded from kube-apiserver 1.36 by `tests/conformance.rs`.
//!
//! Test hooks: [`StandIn::inject_fault`], [`StandIn::expire_watches`],
//! [`StandIn::compact`], [`StandIn::terminate_namespace`], the request log
//! ([`StandIn::requests`]), the webhook call log ([`StandIn::admission_calls`]) and
//! direct state access ([`StandIn::get`], [`StandIn::list`], [`StandIn::create`],
//! [`StandIn::update`], [`StandIn::delete`]), whose writes skip admission as a write
//! straight to etcd would.

mod admission;
mod admission_review;
mod fields;
mod http;
mod ops;
mod patch;
mod selector;
mod service_account_admission;
mod status;
mod store;
mod validate;
mod webhook_client;
mod webhook_config;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub use axum::http::Method;
use serde_json::Value;

pub use crate::admission::{AdmissionCall, AdmissionOutcome};
use crate::http::Shared;
use crate::store::State;

/// A resource type by group, version and plural name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub group: Cow<'static, str>,
    pub version: Cow<'static, str>,
    pub plural: Cow<'static, str>,
}

impl Resource {
    pub const NAMESPACES: Resource = Resource::core("namespaces");
    pub const SECRETS: Resource = Resource::core("secrets");
    pub const SERVICE_ACCOUNTS: Resource = Resource::core("serviceaccounts");
    pub const CONFIG_MAPS: Resource = Resource::core("configmaps");
    pub const PODS: Resource = Resource::core("pods");
    pub const EVENTS: Resource = Resource::core("events");
    pub const EVENTS_V1: Resource = Resource::borrowed("events.k8s.io", "v1", "events");
    pub const LEASES: Resource = Resource::borrowed("coordination.k8s.io", "v1", "leases");
    pub const CRDS: Resource =
        Resource::borrowed("apiextensions.k8s.io", "v1", "customresourcedefinitions");
    pub const MUTATING_WEBHOOK_CONFIGURATIONS: Resource = Resource::borrowed(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
    );
    pub const CLUSTER_PULL_SECRETS: Resource =
        Resource::borrowed("regbridge.dev", "v1alpha1", "clusterpullsecrets");

    const fn core(plural: &'static str) -> Self {
        Resource::borrowed("", "v1", plural)
    }
    const fn borrowed(group: &'static str, version: &'static str, plural: &'static str) -> Self {
        Resource {
            group: Cow::Borrowed(group),
            version: Cow::Borrowed(version),
            plural: Cow::Borrowed(plural),
        }
    }
    /// Any resource, e.g. a custom one.
    pub fn new(
        group: impl Into<String>,
        version: impl Into<String>,
        plural: impl Into<String>,
    ) -> Self {
        Resource {
            group: Cow::Owned(group.into()),
            version: Cow::Owned(version.into()),
            plural: Cow::Owned(plural.into()),
        }
    }
}

/// One request as the stand-in received it.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    /// The body as JSON (a JSON string when it was not JSON).
    pub body: Option<Value>,
}

impl RequestRecord {
    /// Is this a write (anything but GET)?
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }
}

/// The next `times` requests whose method and path match fail with `status`,
/// or, with `delay`, are answered normally but that much later.
#[derive(Debug, Clone)]
pub struct Fault {
    pub method: Option<Method>,
    pub path_contains: String,
    pub status: u16,
    pub reason: String,
    pub times: usize,
    pub delay: Option<std::time::Duration>,
}

impl Fault {
    /// A fault for any method on paths containing `path_contains`, once, with the
    /// usual reason for `status`.
    pub fn new(path_contains: impl Into<String>, status: u16) -> Self {
        let reason = match status {
            409 => "Conflict",
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            403 => "Forbidden",
            404 => "NotFound",
            _ => "InternalError",
        };
        Fault {
            method: None,
            path_contains: path_contains.into(),
            status,
            reason: reason.into(),
            times: 1,
            delay: None,
        }
    }
    /// Requests on paths containing `path_contains` answered `by` late,
    /// once: a list that takes its time, as on a loaded API server.
    pub fn slow(path_contains: impl Into<String>, by: std::time::Duration) -> Self {
        Fault {
            delay: Some(by),
            ..Fault::new(path_contains, 200)
        }
    }
    pub fn method(mut self, m: Method) -> Self {
        self.method = Some(m);
        self
    }
    pub fn times(mut self, n: usize) -> Self {
        self.times = n;
        self
    }
    pub fn reason(mut self, r: impl Into<String>) -> Self {
        self.reason = r.into();
        self
    }
}

/// An error from the direct (non-HTTP) API: the HTTP code and Status body a client
/// would have received.
#[derive(Debug, Clone)]
pub struct DirectError {
    pub code: u16,
    pub status: Value,
}

impl std::fmt::Display for DirectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            self.code,
            self.status
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
        )
    }
}

impl std::error::Error for DirectError {}

impl From<status::ApiError> for DirectError {
    fn from(e: status::ApiError) -> Self {
        DirectError {
            code: e.code,
            status: e.body,
        }
    }
}

/// A running stand-in. Dropping it stops the server.
pub struct StandIn {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandIn {
    /// Binds `127.0.0.1:0` and serves, seeded with the four namespaces a real
    /// server starts with.
    pub async fn start() -> StandIn {
        let (tick, _) = tokio::sync::watch::channel(0u64);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            tick,
            webhook_clients: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let app = http::router(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        StandIn { shared, addr, task }
    }

    /// `http://127.0.0.1:PORT`, for `kube::Config::new(url.parse()?)`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn type_of(&self, r: &Resource) -> Result<store::TypeInfo, DirectError> {
        self.shared
            .lock()
            .find_type(&r.group, &r.version, &r.plural)
            .ok_or_else(|| status::ApiError::resource_not_found().into())
    }

    /// The stored object, in the form its API shows it.
    pub fn get(&self, r: &Resource, ns: Option<&str>, name: &str) -> Option<Value> {
        let ti = self.type_of(r).ok()?;
        let st = self.shared.lock();
        st.get(
            &ti.storage(),
            &(ns.unwrap_or_default().to_string(), name.to_string()),
        )
        .map(|o| http::present_for(&ti, o))
    }

    /// All objects of a type (in one namespace, or all), sorted by namespace and name.
    pub fn list(&self, r: &Resource, ns: Option<&str>) -> Vec<Value> {
        let Ok(ti) = self.type_of(r) else {
            return Vec::new();
        };
        let st = self.shared.lock();
        st.snapshot(&ti.storage(), None)
            .iter()
            .filter(|o| {
                ns.is_none_or(|n| {
                    o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(n)
                })
            })
            .map(|o| http::present_for(&ti, o))
            .collect()
    }

    /// Creates an object as a POST would (validation, defaults, watch event).
    pub fn create(&self, r: &Resource, ns: Option<&str>, obj: Value) -> Result<Value, DirectError> {
        let ti = self.type_of(r)?;
        let o = ops::WriteOpts {
            manager: "standin-test".into(),
            events_api: ti.group == "events.k8s.io",
            ..Default::default()
        };
        let (decoded, _) = ops::decode_body(&ti, &obj, &o)?;
        let out = ops::create(&mut self.shared.lock(), &ti, ns, decoded, &o)?;
        self.shared.notify();
        Ok(http::present_for(&ti, &out))
    }

    /// Replaces an object as an unconditional PUT would (no-op writes keep the RV).
    pub fn update(&self, r: &Resource, ns: Option<&str>, obj: Value) -> Result<Value, DirectError> {
        let ti = self.type_of(r)?;
        let o = ops::WriteOpts {
            manager: "standin-test".into(),
            events_api: ti.group == "events.k8s.io",
            ..Default::default()
        };
        let (decoded, _) = ops::decode_body(&ti, &obj, &o)?;
        let name = decoded
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut st = self.shared.lock();
        let old = st
            .get(
                &ti.storage(),
                &(ns.unwrap_or_default().to_string(), name.clone()),
            )
            .cloned()
            .ok_or_else(|| status::ApiError::not_found(&ti.plural, &ti.group, &name))?;
        let out = ops::update(&mut st, &ti, &old, decoded, &o, false)?;
        drop(st);
        self.shared.notify();
        Ok(http::present_for(&ti, &out))
    }

    /// Creates the object, or updates it when it exists.
    pub fn apply_direct(
        &self,
        r: &Resource,
        ns: Option<&str>,
        obj: Value,
    ) -> Result<Value, DirectError> {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if self.get(r, ns, name).is_some() {
            self.update(r, ns, obj)
        } else {
            self.create(r, ns, obj)
        }
    }

    /// Deletes as a DELETE would (finalizers honoured); returns the answer body.
    pub fn delete(&self, r: &Resource, ns: Option<&str>, name: &str) -> Result<Value, DirectError> {
        let ti = self.type_of(r)?;
        let out = ops::delete(
            &mut self.shared.lock(),
            &ti,
            &(ns.unwrap_or_default().to_string(), name.to_string()),
            &ops::DeleteOpts::default(),
        )?;
        self.shared.notify();
        Ok(http::present_for(&ti, &out))
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// The requests that were writes (not GET).
    pub fn writes(&self) -> Vec<RequestRecord> {
        self.requests()
            .into_iter()
            .filter(RequestRecord::is_write)
            .collect()
    }

    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    /// Every call made to a mutating webhook so far, in order.
    pub fn admission_calls(&self) -> Vec<AdmissionCall> {
        self.shared.lock().admission_calls.clone()
    }

    /// Makes matching requests fail with a proper Status body.
    pub fn inject_fault(&self, fault: Fault) {
        self.shared.lock().faults.push(fault);
    }

    /// Every open watch gets an ERROR 410 Expired and closes; later watches and
    /// `Exact` lists from an RV older than now answer 410 too.
    pub fn expire_watches(&self) {
        {
            let mut st = self.shared.lock();
            st.watch_floor = st.rv;
            st.watch_epoch += 1;
        }
        self.shared.notify();
    }

    /// Marks revisions older than now as compacted (like an etcd compaction):
    /// continue tokens and `Exact` lists outside the watch cache answer 410.
    pub fn compact(&self) {
        let mut st = self.shared.lock();
        st.compacted = st.rv;
    }

    /// Sets deletionTimestamp and phase Terminating, as deleting a namespace does
    /// on a server without a namespace controller.
    pub fn terminate_namespace(&self, name: &str) -> Result<Value, DirectError> {
        self.delete(&Resource::NAMESPACES, None, name)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn secret(name: &str, labels: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "labels": labels}, "type": "Opaque"})
    }

    #[tokio::test]
    async fn no_op_update_keeps_resource_version() {
        let s = StandIn::start().await;
        let created = s
            .create(
                &Resource::SECRETS,
                Some("default"),
                secret("a", json!({"x": "1"})),
            )
            .expect("create");
        let again = s
            .update(&Resource::SECRETS, Some("default"), created.clone())
            .expect("update");
        assert_eq!(
            created["metadata"]["resourceVersion"],
            again["metadata"]["resourceVersion"]
        );
    }

    #[tokio::test]
    async fn create_in_terminating_namespace_is_forbidden() {
        let s = StandIn::start().await;
        s.create(
            &Resource::NAMESPACES,
            None,
            json!({"metadata": {"name": "doomed"}}),
        )
        .expect("ns");
        s.terminate_namespace("doomed").expect("terminate");
        let err = s
            .create(&Resource::SECRETS, Some("doomed"), secret("a", json!({})))
            .expect_err("forbidden");
        assert_eq!(err.code, 403);
        assert_eq!(
            err.status["details"]["causes"][0]["reason"],
            "NamespaceTerminating"
        );
    }

    #[tokio::test]
    async fn removing_last_finalizer_deletes_the_object() {
        let s = StandIn::start().await;
        let mut obj = secret("f", json!({}));
        obj["metadata"]["finalizers"] = json!(["regbridge.dev/cleanup"]);
        s.create(&Resource::SECRETS, Some("default"), obj)
            .expect("create");
        let deleting = s
            .delete(&Resource::SECRETS, Some("default"), "f")
            .expect("delete");
        assert!(deleting["metadata"]["deletionTimestamp"].is_string());
        let mut current = s
            .get(&Resource::SECRETS, Some("default"), "f")
            .expect("still there");
        current["metadata"]["finalizers"] = json!([]);
        s.update(&Resource::SECRETS, Some("default"), current)
            .expect("update");
        assert!(s.get(&Resource::SECRETS, Some("default"), "f").is_none());
    }

    #[tokio::test]
    async fn webhook_configuration_gets_server_defaults_and_validation() {
        let s = StandIn::start().await;
        let mwc = &Resource::MUTATING_WEBHOOK_CONFIGURATIONS;
        let hook = json!({"name": "pods.regbridge.dev", "sideEffects": "None",
            "admissionReviewVersions": ["v1"], "clientConfig": {"url": "https://127.0.0.1:9443/mutate"},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}]});
        let created = s
            .create(
                mwc,
                None,
                json!({"metadata": {"name": "regbridge"}, "webhooks": [hook]}),
            )
            .expect("create");
        let h = &created["webhooks"][0];
        assert_eq!(h["failurePolicy"], "Fail");
        assert_eq!(h["timeoutSeconds"], 10);
        assert_eq!(h["matchPolicy"], "Equivalent");
        assert_eq!(h["namespaceSelector"], json!({}));
        assert_eq!(h["objectSelector"], json!({}));
        assert_eq!(h["reinvocationPolicy"], "Never");
        assert_eq!(h["rules"][0]["scope"], "*");

        let mut bad = hook.clone();
        bad["sideEffects"] = Value::Null;
        bad["clientConfig"] = json!({"url": "http://127.0.0.1:9443/mutate"});
        bad["namespaceSelector"] = json!({"matchExpressions": [{"key": "a", "operator": "In"}]});
        let err = s
            .create(
                mwc,
                None,
                json!({"metadata": {"name": "bad"}, "webhooks": [bad]}),
            )
            .expect_err("invalid");
        assert_eq!(err.code, 422);
        let fields: Vec<&str> = err.status["details"]["causes"]
            .as_array()
            .expect("causes")
            .iter()
            .filter_map(|c| c["field"].as_str())
            .collect();
        assert_eq!(
            fields,
            [
                "webhooks[0].sideEffects",
                "webhooks[0].namespaceSelector.matchExpressions[0].values",
                "webhooks[0].clientConfig.url"
            ]
        );
        let typed = s
            .create(
                mwc,
                None,
                json!({"metadata": {"name": "typed"}, "webhooks": [{"timeoutSeconds": "ten"}]}),
            )
            .expect_err("wrong type");
        assert_eq!(typed.code, 400);
    }

    #[test]
    fn label_selector_notin_matches_missing_key() {
        let sel = selector::LabelSelector::parse("env notin (prod)").expect("parse");
        assert!(sel.matches(&json!({"metadata": {}})));
        assert!(!sel.matches(&json!({"metadata": {"labels": {"env": "prod"}}})));
        assert!(selector::LabelSelector::parse("env in (prod").is_err());
    }

    #[test]
    fn json_patch_test_null_succeeds_on_absent_field() {
        let doc = json!({"metadata": {}});
        let p = json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                       {"op": "add", "path": "/metadata/finalizers", "value": ["x"]}]);
        let out = patch::json_patch(&doc, &p).expect("patch");
        assert_eq!(out["metadata"]["finalizers"], json!(["x"]));
        let stale = json!([{"op": "add", "path": "/imagePullSecrets/-", "value": {"name": "a"}}]);
        assert_eq!(patch::json_patch(&doc, &stale).expect_err("422").code, 422);
    }

    #[test]
    fn apply_conflicts_on_atomic_list_owned_by_another_manager() {
        let base =
            json!({"kind": "ServiceAccount", "apiVersion": "v1", "metadata": {"name": "sa"}});
        let a = fields::apply(
            &base,
            &json!({"metadata": {}, "imagePullSecrets": [{"name": "a"}]}),
            "rec-a",
            false,
            "v1",
            "",
            "t",
        )
        .expect("first apply");
        let conflict = fields::apply(
            &a,
            &json!({"metadata": {}, "imagePullSecrets": [{"name": "b"}]}),
            "rec-b",
            false,
            "v1",
            "",
            "t",
        )
        .expect_err("conflict");
        assert_eq!(fields::render(&conflict[0].path), ".imagePullSecrets");
        let forced = fields::apply(
            &a,
            &json!({"metadata": {}, "imagePullSecrets": [{"name": "b"}]}),
            "rec-b",
            true,
            "v1",
            "",
            "t",
        )
        .expect("force");
        assert_eq!(forced["imagePullSecrets"], json!([{"name": "b"}]));
    }
}
