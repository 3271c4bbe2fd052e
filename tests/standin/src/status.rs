//! `Status` bodies, built the way kube-apiserver builds them.

use serde_json::{Value, json};

/// An error answer: HTTP code plus a JSON `Status` body (or plain text).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub body: Value,
    /// When set, the answer is `text/plain` with this text instead of `body`.
    pub text: Option<String>,
}

/// One `details.causes` entry.
#[derive(Debug, Clone)]
pub struct Cause {
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Cause {
    pub fn new(reason: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Cause {
            reason,
            field: field.into(),
            message: message.into(),
        }
    }
    pub fn required(field: impl Into<String>) -> Self {
        Cause::new("FieldValueRequired", field, "Required value")
    }
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Cause::new("FieldValueInvalid", field, message)
    }
}

fn status(code: u16, reason: Option<&str>, message: &str, details: Option<Value>) -> Value {
    let mut v = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "code": code,
    });
    if let Some(r) = reason {
        v["reason"] = json!(r);
    }
    if let Some(d) = details {
        v["details"] = d;
    }
    v
}

/// `details` naming an object: `name`, `group` (omitted when empty), `kind`.
pub fn details(name: &str, group: &str, kind: &str) -> Value {
    let mut d = serde_json::Map::new();
    if !name.is_empty() {
        d.insert("name".into(), json!(name));
    }
    if !group.is_empty() {
        d.insert("group".into(), json!(group));
    }
    d.insert("kind".into(), json!(kind));
    Value::Object(d)
}

/// `plural.group` or just `plural` for the core group.
pub fn qualified(plural: &str, group: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

impl ApiError {
    pub fn new(code: u16, reason: Option<&str>, message: &str, details: Option<Value>) -> Self {
        ApiError {
            code,
            body: status(code, reason, message, details),
            text: None,
        }
    }
    pub fn page_not_found() -> Self {
        ApiError {
            code: 404,
            body: Value::Null,
            text: Some("404 page not found\n".into()),
        }
    }
    pub fn not_found(plural: &str, group: &str, name: &str) -> Self {
        let msg = format!("{} \"{name}\" not found", qualified(plural, group));
        Self::new(
            404,
            Some("NotFound"),
            &msg,
            Some(details(name, group, plural)),
        )
    }
    pub fn resource_not_found() -> Self {
        Self::new(
            404,
            Some("NotFound"),
            "the server could not find the requested resource",
            Some(json!({})),
        )
    }
    pub fn already_exists(plural: &str, group: &str, name: &str) -> Self {
        let msg = format!("{} \"{name}\" already exists", qualified(plural, group));
        Self::new(
            409,
            Some("AlreadyExists"),
            &msg,
            Some(details(name, group, plural)),
        )
    }
    pub fn conflict(plural: &str, group: &str, name: &str) -> Self {
        let msg = format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            qualified(plural, group)
        );
        Self::new(
            409,
            Some("Conflict"),
            &msg,
            Some(details(name, group, plural)),
        )
    }
    pub fn bad_request(message: &str) -> Self {
        Self::new(400, Some("BadRequest"), message, None)
    }
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            Some("MethodNotAllowed"),
            "the server does not allow this method on the requested resource",
            Some(json!({})),
        )
    }
    pub fn unsupported_media_type(message: &str, details: Option<Value>) -> Self {
        Self::new(415, Some("UnsupportedMediaType"), message, details)
    }
    pub fn not_acceptable(message: &str, details: Option<Value>) -> Self {
        Self::new(406, Some("NotAcceptable"), message, details)
    }
    pub fn expired(message: &str) -> Self {
        Self::new(410, Some("Expired"), message, None)
    }
    /// The generic 422 every failed JSON Patch operation gets.
    pub fn patch_rejected() -> Self {
        Self::new(
            422,
            Some("Invalid"),
            "the server rejected our request due to an error in our request",
            Some(json!({})),
        )
    }
    /// 422 Invalid with one cause per violation.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: &[Cause]) -> Self {
        let qual = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let parts: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let joined = if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("[{}]", parts.join(", "))
        };
        let msg = format!("{qual} \"{name}\" is invalid: {joined}");
        let mut d = details(name, group, kind);
        d["causes"] = Value::Array(
            causes
                .iter()
                .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                .collect(),
        );
        Self::new(422, Some("Invalid"), &msg, Some(d))
    }
    pub fn forbidden_terminating(plural: &str, group: &str, name: &str, ns: &str) -> Self {
        let msg = format!(
            "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
            qualified(plural, group)
        );
        let mut d = details(name, group, plural);
        d["causes"] = json!([{"reason": "NamespaceTerminating", "message": format!("namespace {ns} is being terminated"), "field": "metadata.namespace"}]);
        Self::new(403, Some("Forbidden"), &msg, Some(d))
    }
    pub fn internal(message: &str) -> Self {
        Self::new(500, None, message, None)
    }
    /// apimachinery's `NewInternalError`, which admission failures are wrapped in.
    pub fn internal_error(err: &str) -> Self {
        Self::new(
            500,
            Some("InternalError"),
            &format!("Internal error occurred: {err}"),
            Some(json!({"causes": [{"message": err}]})),
        )
    }
    /// apimachinery's `NewForbidden`, as admission plugins refuse a request.
    pub fn forbidden(plural: &str, group: &str, name: &str, err: &str) -> Self {
        let what = qualified(plural, group);
        let msg = if name.is_empty() {
            format!("{what} is forbidden: {err}")
        } else {
            format!("{what} \"{name}\" is forbidden: {err}")
        };
        Self::new(
            403,
            Some("Forbidden"),
            &msg,
            Some(details(name, group, plural)),
        )
    }
}

/// A `Status` of kind Success for a DELETE without finalizers.
pub fn success_deleted(plural: &str, group: &str, name: &str, uid: &str) -> Value {
    let mut d = details(name, group, plural);
    d["uid"] = json!(uid);
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d})
}
