//! JSON Patches for `ServiceAccount.imagePullSecrets`.
//!
//! The list is atomic (no merge key): a strategic-merge patch or an apply
//! would replace what other writers put there. So every patch starts with
//! `test` ops on the exact list and annotation it was computed from; if any
//! writer got in between, the server answers 422 and the caller re-reads and
//! recomputes. Entries regbridge did not add are never touched, and the
//! `regbridge.dev/added-pull-secrets` annotation records which ones it did.

use json_patch::jsonptr::PointerBuf;
use json_patch::{
    AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation, TestOperation,
};
use serde_json::{Value, json};

use crate::api::labels::ADDED_ANNOTATION;
use crate::cache::index::ServiceAccountView;

fn references(sa: &ServiceAccountView) -> impl Iterator<Item = &str> {
    sa.pull_secrets.iter().flatten().map(String::as_str)
}

/// The names regbridge recorded as added on this ServiceAccount.
pub fn added_by_us(sa: &ServiceAccountView) -> Vec<&str> {
    sa.added
        .as_deref()
        .map(|v| v.split(',').filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
}

pub fn references_secret(sa: &ServiceAccountView, secret: &str) -> bool {
    references(sa).any(|n| n == secret)
}

fn pointer(path: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(path.iter().copied())
}

fn list_value(sa: &ServiceAccountView) -> Value {
    match &sa.pull_secrets {
        None => Value::Null,
        Some(names) => names.iter().map(|n| json!({ "name": n })).collect(),
    }
}

fn test(path: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Test(TestOperation {
        path: pointer(path),
        value,
    })
}

/// `test` ops pinning what the patch was computed from. A `test` against
/// `null` succeeds on an absent field (kube-apiserver, corpus
/// `serviceaccounts-06`), but only when its parent exists, so an absent
/// annotations map is pinned as a whole.
fn guards(sa: &ServiceAccountView) -> Vec<PatchOperation> {
    let annotation = if sa.has_annotations {
        test(
            &["metadata", "annotations", ADDED_ANNOTATION],
            sa.added.clone().map(Value::String).unwrap_or(Value::Null),
        )
    } else {
        test(&["metadata", "annotations"], Value::Null)
    };
    vec![test(&["imagePullSecrets"], list_value(sa)), annotation]
}

fn set_annotation(sa: &ServiceAccountView, names: &[&str]) -> PatchOperation {
    let value = Value::String(names.join(","));
    if !sa.has_annotations {
        return PatchOperation::Add(AddOperation {
            path: pointer(&["metadata", "annotations"]),
            value: json!({ ADDED_ANNOTATION: value }),
        });
    }
    let path = pointer(&["metadata", "annotations", ADDED_ANNOTATION]);
    if names.is_empty() {
        PatchOperation::Remove(RemoveOperation { path })
    } else if sa.added.is_some() {
        PatchOperation::Replace(ReplaceOperation { path, value })
    } else {
        PatchOperation::Add(AddOperation { path, value })
    }
}

/// Appends `secret` to the list, keeping every other entry in order. `None`
/// when it is already there, whoever put it there.
pub fn add_reference(sa: &ServiceAccountView, secret: &str) -> Option<Patch> {
    let additions = add_references(sa, &[secret])?;
    let mut ops = guards(sa);
    ops.extend(additions);
    Some(Patch(ops))
}

/// The operations that append each of `secrets` the list lacks, in order and
/// without duplicates, and record them in the annotation; no `test` guards.
/// The admission webhook uses these as they are: its patch applies to the
/// very object in the request, so nothing can change in between. `None`
/// when the list already holds every one of them.
pub fn add_references(sa: &ServiceAccountView, secrets: &[&str]) -> Option<Vec<PatchOperation>> {
    let mut missing: Vec<&str> = Vec::new();
    for &secret in secrets {
        if !references_secret(sa, secret) && !missing.contains(&secret) {
            missing.push(secret);
        }
    }
    if missing.is_empty() {
        return None;
    }
    let mut ops = append_to_list(&["imagePullSecrets"], sa.pull_secrets.is_some(), &missing);
    let mut added = added_by_us(sa);
    let before = added.len();
    for &secret in &missing {
        if !added.contains(&secret) {
            added.push(secret);
        }
    }
    if added.len() != before {
        ops.push(set_annotation(sa, &added));
    }
    Some(ops)
}

/// Appends `names` to the `{name: ...}` list at `path`. Appending with `/-`
/// to an absent list fails, so an absent list is created whole.
pub fn append_to_list(path: &[&str], present: bool, names: &[&str]) -> Vec<PatchOperation> {
    if !present {
        return vec![PatchOperation::Add(AddOperation {
            path: pointer(path),
            value: names.iter().map(|n| json!({ "name": n })).collect(),
        })];
    }
    let mut end = path.to_vec();
    end.push("-");
    names
        .iter()
        .map(|n| {
            PatchOperation::Add(AddOperation {
                path: pointer(&end),
                value: json!({ "name": n }),
            })
        })
        .collect()
}

/// Removes the reference regbridge added. `None` when regbridge did not add
/// it (the annotation does not list it): then it is somebody else's.
pub fn remove_reference(sa: &ServiceAccountView, secret: &str) -> Option<Patch> {
    let mut added = added_by_us(sa);
    if !added.contains(&secret) {
        return None;
    }
    let mut ops = guards(sa);
    // The last occurrence is the one regbridge appended.
    if let Some(index) = references(sa)
        .collect::<Vec<_>>()
        .iter()
        .rposition(|n| *n == secret)
    {
        ops.push(PatchOperation::Remove(RemoveOperation {
            path: pointer(&["imagePullSecrets", &index.to_string()]),
        }));
    }
    added.retain(|n| *n != secret);
    ops.push(set_annotation(sa, &added));
    Some(Patch(ops))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::sa;
    use k8s_openapi::api::core::v1::ServiceAccount;

    /// Applies a patch as kube-apiserver does: unlike RFC 6902 strictly read,
    /// it lets `test` against `null` pass on an absent field.
    fn apply(sa: &ServiceAccount, patch: &Patch) -> Result<ServiceAccount, json_patch::PatchError> {
        let mut doc = serde_json::to_value(sa).unwrap();
        let ops: Vec<PatchOperation> = patch
            .0
            .iter()
            .filter(|op| match op {
                PatchOperation::Test(t) => !(t.value.is_null() && t.path.resolve(&doc).is_err()),
                _ => true,
            })
            .cloned()
            .collect();
        json_patch::patch(&mut doc, &ops)?;
        Ok(serde_json::from_value(doc).unwrap())
    }

    fn names(sa: &ServiceAccount) -> Vec<String> {
        ServiceAccountView::from(sa)
            .pull_secrets
            .unwrap_or_default()
    }

    fn added(sa: &ServiceAccount) -> Vec<String> {
        added_by_us(&ServiceAccountView::from(sa))
            .into_iter()
            .map(String::from)
            .collect()
    }

    #[test]
    fn adding_to_an_absent_list_creates_the_list() {
        let s_obj = sa("a", "default").object();
        let s = ServiceAccountView::from(&s_obj);
        let out = apply(&s_obj, &add_reference(&s, "regcred").unwrap()).unwrap();
        assert_eq!(names(&out), ["regcred"]);
        assert_eq!(added(&out), ["regcred"]);
    }

    #[test]
    fn adding_appends_and_keeps_foreign_entries_in_order() {
        let s_obj = sa("a", "default")
            .pull_secrets(&["z-first", "a-second"])
            .object();
        let s = ServiceAccountView::from(&s_obj);
        let out = apply(&s_obj, &add_reference(&s, "regcred").unwrap()).unwrap();
        assert_eq!(names(&out), ["z-first", "a-second", "regcred"]);
    }

    #[test]
    fn an_existing_entry_is_never_duplicated() {
        let s_obj = sa("a", "default").pull_secrets(&["regcred"]).object();
        let s = ServiceAccountView::from(&s_obj);
        assert!(add_reference(&s, "regcred").is_none());
    }

    #[test]
    fn patch_fails_when_another_writer_changed_the_list() {
        let seen_obj = sa("a", "default").pull_secrets(&["x"]).object();
        let seen = ServiceAccountView::from(&seen_obj);
        let patch = add_reference(&seen, "regcred").unwrap();
        let now_obj = sa("a", "default").pull_secrets(&["x", "theirs"]).object();
        assert!(
            apply(&now_obj, &patch).is_err(),
            "the test op must guard the list"
        );
    }

    #[test]
    fn removal_takes_only_what_we_added() {
        let s_obj = sa("a", "default")
            .pull_secrets(&["x", "regcred", "y"])
            .annotation(ADDED_ANNOTATION, "other,regcred")
            .object();
        let s = ServiceAccountView::from(&s_obj);
        let out = apply(&s_obj, &remove_reference(&s, "regcred").unwrap()).unwrap();
        assert_eq!(names(&out), ["x", "y"]);
        assert_eq!(added(&out), ["other"]);
    }

    #[test]
    fn removal_of_a_reference_somebody_else_added_is_refused() {
        let s_obj = sa("a", "default").pull_secrets(&["regcred"]).object();
        let s = ServiceAccountView::from(&s_obj);
        assert!(remove_reference(&s, "regcred").is_none());
    }

    #[test]
    fn removing_the_last_recorded_name_drops_the_annotation() {
        let s_obj = sa("a", "default")
            .pull_secrets(&["regcred"])
            .annotation(ADDED_ANNOTATION, "regcred")
            .annotation("keep", "me")
            .object();
        let s = ServiceAccountView::from(&s_obj);
        let out = apply(&s_obj, &remove_reference(&s, "regcred").unwrap()).unwrap();
        assert!(names(&out).is_empty());
        let ann = out.metadata.annotations.unwrap();
        assert!(!ann.contains_key(ADDED_ANNOTATION));
        assert_eq!(ann["keep"], "me");
    }
}
