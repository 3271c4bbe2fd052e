//! What a resource must satisfy before anything is minted or written. A
//! rejection names the field and leaves everything already distributed as
//! it is: a typo in an edit must not take credentials away from running
//! workloads.

use std::time::Duration;

use regbridge_providers::duration;
use regbridge_providers::spec::CredentialSpec;

use crate::api::crd::ClusterPullSecretSpec;
use crate::cache::index::NamespaceView;
use crate::cache::selection::Selection;

/// Why a resource is refused: a condition reason and a message for status
/// and its Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// The parts of a spec that only exist once checked.
#[derive(Debug)]
pub struct Valid {
    pub selection: Selection,
    pub refresh_before: Option<Duration>,
}

/// Checks what the API server's schema cannot: selectors and globs that
/// compile, durations in range, and fields only `mint` reads.
pub fn validate(spec: &ClusterPullSecretSpec) -> Result<Valid, Rejection> {
    let selection =
        Selection::compile(spec).map_err(|e| Rejection::new("InvalidSelector", e.to_string()))?;
    let refresh_before = spec
        .refresh_before
        .as_deref()
        .map(duration::parse)
        .transpose()
        .map_err(|e| Rejection::new("InvalidRefreshBefore", e.to_string()))?;
    for (i, entry) in spec.credentials.iter().enumerate() {
        match entry {
            CredentialSpec::Static(s) if s.file.is_some() => {
                return Err(Rejection::new(
                    "FileNotSupported",
                    format!(
                        "credentials[{i}].static.file is only read by `regbridge mint`; use secretRef"
                    ),
                ));
            }
            CredentialSpec::Harbor(h) => {
                if let Err(e) = duration::parse(&h.rotate_every) {
                    return Err(Rejection::new(
                        "InvalidRotateEvery",
                        format!("credentials[{i}].harbor.rotateEvery: {e}"),
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(Valid {
        selection,
        refresh_before,
    })
}

/// A tenant's identity serves only that tenant: an entry minting with a
/// ServiceAccount's identity is refused unless the resource selects that
/// ServiceAccount's namespace. Otherwise one team's cloud rights would be
/// minted into namespaces that are not that team's. `namespace` looks a
/// namespace up in the cache; one not there (not yet created) is not
/// selected.
pub fn tenant_identities(
    spec: &ClusterPullSecretSpec,
    selection: &Selection,
    namespace: impl Fn(&str) -> Option<std::sync::Arc<NamespaceView>>,
) -> Result<(), Rejection> {
    for (i, entry) in spec.credentials.iter().enumerate() {
        let Some(sa) = entry.tenant_service_account() else {
            continue;
        };
        let selected = namespace(&sa.namespace).is_some_and(|ns| selection.selects_namespace(&ns));
        if !selected {
            return Err(Rejection::new(
                "IdentityNotSelected",
                format!(
                    "credentials[{i}].{}.identity.serviceAccountRef names {}/{}, in a namespace this resource does not select; a tenant's identity serves only that tenant's namespaces",
                    entry.kind(),
                    sa.namespace,
                    sa.name
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::fixtures::ns;

    fn spec(json: serde_json::Value) -> ClusterPullSecretSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn each_invalid_field_has_its_own_reason() {
        let cases = [
            (
                serde_json::json!({"credentials": [], "namespaces": {"include": ["team-[a"]}}),
                "InvalidSelector",
            ),
            (
                serde_json::json!({"credentials": [], "refreshBefore": "1y"}),
                "InvalidRefreshBefore",
            ),
            (
                serde_json::json!({"credentials": [{"static": {"file": "/x"}}]}),
                "FileNotSupported",
            ),
            (
                serde_json::json!({"credentials": [{"harbor": {
                    "url": "https://h", "adminSecretRef": {"namespace": "rb", "name": "a"},
                    "project": "p", "rotateEvery": "9999h"}}]}),
                "InvalidRotateEvery",
            ),
        ];
        for (json, reason) in cases {
            let err = validate(&spec(json.clone())).unwrap_err();
            assert_eq!(err.reason, reason, "{json}");
        }
        let ok = validate(&spec(
            serde_json::json!({"credentials": [], "refreshBefore": "10m"}),
        ))
        .unwrap();
        assert_eq!(ok.refresh_before, Some(Duration::from_secs(600)));
    }

    #[test]
    fn a_tenant_identity_must_sit_in_a_selected_namespace() {
        let s = spec(serde_json::json!({
            "namespaces": {"include": ["team-a"]},
            "credentials": [{"ecr": {"region": "eu-west-1", "roleArn": "arn:aws:iam::1:role/a",
                "identity": {"serviceAccountRef": {"namespace": "team-b", "name": "puller"}}}}],
        }));
        let selection = Selection::compile(&s).unwrap();
        let cache = |name: &str| Some(Arc::new(ns(name).build()));
        let err = tenant_identities(&s, &selection, cache).unwrap_err();
        assert_eq!(err.reason, "IdentityNotSelected");
        assert!(err.message.contains("team-b/puller"), "{}", err.message);

        let mut s = s;
        s.namespaces.include = vec!["team-*".into()];
        let selection = Selection::compile(&s).unwrap();
        assert_eq!(tenant_identities(&s, &selection, cache), Ok(()));
        // A namespace the cache does not know is not selected.
        assert!(tenant_identities(&s, &selection, |_| None).is_err());
    }
}
