//! Mutating admission: what a create or update passes through between decoding
//! (with patch application) and validation, in kube-apiserver's order: namespace
//! lifecycle, the built-in ServiceAccount plugin, then the webhooks of every
//! MutatingWebhookConfiguration, by configuration name and then as listed. The
//! dispatch follows the real `mutating/dispatcher.go`: call failures (transport,
//! timeout, non-2xx, an answer that is not believed) obey `failurePolicy`; a denial
//! is returned whatever the policy; a patch that does not apply fails the write with
//! 500 even under `Ignore`, since it is not a call failure.
//!
//! Deliberately narrower than a real server:
//! - only namespaced objects, and not their status subresources, are admitted;
//! - `matchConditions` are CEL, which the stand-in does not evaluate: they count as
//!   true;
//! - `matchPolicy: Equivalent` matches like `Exact`: a rule naming only another
//!   version of the resource (a CRD's other served version, events.k8s.io Events
//!   for core ones) does not match, where a real server would convert and call;
//! - `reinvocationPolicy: IfNeeded` is not acted on: each webhook is called once;
//! - dry runs reach every matching webhook, with `dryRun: true`: v1 admits only
//!   `sideEffects` None and NoneOnDryRun, so the real server's refusal of a dry run
//!   for a webhook with side effects cannot arise;
//! - a `clientConfig.service` cannot be reached, so calling it is a call failure;
//! - warnings and audit annotations in answers are dropped;
//! - the direct test API ([`crate::StandIn::create`] and friends) skips admission,
//!   as a write straight to etcd would.

use serde_json::Value;

use crate::Resource;
use crate::admission_review::{self, Verdict};
use crate::http::{Shared, present_for};
use crate::ops::{self, WriteOpts};
use crate::patch;
use crate::service_account_admission;
use crate::status::{ApiError, qualified};
use crate::store::TypeInfo;
use crate::webhook_config::{self, Webhook};

/// The admission operations the stand-in calls webhooks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
        }
    }
}

/// One write as admission sees it.
pub struct Attributes<'a> {
    pub ti: &'a TypeInfo,
    pub operation: Operation,
    /// Empty on a CREATE with `generateName`: the name is generated afterwards.
    pub name: &'a str,
    pub namespace: &'a str,
    /// A subresource in the URL (`status`): not admitted here.
    pub subresource: Option<&'a str>,
    /// The stored object an UPDATE replaces.
    pub old: Option<&'a Value>,
    pub dry_run: bool,
    /// The request's `CreateOptions`, `UpdateOptions` or `PatchOptions`.
    pub options: Value,
}

/// One call the stand-in made to a mutating webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionCall {
    pub configuration: String,
    pub webhook: String,
    /// `CREATE` or `UPDATE`.
    pub operation: String,
    pub resource: Resource,
    pub namespace: String,
    /// Empty on a CREATE with `generateName`.
    pub name: String,
    pub dry_run: bool,
    pub outcome: AdmissionOutcome,
}

/// What came of one webhook call.
#[derive(Debug, Clone, PartialEq)]
pub enum AdmissionOutcome {
    /// Allowed, and its JSON Patch changed the object.
    Patched,
    /// Allowed without a change.
    Unchanged,
    /// The call failed and `failurePolicy: Ignore` let the write through; the
    /// message is the one a `Fail` policy would have answered with.
    IgnoredFailure(String),
    /// `allowed: false`: the write was refused with this message.
    Rejected(String),
    /// The write failed with 500 and this message: a call failure under
    /// `failurePolicy: Fail`, or a patch that did not apply.
    Failed(String),
}

/// Runs mutating admission on `obj` (stored form) and returns what goes on to
/// validation and storage. It holds the state lock only between webhook calls.
pub async fn admit(sh: &Shared, a: &Attributes<'_>, obj: Value) -> Result<Value, ApiError> {
    if !a.ti.namespaced || a.subresource.is_some() {
        return Ok(obj);
    }
    let (mut obj, hooks, namespace) = {
        let st = sh.lock();
        if a.operation == Operation::Create {
            ops::check_namespace(&st, a.ti, a.namespace, a.name)?;
        }
        let obj = service_account_admission::admit(&st, a, obj)?;
        let storage = qualified(
            "mutatingwebhookconfigurations",
            "admissionregistration.k8s.io",
        );
        let hooks = webhook_config::webhooks(&st.snapshot(&storage, None));
        let namespace = st
            .get("namespaces", &(String::new(), a.namespace.to_string()))
            .cloned()
            .unwrap_or_default();
        (obj, hooks, namespace)
    };
    for hook in hooks {
        let called = hook.covers(a.operation.as_str(), a.ti)
            && hook.selects_namespace(&namespace)
            && hook.selects_object(&obj, a.old);
        if !called {
            continue;
        }
        obj = call(sh, &hook, a, obj).await?;
    }
    Ok(obj)
}

/// Calls one webhook and applies its answer to `obj`.
async fn call(
    sh: &Shared,
    hook: &Webhook,
    a: &Attributes<'_>,
    obj: Value,
) -> Result<Value, ApiError> {
    let uid = sh.lock().uid();
    let view = present_for(a.ti, &obj);
    let old = a.old.map(|o| present_for(a.ti, o));
    let review = admission_review::request(&uid, a, &view, old.as_ref(), &hook.review_version);
    let answer = match sh.webhook_clients.post(hook, &review).await {
        Ok(body) => {
            admission_review::verdict(&uid, &hook.review_version, &body).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    let (outcome, result) = match answer {
        Err(reason) => {
            let msg = format!("failed calling webhook \"{}\": {reason}", hook.name);
            if hook.ignore_failures {
                (AdmissionOutcome::IgnoredFailure(msg), Ok(obj))
            } else {
                let e = ApiError::internal_error(&msg);
                (AdmissionOutcome::Failed(message(&e)), Err(e))
            }
        }
        Ok(Verdict::Denied(status)) => {
            let e = denial(&hook.name, status.unwrap_or_default());
            (AdmissionOutcome::Rejected(message(&e)), Err(e))
        }
        Ok(Verdict::Allowed(ops)) if ops.is_empty() => (AdmissionOutcome::Unchanged, Ok(obj)),
        Ok(Verdict::Allowed(ops)) => match apply(a.ti, &view, &ops) {
            Ok(patched) if patched == obj => (AdmissionOutcome::Unchanged, Ok(obj)),
            Ok(patched) => (AdmissionOutcome::Patched, Ok(patched)),
            Err(e) => (AdmissionOutcome::Failed(message(&e)), Err(e)),
        },
    };
    sh.lock().admission_calls.push(AdmissionCall {
        configuration: hook.configuration.clone(),
        webhook: hook.name.clone(),
        operation: a.operation.as_str().into(),
        resource: Resource::new(&a.ti.group, &a.ti.version, &a.ti.plural),
        namespace: a.namespace.into(),
        name: a.name.into(),
        dry_run: a.dry_run,
        outcome,
    });
    result
}

/// The webhook's patch applied to the object as the API shows it, back in stored
/// form; any failure is an internal error, whatever the failure policy.
fn apply(ti: &TypeInfo, view: &Value, ops: &[Value]) -> Result<Value, ApiError> {
    let patched = patch::apply_operations(view, ops).map_err(|e| ApiError::internal_error(&e))?;
    let o = WriteOpts {
        events_api: ti.group == "events.k8s.io",
        ..Default::default()
    };
    let (obj, _) =
        ops::decode_body(ti, &patched, &o).map_err(|e| ApiError::internal_error(&message(&e)))?;
    Ok(obj)
}

/// The answer to a denial, built as the real `ToStatusErr` builds it from the
/// webhook's `status`.
fn denial(webhook: &str, status: Value) -> ApiError {
    let denied = format!("admission webhook \"{webhook}\" denied the request");
    let text = |k: &str| {
        status
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let msg = match (text("message"), text("reason")) {
        (Some(m), _) | (None, Some(m)) => format!("{denied}: {m}"),
        (None, None) => format!("{denied} without explanation"),
    };
    let code = status
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| *c >= 400)
        .unwrap_or(403);
    ApiError::new(code, text("reason"), &msg, status.get("details").cloned())
}

fn message(e: &ApiError) -> String {
    e.body
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}
