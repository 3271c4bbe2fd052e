//! Admission decisions: what the mutating webhook answers for a
//! ServiceAccount or Pod, computed purely from the request and the cached
//! resources and namespace. The server in `webhook.rs` only feeds these.
//!
//! Every answer allows the request. When in doubt (caches not synced, the
//! namespace unknown, an object it cannot read) the answer leaves the object
//! unchanged: the controller's watch still catches up afterwards.

use std::borrow::Borrow;
use std::sync::Arc;

use json_patch::{Patch, PatchOperation};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde_json::Value;

use crate::api::crd::ClusterPullSecret;
use crate::api::labels::ADDED_ANNOTATION;
use crate::cache::index::{NamespaceView, ServiceAccountView};
use crate::cache::selection::Selection;
use crate::decide::sa_patch::{add_references, added_by_us, append_to_list, references_secret};

/// One `ClusterPullSecret` as admission reads it.
#[derive(Debug)]
pub struct Target {
    pub secret_name: String,
    pub selection: Arc<Selection>,
}

impl Target {
    /// `None` for a resource being deleted: it gets no new references.
    pub fn of(resource: &ClusterPullSecret, selection: Arc<Selection>) -> Option<Self> {
        if resource.metadata.deletion_timestamp.is_some() {
            return None;
        }
        Some(Self {
            secret_name: resource.secret_name(),
            selection,
        })
    }
}

/// The kind of object an admission was about, as the metrics label it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ServiceAccount,
    Pod,
    Other,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServiceAccount => "serviceaccount",
            Self::Pod => "pod",
            Self::Other => "other",
        }
    }

    pub fn of(req: &AdmissionRequest<DynamicObject>) -> Self {
        match (req.kind.group.as_str(), req.kind.kind.as_str()) {
            ("", "ServiceAccount") => Self::ServiceAccount,
            ("", "Pod") => Self::Pod,
            _ => Self::Other,
        }
    }
}

/// Why a request was let through without being looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The caches have not synced yet.
    NotSynced,
    /// Not a ServiceAccount CREATE/UPDATE or a Pod CREATE.
    NotHandled,
    /// The namespace is not in the cache.
    UnknownNamespace,
    /// The object is missing or unreadable.
    Unreadable,
}

#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Allowed with this JSON Patch.
    Patched(Patch),
    /// Looked at; nothing to add.
    Unchanged,
    /// Allowed without looking.
    Skipped(SkipReason),
}

impl Decision {
    /// The metrics' `result` label.
    pub fn result(&self) -> &'static str {
        match self {
            Self::Patched(_) => "patched",
            Self::Unchanged => "unchanged",
            Self::Skipped(_) => "skipped",
        }
    }
}

/// Secret names of the targets that select `namespace` and the
/// ServiceAccount `sa`, in target order, without duplicates.
fn wanted<'a, T: Borrow<Target>>(
    targets: &'a [T],
    namespace: &NamespaceView,
    sa: &str,
) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for t in targets.iter().map(Borrow::borrow) {
        if t.selection.selects_namespace(namespace)
            && t.selection.selects_service_account(sa)
            && !out.contains(&t.secret_name.as_str())
        {
            out.push(&t.secret_name);
        }
    }
    out
}

/// Names in a `[{name: ...}]` list; `None` when the field is absent (or not
/// a list, which the API server would reject anyway).
fn names(list: Option<&Value>) -> Option<Vec<String>> {
    let items = list?.as_array()?;
    Some(
        items
            .iter()
            .filter_map(|i| i.get("name").and_then(Value::as_str).map(String::from))
            .collect(),
    )
}

fn service_account_view(
    req: &AdmissionRequest<DynamicObject>,
    obj: &DynamicObject,
) -> ServiceAccountView {
    let annotations = obj.metadata.annotations.as_ref();
    ServiceAccountView {
        namespace: req.namespace.clone().unwrap_or_default(),
        name: obj
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| req.name.clone()),
        pull_secrets: names(obj.data.get("imagePullSecrets")),
        has_annotations: annotations.is_some(),
        added: annotations.and_then(|a| a.get(ADDED_ANNOTATION).cloned()),
    }
}

/// The decision for one request. `namespace` is the cached view of the
/// request's namespace; `synced` whether every cache the decision reads has
/// synced.
pub fn decide<T: Borrow<Target>>(
    req: &AdmissionRequest<DynamicObject>,
    targets: &[T],
    namespace: Option<&NamespaceView>,
    synced: bool,
) -> Decision {
    if !synced {
        return Decision::Skipped(SkipReason::NotSynced);
    }
    let kind = Kind::of(req);
    let handled = matches!(
        (kind, &req.operation),
        (Kind::ServiceAccount, Operation::Create | Operation::Update)
            | (Kind::Pod, Operation::Create)
    );
    if !handled || req.sub_resource.is_some() {
        return Decision::Skipped(SkipReason::NotHandled);
    }
    let Some(namespace) = namespace else {
        return Decision::Skipped(SkipReason::UnknownNamespace);
    };
    let Some(obj) = req.object.as_ref() else {
        return Decision::Skipped(SkipReason::Unreadable);
    };
    let ops = match kind {
        Kind::ServiceAccount => service_account_ops(req, obj, targets, namespace),
        Kind::Pod => pod_ops(obj, targets, namespace),
        Kind::Other => None,
    };
    match ops {
        Some(ops) if !ops.is_empty() => Decision::Patched(Patch(ops)),
        _ => Decision::Unchanged,
    }
}

fn service_account_ops<T: Borrow<Target>>(
    req: &AdmissionRequest<DynamicObject>,
    obj: &DynamicObject,
    targets: &[T],
    namespace: &NamespaceView,
) -> Option<Vec<PatchOperation>> {
    let sa = service_account_view(req, obj);
    if sa.name.is_empty() {
        return None;
    }
    let mut wanted = wanted(targets, namespace, &sa.name);
    if let Some(old) = req.old_object.as_ref() {
        let before = service_account_view(req, old);
        wanted.retain(|secret| !withdrawn(&before, &sa, secret));
    }
    add_references(&sa, &wanted)
}

/// Whether an UPDATE takes `secret` out of both the list and regbridge's
/// record of what it added. Only regbridge's own cleanup (a deleted or
/// deselected resource) does that: an apply that drops the reference leaves
/// the record alone. Putting it back would undo the cleanup whenever the
/// webhook's cache lags the controller's, or the configuration's
/// `matchConditions` do not recognise the controller (an older API server,
/// another identity).
fn withdrawn(before: &ServiceAccountView, after: &ServiceAccountView, secret: &str) -> bool {
    added_by_us(before).contains(&secret)
        && !added_by_us(after).contains(&secret)
        && !references_secret(after, secret)
}

fn pod_ops<T: Borrow<Target>>(
    obj: &DynamicObject,
    targets: &[T],
    namespace: &NamespaceView,
) -> Option<Vec<PatchOperation>> {
    let spec = obj.data.get("spec")?;
    // `serviceAccount` is the deprecated alias the API server still fills in.
    let sa = ["serviceAccountName", "serviceAccount"]
        .iter()
        .find_map(|k| {
            spec.get(*k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        })
        .unwrap_or("default");
    let present = names(spec.get("imagePullSecrets"));
    let missing: Vec<&str> = wanted(targets, namespace, sa)
        .into_iter()
        .filter(|w| !present.iter().flatten().any(|p| p == w))
        .collect();
    if missing.is_empty() {
        return None;
    }
    Some(append_to_list(
        &["spec", "imagePullSecrets"],
        present.is_some(),
        &missing,
    ))
}

/// The response for `req`: always allowed, with the patch when there is one.
pub fn respond(req: &AdmissionRequest<DynamicObject>, decision: &Decision) -> AdmissionResponse {
    let response = AdmissionResponse::from(req);
    match decision {
        Decision::Patched(patch) => match response.clone().with_patch(patch.clone()) {
            Ok(r) => r,
            // A patch of strings and lists always serializes; if it ever
            // does not, allow unchanged rather than block the cluster.
            Err(_) => response,
        },
        _ => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::crd::{ClusterPullSecretSpec, NamespaceSelector};
    use crate::fixtures::ns;
    use kube::core::admission::AdmissionReview;
    use serde_json::json;

    fn target(secret: &str, include: &[&str], sas: &[&str]) -> Target {
        let spec = ClusterPullSecretSpec {
            secret_name: Some(secret.into()),
            credentials: vec![],
            namespaces: NamespaceSelector {
                selector: None,
                include: include.iter().map(|s| s.to_string()).collect(),
                exclude: vec![],
            },
            service_accounts: sas.iter().map(|s| s.to_string()).collect(),
            refresh_before: None,
            verify: Default::default(),
        };
        Target {
            secret_name: secret.into(),
            selection: Arc::new(Selection::compile(&spec).unwrap()),
        }
    }

    fn review(kind: &str, resource: &str, operation: &str, object: Value) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": kind},
                "resource": {"group": "", "version": "v1", "resource": resource},
                "requestKind": {"group": "", "version": "v1", "kind": kind},
                "requestResource": {"group": "", "version": "v1", "resource": resource},
                "name": object["metadata"]["name"].as_str().unwrap_or(""),
                "namespace": "team-a",
                "operation": operation,
                "userInfo": {"username": "admin", "uid": "014fbff9a07c", "groups": ["system:authenticated"]},
                "object": object,
                "oldObject": null,
                "dryRun": false,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
            }
        })
    }

    fn sa_object(name: &str, pull_secrets: Option<&[&str]>) -> Value {
        let mut o = json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": "team-a"},
        });
        if let Some(p) = pull_secrets {
            o["imagePullSecrets"] = p.iter().map(|n| json!({"name": n})).collect();
        }
        o
    }

    fn pod_object(sa: Option<&str>, pull_secrets: Option<&[&str]>) -> Value {
        let mut o = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "team-a"},
            "spec": {"containers": [{"name": "web", "image": "registry.example/web:1"}]},
        });
        if let Some(sa) = sa {
            o["spec"]["serviceAccountName"] = json!(sa);
        }
        if let Some(p) = pull_secrets {
            o["spec"]["imagePullSecrets"] = p.iter().map(|n| json!({"name": n})).collect();
        }
        o
    }

    /// Round trip: the review as the API server sends it, the decision, and
    /// the response review as the server would serialize it, parsed back.
    /// Returns the decision, the response JSON and the patched object.
    fn admit(
        review_json: &Value,
        targets: &[Target],
        namespace: Option<&NamespaceView>,
        synced: bool,
    ) -> (Decision, Value, Value) {
        let review: AdmissionReview<DynamicObject> =
            serde_json::from_value(review_json.clone()).unwrap();
        let req: AdmissionRequest<DynamicObject> = review.try_into().unwrap();
        let decision = decide(&req, targets, namespace, synced);
        let out = serde_json::to_value(respond(&req, &decision).into_review()).unwrap();
        let mut object = review_json["request"]["object"].clone();
        // kube serializes the patch bytes as a JSON array of numbers, which
        // the API server's decoder accepts for a []byte as well as base64.
        if let Some(p) = out["response"]["patch"].as_array() {
            let bytes: Vec<u8> = p.iter().map(|b| b.as_u64().unwrap() as u8).collect();
            let patch: Patch = serde_json::from_slice(&bytes).unwrap();
            json_patch::patch(&mut object, &patch).expect("the patch applies");
        }
        (decision, out, object)
    }

    /// [`admit`] in the cached, synced namespace `team-a`.
    fn admit_in_team_a(review_json: &Value, targets: &[Target]) -> (Decision, Value, Value) {
        admit(review_json, targets, Some(&team_a()), true)
    }

    fn sa_review(operation: &str, object: Value) -> Value {
        review("ServiceAccount", "serviceaccounts", operation, object)
    }

    fn list(v: &Value) -> Vec<&str> {
        v.as_array()
            .map(|a| a.iter().map(|e| e["name"].as_str().unwrap()).collect())
            .unwrap_or_default()
    }

    fn team_a() -> NamespaceView {
        ns("team-a").build()
    }

    #[test]
    fn response_echoes_the_uid_and_allows() {
        let r = sa_review("CREATE", sa_object("x", None));
        let (_, out, _) = admit(&r, &[], Some(&team_a()), true);
        assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!(
            out["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
        assert_eq!(out["response"]["allowed"], true);
    }

    #[test]
    fn new_service_account_without_a_list_gets_the_whole_list_and_the_annotation() {
        let r = sa_review("CREATE", sa_object("default", None));
        let (d, out, obj) = admit_in_team_a(&r, &[target("regcred", &[], &["default"])]);
        assert_eq!(d.result(), "patched");
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        assert_eq!(list(&obj["imagePullSecrets"]), ["regcred"]);
        assert_eq!(obj["metadata"]["annotations"][ADDED_ANNOTATION], "regcred");
        let Decision::Patched(p) = d else { panic!() };
        let p = serde_json::to_value(p).unwrap();
        assert_eq!(p[0]["path"], "/imagePullSecrets");
    }

    #[test]
    fn service_account_update_appends_after_foreign_entries_in_order() {
        let r = sa_review(
            "UPDATE",
            sa_object("default", Some(&["z-first", "a-second"])),
        );
        let targets = [
            target("regcred", &[], &["default"]),
            target("other", &[], &["default"]),
        ];
        let (d, _, obj) = admit(&r, &targets, Some(&team_a()), true);
        let Decision::Patched(p) = d else { panic!() };
        let p = serde_json::to_value(p).unwrap();
        assert_eq!(p[0]["path"], "/imagePullSecrets/-");
        assert_eq!(
            list(&obj["imagePullSecrets"]),
            ["z-first", "a-second", "regcred", "other"]
        );
        assert_eq!(
            obj["metadata"]["annotations"][ADDED_ANNOTATION],
            "regcred,other"
        );
    }

    #[test]
    fn an_apply_that_dropped_the_reference_gets_it_back_without_touching_the_record() {
        let mut o = sa_object("default", Some(&["theirs"]));
        o["metadata"]["annotations"] = json!({ ADDED_ANNOTATION: "regcred" });
        let r = sa_review("UPDATE", o);
        let (d, _, obj) = admit_in_team_a(&r, &[target("regcred", &[], &["default"])]);
        assert_eq!(d.result(), "patched");
        assert_eq!(list(&obj["imagePullSecrets"]), ["theirs", "regcred"]);
        assert_eq!(obj["metadata"]["annotations"][ADDED_ANNOTATION], "regcred");
    }

    #[test]
    fn regbridge_taking_back_its_own_reference_is_left_alone() {
        let mut before = sa_object("default", Some(&["theirs", "regcred"]));
        before["metadata"]["annotations"] = json!({ ADDED_ANNOTATION: "regcred" });
        let after = sa_object("default", Some(&["theirs"]));
        let mut r = sa_review("UPDATE", after);
        r["request"]["oldObject"] = before;
        let targets = [target("regcred", &[], &["default"])];
        let (d, _, obj) = admit(&r, &targets, Some(&team_a()), true);
        assert_eq!(d, Decision::Unchanged);
        assert_eq!(list(&obj["imagePullSecrets"]), ["theirs"]);

        // The same UPDATE keeping the record is an apply that dropped the
        // reference: it is put back.
        r["request"]["object"]["metadata"]["annotations"] = json!({ ADDED_ANNOTATION: "regcred" });
        let (d, _, obj) = admit(&r, &targets, Some(&team_a()), true);
        assert_eq!(d.result(), "patched");
        assert_eq!(list(&obj["imagePullSecrets"]), ["theirs", "regcred"]);
    }

    #[test]
    fn never_a_duplicate() {
        let r = sa_review("UPDATE", sa_object("default", Some(&["regcred"])));
        // Two resources with the same secretName, one already listed.
        let targets = [
            target("regcred", &[], &["default"]),
            target("regcred", &["team-*"], &["*"]),
        ];
        let (d, out, _) = admit(&r, &targets, Some(&team_a()), true);
        assert_eq!(d, Decision::Unchanged);
        assert!(out["response"].get("patch").is_none());

        let r = review("Pod", "pods", "CREATE", pod_object(None, None));
        let (_, _, obj) = admit(&r, &targets, Some(&team_a()), true);
        assert_eq!(list(&obj["spec"]["imagePullSecrets"]), ["regcred"]);
    }

    #[test]
    fn pod_of_a_selected_default_service_account_gets_the_whole_list() {
        let r = review("Pod", "pods", "CREATE", pod_object(None, None));
        let (d, _, obj) = admit_in_team_a(&r, &[target("regcred", &[], &["default"])]);
        let Decision::Patched(p) = d else { panic!() };
        let p = serde_json::to_value(p).unwrap();
        assert_eq!(p[0]["path"], "/spec/imagePullSecrets");
        assert_eq!(list(&obj["spec"]["imagePullSecrets"]), ["regcred"]);
    }

    #[test]
    fn pod_with_its_own_list_gets_the_managed_secret_appended() {
        let r = review(
            "Pod",
            "pods",
            "CREATE",
            pod_object(Some("builder"), Some(&["own", "also-own"])),
        );
        let (_, _, obj) = admit_in_team_a(&r, &[target("regcred", &[], &["build*"])]);
        assert_eq!(
            list(&obj["spec"]["imagePullSecrets"]),
            ["own", "also-own", "regcred"]
        );
    }

    #[test]
    fn pod_naming_its_service_account_by_the_deprecated_field_is_matched() {
        let mut pod = pod_object(None, None);
        pod["spec"]["serviceAccount"] = json!("builder");
        let r = review("Pod", "pods", "CREATE", pod);
        let targets = [target("regcred", &[], &["builder"])];
        let (d, _, _) = admit(&r, &targets, Some(&team_a()), true);
        assert_eq!(d.result(), "patched");
    }

    #[test]
    fn pod_of_an_unselected_service_account_is_unchanged() {
        let r = review("Pod", "pods", "CREATE", pod_object(Some("builder"), None));
        let (d, _, _) = admit_in_team_a(&r, &[target("regcred", &[], &["default"])]);
        assert_eq!(d, Decision::Unchanged);
    }

    #[test]
    fn unselected_namespace_is_unchanged() {
        let r = sa_review("CREATE", sa_object("default", None));
        let (d, out, _) = admit_in_team_a(&r, &[target("regcred", &["prod-*"], &["default"])]);
        assert_eq!(d, Decision::Unchanged);
        assert!(out["response"].get("patch").is_none());
    }

    #[test]
    fn unselected_service_account_is_unchanged() {
        let r = sa_review("CREATE", sa_object("builder", None));
        let (d, _, _) = admit_in_team_a(&r, &[target("regcred", &[], &["default"])]);
        assert_eq!(d, Decision::Unchanged);
    }

    #[test]
    fn opted_out_and_terminating_namespaces_are_unchanged() {
        let targets = [target("regcred", &[], &["default"])];
        let r = sa_review("CREATE", sa_object("default", None));
        let opted_out = ns("team-a")
            .annotation(crate::api::labels::EXCLUDE_ANNOTATION, "true")
            .build();
        assert_eq!(
            admit(&r, &targets, Some(&opted_out), true).0,
            Decision::Unchanged
        );
        let terminating = ns("team-a").terminating().build();
        assert_eq!(
            admit(&r, &targets, Some(&terminating), true).0,
            Decision::Unchanged
        );
    }

    #[test]
    fn before_the_caches_sync_everything_is_allowed_unchanged() {
        let targets = [target("regcred", &[], &["default"])];
        let r = sa_review("CREATE", sa_object("default", None));
        let (d, out, _) = admit(&r, &targets, Some(&team_a()), false);
        assert_eq!(d, Decision::Skipped(SkipReason::NotSynced));
        assert_eq!(out["response"]["allowed"], true);
        assert!(out["response"].get("patch").is_none());
    }

    #[test]
    fn unknown_namespace_and_unhandled_operations_are_skipped() {
        let targets = [target("regcred", &[], &["default"])];
        let r = sa_review("CREATE", sa_object("default", None));
        assert_eq!(
            admit(&r, &targets, None, true).0,
            Decision::Skipped(SkipReason::UnknownNamespace)
        );
        let r = review("Pod", "pods", "UPDATE", pod_object(None, None));
        assert_eq!(
            admit(&r, &targets, Some(&team_a()), true).0,
            Decision::Skipped(SkipReason::NotHandled)
        );
    }

    #[test]
    fn a_resource_being_deleted_adds_nothing() {
        let mut cps = ClusterPullSecret::new(
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
        let selection = Arc::new(Selection::compile(&cps.spec).unwrap());
        assert_eq!(
            Target::of(&cps, selection.clone()).unwrap().secret_name,
            "regcred"
        );
        cps.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        assert!(Target::of(&cps, selection).is_none());
    }
}
