//! kube-apiserver's built-in ServiceAccount admission plugin, for pods on CREATE.
//! It runs before the webhooks, and it is why a pod's `imagePullSecrets` are those
//! its ServiceAccount had at that moment: a ServiceAccount patched later does not
//! reach pods already created. The token volume it also projects is left out.

use serde_json::{Value, json};

use crate::admission::{Attributes, Operation};
use crate::status::ApiError;
use crate::store::State;

const DEFAULT: &str = "default";

/// Names the pod's ServiceAccount (`default` unless set), refuses the pod when that
/// ServiceAccount does not exist, and gives a pod without `imagePullSecrets` the
/// ServiceAccount's.
pub fn admit(st: &State, a: &Attributes<'_>, mut pod: Value) -> Result<Value, ApiError> {
    let is_pod = a.ti.group.is_empty() && a.ti.plural == "pods";
    if !is_pod || a.operation != Operation::Create {
        return Ok(pod);
    }
    let Some(spec) = pod
        .as_object_mut()
        .map(|p| p.entry("spec").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    else {
        return Ok(pod);
    };
    let named = |k: &str| {
        spec.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    // The deprecated `serviceAccount` is read when `serviceAccountName` is unset,
    // and both show the name afterwards, as the v1 conversion does.
    let sa_name = named("serviceAccountName")
        .or_else(|| named("serviceAccount"))
        .unwrap_or_else(|| DEFAULT.into());
    spec.insert("serviceAccountName".into(), json!(sa_name));
    spec.insert("serviceAccount".into(), json!(sa_name));
    let Some(sa) = st.get(
        "serviceaccounts",
        &(a.namespace.to_string(), sa_name.clone()),
    ) else {
        return Err(ApiError::forbidden(
            &a.ti.plural,
            &a.ti.group,
            a.name,
            &format!(
                "error looking up service account {}/{sa_name}: serviceaccount \"{sa_name}\" not found",
                a.namespace
            ),
        ));
    };
    let has_own = spec
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .is_some_and(|l| !l.is_empty());
    if !has_own {
        let names: Vec<Value> = sa
            .get("imagePullSecrets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|r| json!({"name": r.get("name").cloned().unwrap_or(json!(""))}))
            .collect();
        // An empty list is omitted, as Go's `omitempty` drops it.
        if names.is_empty() {
            spec.remove("imagePullSecrets");
        } else {
            spec.insert("imagePullSecrets".into(), Value::Array(names));
        }
    }
    Ok(pod)
}
