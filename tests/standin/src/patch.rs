//! The three non-apply patch types: RFC 6902 JSON Patch, RFC 7386 merge patch and
//! strategic merge patch (for the built-in types served here).

use serde_json::{Map, Value};

use crate::status::ApiError;

/// Applies a JSON Patch. A body that is not an array is a 400; any failing operation
/// (including an unknown op) is the generic 422.
pub fn json_patch(doc: &Value, body: &Value) -> Result<Value, ApiError> {
    let Some(ops) = body.as_array() else {
        return Err(ApiError::bad_request(
            "error decoding patch: json: cannot unmarshal object into Go value of type []handlers.jsonPatchOp",
        ));
    };
    apply_operations(doc, ops).map_err(|_| ApiError::patch_rejected())
}

/// Applies JSON Patch operations as the apiserver's patch library does; the error
/// says why one failed. `test` against an absent path with the value `null`
/// succeeds, as on a real server.
pub fn apply_operations(doc: &Value, ops: &[Value]) -> Result<Value, String> {
    let mut kept = Vec::new();
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).unwrap_or_default();
        if !["add", "remove", "replace", "move", "copy", "test"].contains(&name) {
            return Err(format!("Unexpected kind: {name}"));
        }
        if name == "test" && op.get("value").is_some_and(Value::is_null) {
            let path = op.get("path").and_then(Value::as_str).unwrap_or_default();
            match doc_pointer(doc, &kept, path) {
                None | Some(Value::Null) => continue,
                Some(_) => return Err(format!("testing value {path} failed: test failed")),
            }
        }
        kept.push(op.clone());
    }
    let patch: json_patch::Patch =
        serde_json::from_value(Value::Array(kept)).map_err(|e| e.to_string())?;
    let mut out = doc.clone();
    json_patch::patch(&mut out, &patch).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Resolves `path` in `doc` after the operations kept so far.
fn doc_pointer(doc: &Value, kept: &[Value], path: &str) -> Option<Value> {
    let mut d = doc.clone();
    if !kept.is_empty() {
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(kept.to_vec())).ok()?;
        json_patch::patch(&mut d, &patch).ok()?;
    }
    d.pointer(path).cloned()
}

/// RFC 7386 merge patch.
pub fn merge_patch(doc: &Value, patch: &Value) -> Value {
    let mut out = doc.clone();
    json_patch::merge(&mut out, patch);
    out
}

/// How a list merges in a strategic merge patch.
#[derive(Clone, Copy)]
enum ListStrategy {
    Atomic,
    MergeKey(&'static str),
    PrimitiveSet,
}

fn strategy(path: &[&str], kind: &str) -> ListStrategy {
    match (kind, path) {
        (_, ["metadata", "finalizers"]) => ListStrategy::PrimitiveSet,
        (_, ["metadata", "ownerReferences"]) => ListStrategy::MergeKey("uid"),
        ("ServiceAccount", ["secrets"]) => ListStrategy::MergeKey("name"),
        ("MutatingWebhookConfiguration", ["webhooks"]) => ListStrategy::MergeKey("name"),
        _ => ListStrategy::Atomic,
    }
}

/// Strategic merge patch for built-in kinds; `imagePullSecrets` is atomic, SA
/// `secrets` and webhook configurations' `webhooks` merge by name, finalizers merge
/// as a set, `$patch` directives work.
pub fn strategic_merge(doc: &Value, patch: &Value, kind: &str) -> Value {
    smp(doc, patch, kind, &mut Vec::new())
}

fn smp<'a>(doc: &Value, patch: &'a Value, kind: &str, path: &mut Vec<&'a str>) -> Value {
    let Value::Object(p) = patch else {
        return patch.clone();
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut m = p.clone();
            m.remove("$patch");
            return Value::Object(m);
        }
        Some("delete") => return Value::Null,
        _ => {}
    }
    let mut out = match doc {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    for (k, v) in p {
        if k.starts_with('$') {
            continue;
        }
        path.push(k.as_str());
        match v {
            Value::Null => {
                out.remove(k);
            }
            Value::Object(_) => {
                let merged = smp(out.get(k).unwrap_or(&Value::Null), v, kind, path);
                if merged.is_null() {
                    out.remove(k);
                } else {
                    out.insert(k.clone(), merged);
                }
            }
            Value::Array(items) => {
                let cur = out
                    .get(k)
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let merged = match strategy(path, kind) {
                    ListStrategy::Atomic => items.clone(),
                    ListStrategy::PrimitiveSet => {
                        let mut l = cur;
                        for i in items {
                            if !l.contains(i) {
                                l.push(i.clone());
                            }
                        }
                        l
                    }
                    ListStrategy::MergeKey(key) => {
                        let mut l = cur;
                        for i in items {
                            let id = i.get(key);
                            let pos = l.iter().position(|e| e.get(key) == id);
                            let directive = i.get("$patch").and_then(Value::as_str);
                            match (pos, directive) {
                                (Some(at), Some("delete")) => {
                                    l.remove(at);
                                }
                                (Some(at), _) => {
                                    let m = smp(&l[at], i, kind, path);
                                    l[at] = m;
                                }
                                (None, Some("delete")) => {}
                                (None, _) => l.push(smp(&Value::Null, i, kind, path)),
                            }
                        }
                        l
                    }
                };
                out.insert(k.clone(), Value::Array(merged));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
        path.pop();
    }
    Value::Object(out)
}
