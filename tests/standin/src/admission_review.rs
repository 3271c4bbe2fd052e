//! The `admission.k8s.io` AdmissionReview exchanged with a webhook: the request as
//! kube-apiserver fills it, and the checks its dispatcher makes on the answer before
//! it believes it (`VerifyAdmissionResponse`).

use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use crate::admission::Attributes;

/// Why an answer is not believed. All are call failures, which `failurePolicy`
/// decides about; the texts are the real dispatcher's.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    #[error("failed to call webhook: {0}")]
    Undecodable(serde_json::Error),
    #[error("received invalid webhook response: webhook response was absent")]
    Absent,
    #[error("received invalid webhook response: expected response.uid={expected:?}, got {got:?}")]
    Uid { expected: String, got: String },
    #[error(
        "received invalid webhook response: expected webhook response of admission.k8s.io/{want}, Kind=AdmissionReview, got {got}"
    )]
    Kind { want: String, got: String },
    #[error(
        "received invalid webhook response: webhook returned response.patch but not response.patchType"
    )]
    PatchWithoutType,
    #[error(
        "received invalid webhook response: webhook returned response.patchType but not response.patch"
    )]
    TypeWithoutPatch,
    #[error("received undecodable patch in webhook response: {0}")]
    UndecodablePatch(serde_json::Error),
    #[error("unsupported patch type {0:?}")]
    PatchType(String),
}

/// What a believable answer says.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Allowed, with the JSON Patch operations to apply (none: unchanged).
    Allowed(Vec<Value>),
    /// `allowed: false`, with the webhook's `status` if it gave one.
    Denied(Option<Value>),
}

/// The review sent for one write, in the webhook's preferred `version`.
pub fn request(
    uid: &str,
    a: &Attributes<'_>,
    object: &Value,
    old: Option<&Value>,
    version: &str,
) -> Value {
    let ti = a.ti;
    let kind = json!({"group": ti.group, "version": ti.version, "kind": ti.kind});
    let resource = json!({"group": ti.group, "version": ti.version, "resource": ti.plural});
    let mut req = json!({
        "uid": uid,
        "kind": kind, "resource": resource,
        "requestKind": kind, "requestResource": resource,
        "namespace": a.namespace,
        "operation": a.operation.as_str(),
        "userInfo": {"username": "system:admin", "groups": ["system:masters", "system:authenticated"]},
        "object": object,
        "oldObject": old.cloned().unwrap_or(Value::Null),
        "dryRun": a.dry_run,
        "options": a.options,
    });
    // Go's `omitempty`: a CREATE with generateName has no name yet.
    if !a.name.is_empty() {
        req["name"] = json!(a.name);
    }
    json!({"kind": "AdmissionReview", "apiVersion": format!("admission.k8s.io/{version}"), "request": req})
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    response: Option<Response>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    allowed: bool,
    status: Option<Value>,
    #[serde(default, deserialize_with = "go_bytes")]
    patch: Vec<u8>,
    patch_type: Option<String>,
}

/// Go's `[]byte` in JSON: a base64 string, or (as Go's decoder also accepts) an
/// array of numbers.
fn go_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    use base64::Engine;
    use serde::de::Error;
    match Value::deserialize(d)? {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => base64::engine::general_purpose::STANDARD
            .decode(s.replace(['\r', '\n'], ""))
            .map_err(|e| D::Error::custom(format!("illegal base64 data: {e}"))),
        Value::Array(items) => items
            .iter()
            .map(|n| {
                n.as_u64()
                    .and_then(|n| u8::try_from(n).ok())
                    .ok_or_else(|| {
                        D::Error::custom(format!(
                            "json: cannot unmarshal {n} into Go struct field AdmissionResponse.response.patch of type uint8"
                        ))
                    })
            })
            .collect(),
        other => Err(D::Error::custom(format!(
            "json: cannot unmarshal {other} into Go struct field AdmissionResponse.response.patch of type []uint8"
        ))),
    }
}

/// Reads a webhook's answer to the review with `uid` sent as `version`.
pub fn verdict(uid: &str, version: &str, body: &[u8]) -> Result<Verdict, ResponseError> {
    let review: Review = serde_json::from_slice(body).map_err(ResponseError::Undecodable)?;
    let r = review.response.ok_or(ResponseError::Absent)?;
    if r.uid != uid {
        return Err(ResponseError::Uid {
            expected: uid.into(),
            got: r.uid,
        });
    }
    if review.api_version != format!("admission.k8s.io/{version}")
        || review.kind != "AdmissionReview"
    {
        return Err(ResponseError::Kind {
            want: version.into(),
            got: format!("{}, Kind={}", review.api_version, review.kind),
        });
    }
    let patch_type = r.patch_type.unwrap_or_default();
    match (r.patch.is_empty(), patch_type.is_empty()) {
        (false, true) => return Err(ResponseError::PatchWithoutType),
        (true, false) => return Err(ResponseError::TypeWithoutPatch),
        _ => {}
    }
    if !r.allowed {
        return Ok(Verdict::Denied(r.status));
    }
    if r.patch.is_empty() {
        return Ok(Verdict::Allowed(Vec::new()));
    }
    let ops: Vec<serde_json::Map<String, Value>> =
        serde_json::from_slice(&r.patch).map_err(ResponseError::UndecodablePatch)?;
    if !ops.is_empty() && patch_type != "JSONPatch" {
        return Err(ResponseError::PatchType(patch_type));
    }
    Ok(Verdict::Allowed(
        ops.into_iter().map(Value::Object).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(response: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}))
            .expect("json")
    }

    #[test]
    fn patch_may_be_base64_or_an_array_of_numbers() {
        let ops = br#"[{"op":"add","path":"/x","value":1}]"#;
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ops);
        let want = Verdict::Allowed(vec![json!({"op": "add", "path": "/x", "value": 1})]);
        for patch in [json!(b64), json!(ops.to_vec())] {
            let body = answer(
                json!({"uid": "u", "allowed": true, "patchType": "JSONPatch", "patch": patch}),
            );
            assert_eq!(verdict("u", "v1", &body).expect("verdict"), want);
        }
    }

    #[test]
    fn answers_that_are_not_believed() {
        let wrong_uid = answer(json!({"uid": "other", "allowed": true}));
        assert!(matches!(
            verdict("u", "v1", &wrong_uid),
            Err(ResponseError::Uid { .. })
        ));
        let untyped = answer(json!({"uid": "u", "allowed": true, "patch": "W10="}));
        assert!(matches!(
            verdict("u", "v1", &untyped),
            Err(ResponseError::PatchWithoutType)
        ));
        let not_a_patch =
            answer(json!({"uid": "u", "allowed": true, "patchType": "JSONPatch", "patch": "e30="}));
        assert!(matches!(
            verdict("u", "v1", &not_a_patch),
            Err(ResponseError::UndecodablePatch(_))
        ));
        let bad_base64 =
            answer(json!({"uid": "u", "allowed": true, "patchType": "JSONPatch", "patch": "!!"}));
        assert!(matches!(
            verdict("u", "v1", &bad_base64),
            Err(ResponseError::Undecodable(_))
        ));
        assert!(matches!(
            verdict(
                "u",
                "v1beta1",
                &answer(json!({"uid": "u", "allowed": true}))
            ),
            Err(ResponseError::Kind { .. })
        ));
    }
}
