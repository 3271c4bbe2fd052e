//! Writes with apiserver semantics, shared by the HTTP layer and the direct test API:
//! create, update (PUT, patches, apply), delete, and their watch events.

use serde_json::{Value, json};

use crate::fields;
use crate::status::{ApiError, success_deleted};
use crate::store::{Key, State, TypeInfo, key_of, now, rv_of};
use crate::validate::{self, default_core_event, event_to_core};
use crate::webhook_config;

/// Options of one write.
#[derive(Debug, Clone, Default)]
pub struct WriteOpts {
    pub dry_run: bool,
    pub manager: String,
    pub strict: bool,
    /// The request came through events.k8s.io/v1 (body in that form).
    pub events_api: bool,
    /// `status` for writes to the status subresource.
    pub subresource: Option<String>,
}

fn meta_str<'a>(obj: &'a Value, f: &str) -> &'a str {
    obj.pointer(&format!("/metadata/{f}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn random_suffix(st: &mut State) -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    st.uid_counter += 1;
    let mut n = st.uid_counter.wrapping_mul(2_654_435_761)
        ^ chrono::Utc::now().timestamp_subsec_nanos() as u64;
    (0..5)
        .map(|_| {
            let c = ALPHA[(n % ALPHA.len() as u64) as usize] as char;
            n /= ALPHA.len() as u64;
            c
        })
        .collect()
}

/// Checks the target namespace exists and is not terminating (for creates).
pub fn check_namespace(st: &State, ti: &TypeInfo, ns: &str, name: &str) -> Result<(), ApiError> {
    match st.namespace_phase(ns) {
        None => Err(ApiError::not_found("namespaces", "", ns)),
        Some(p) if p == "Terminating" => Err(ApiError::forbidden_terminating(
            &ti.plural, &ti.group, name, ns,
        )),
        Some(_) => Ok(()),
    }
}

/// Decodes a request body for `ti` (converting events.k8s.io Events to core form).
pub fn decode_body(
    ti: &TypeInfo,
    body: &Value,
    o: &WriteOpts,
) -> Result<(Value, Vec<String>), ApiError> {
    if ti.plural == "events" {
        let core = if o.events_api {
            event_to_core(body)
        } else {
            body.clone()
        };
        let mut m = core;
        if let Some(k) = m.get("kind").and_then(Value::as_str)
            && k != "Event"
        {
            return Err(ApiError::bad_request(&format!(
                "{k} in version \"v1\" cannot be handled as a Event"
            )));
        }
        if let Some(mm) = m.as_object_mut() {
            mm.insert("kind".into(), json!("Event"));
            mm.insert("apiVersion".into(), json!("v1"));
            mm.entry("metadata").or_insert(json!({}));
        }
        return Ok((m, Vec::new()));
    }
    let d = validate::decode(ti, body, o.strict)?;
    Ok((d.obj, d.warnings))
}

/// Puts a decoded body in the URL namespace `ns` (none: cluster-scoped), refusing a
/// body that names another.
pub fn set_namespace(obj: &mut Value, ns: Option<&str>) -> Result<(), ApiError> {
    if let Some(ns) = ns {
        let body_ns = meta_str(obj, "namespace");
        if !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        obj["metadata"]["namespace"] = json!(ns);
    } else if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    Ok(())
}

/// Creates an object from an already decoded body. `ns` is the URL namespace.
pub fn create(
    st: &mut State,
    ti: &TypeInfo,
    ns: Option<&str>,
    mut obj: Value,
    o: &WriteOpts,
) -> Result<Value, ApiError> {
    set_namespace(&mut obj, ns)?;
    let generated = meta_str(&obj, "name").is_empty() && !meta_str(&obj, "generateName").is_empty();
    if generated {
        let name = format!("{}{}", meta_str(&obj, "generateName"), random_suffix(st));
        obj["metadata"]["name"] = json!(name);
    }
    let name = meta_str(&obj, "name").to_string();
    let causes = validate::validate_name(ti, &obj, generated);
    if !causes.is_empty() {
        return Err(ApiError::invalid(
            &ti.kind,
            invalid_group(ti),
            &name,
            &causes,
        ));
    }
    if let Some(ns) = ns {
        check_namespace(st, ti, ns, &name)?;
    }
    let key = key_of(&obj);
    if st.get(&ti.storage(), &key).is_some() {
        return Err(ApiError::already_exists(&ti.plural, &ti.group, &name));
    }
    apply_create_defaults(ti, &mut obj);
    let causes = validate::validate(ti, &obj, None, o.events_api);
    if !causes.is_empty() {
        return Err(ApiError::invalid(
            &ti.kind,
            invalid_group(ti),
            &name,
            &causes,
        ));
    }
    if let Some(m) = obj["metadata"].as_object_mut() {
        for f in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            m.remove(f);
        }
        if o.subresource.as_deref() != Some("apply") {
            m.remove("managedFields");
        }
        m.insert("creationTimestamp".into(), json!(now()));
    }
    let uid = st.uid();
    obj["metadata"]["uid"] = json!(uid);
    if !o.manager.is_empty() && o.subresource.as_deref() != Some("apply") {
        fields::track_update(None, &mut obj, &o.manager, &ti.api_version(), "", &now());
    }
    if o.dry_run {
        return Ok(obj);
    }
    let stored = st.insert(&ti.storage(), obj);
    if ti.plural == "customresourcedefinitions" {
        register_crd(st, &stored);
        let mut established = stored.clone();
        established["status"]["conditions"] = json!([
            {"type": "NamesAccepted", "status": "True", "lastTransitionTime": now(), "reason": "NoConflicts", "message": "no conflicts found"},
            {"type": "Established", "status": "True", "lastTransitionTime": now(), "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"},
        ]);
        established["status"]["acceptedNames"] = stored["spec"]["names"].clone();
        st.replace(&ti.storage(), established);
    }
    Ok(stored)
}

/// Invalid answers about Events name the core kind, without a group.
fn invalid_group(ti: &TypeInfo) -> &str {
    if ti.plural == "events" { "" } else { &ti.group }
}

fn apply_create_defaults(ti: &TypeInfo, obj: &mut Value) {
    match ti.kind.as_str() {
        "Namespace" => {
            let name = meta_str(obj, "name").to_string();
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            if obj.pointer("/spec/finalizers").is_none() {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
            }
            obj["status"] = json!({"phase": "Active"});
        }
        "Event" => default_core_event(obj),
        "MutatingWebhookConfiguration" => webhook_config::default(obj),
        "CustomResourceDefinition" => {
            if obj.pointer("/spec/names/listKind").is_none() {
                let kind = obj
                    .pointer("/spec/names/kind")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                obj["spec"]["names"]["listKind"] = json!(format!("{kind}List"));
            }
            let storage = obj
                .pointer("/spec/versions")
                .and_then(Value::as_array)
                .and_then(|vs| vs.iter().find(|v| v.get("storage") == Some(&json!(true))))
                .and_then(|v| v.get("name").cloned())
                .unwrap_or(json!("v1"));
            obj["status"] = json!({"conditions": null, "acceptedNames": {"plural": "", "kind": ""}, "storedVersions": [storage]});
            if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                spec.entry("conversion")
                    .or_insert(json!({"strategy": "None"}));
            }
        }
        _ => {}
    }
    if ti.status_subresource
        && ti.custom
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
    if ti.has_generation() {
        obj["metadata"]["generation"] = json!(1);
    }
}

/// Registers the served versions of a CRD as resource types.
pub fn register_crd(st: &mut State, crd: &Value) {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default().to_string();
    let names = &spec["names"];
    let plural = names["plural"].as_str().unwrap_or_default().to_string();
    st.types
        .retain(|t| !(t.group == group && t.plural == plural));
    for v in spec["versions"].as_array().into_iter().flatten() {
        if v.get("served") == Some(&json!(false)) {
            continue;
        }
        st.types.push(TypeInfo {
            group: group.clone(),
            version: v["name"].as_str().unwrap_or_default().into(),
            plural: plural.clone(),
            singular: names["singular"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| names["kind"].as_str().unwrap_or_default().to_lowercase()),
            kind: names["kind"].as_str().unwrap_or_default().into(),
            namespaced: spec["scope"].as_str() == Some("Namespaced"),
            status_subresource: v.pointer("/subresources/status").is_some(),
            schema: v.pointer("/schema/openAPIV3Schema").cloned(),
            custom: true,
            short_names: names["shortNames"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            cache_start: st.rv,
        });
    }
}

/// Everything but metadata and status: what bumps `metadata.generation`.
fn spec_part(v: &Value) -> Value {
    let mut o = v.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

/// Stores `new` as the next state of `old` (PUT, patch or apply), returning the answer.
/// `new` is decoded; `tracked` means managedFields were already computed (apply).
pub fn update(
    st: &mut State,
    ti: &TypeInfo,
    old: &Value,
    mut new: Value,
    o: &WriteOpts,
    tracked: bool,
) -> Result<Value, ApiError> {
    let name = meta_str(old, "name").to_string();
    let is_status = o.subresource.as_deref() == Some("status");
    // System metadata always comes from the stored object.
    for f in [
        "name",
        "namespace",
        "creationTimestamp",
        "resourceVersion",
        "generation",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match old["metadata"].get(f) {
            Some(v) => new["metadata"][f] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(f);
                }
            }
        }
    }
    if new
        .pointer("/metadata/uid")
        .is_none_or(|u| u.as_str() == Some(""))
    {
        new["metadata"]["uid"] = old["metadata"]["uid"].clone();
    }
    if !tracked {
        match old["metadata"].get("managedFields") {
            Some(v) => new["metadata"]["managedFields"] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove("managedFields");
                }
            }
        }
    }
    if ti.status_subresource {
        if is_status {
            let status = new.get("status").cloned();
            let mf = new["metadata"].get("managedFields").cloned();
            new = old.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            if let Some(mf) = mf {
                new["metadata"]["managedFields"] = mf;
            }
        } else {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
    }
    match ti.kind.as_str() {
        "Event" => default_core_event(&mut new),
        "MutatingWebhookConfiguration" => webhook_config::default(&mut new),
        _ => {}
    }
    if old.pointer("/metadata/deletionTimestamp").is_some() {
        let before: Vec<&Value> = old
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        let added = new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|f| !before.contains(&f)));
        if added {
            let c = crate::status::Cause::new(
                "FieldValueForbidden",
                "metadata.finalizers",
                "Forbidden: no new finalizers can be added if the object is being deleted",
            );
            return Err(ApiError::invalid(
                &ti.kind,
                invalid_group(ti),
                &name,
                &[c.clone(), c],
            ));
        }
    }
    let causes = validate::validate(ti, &new, Some(old), o.events_api);
    if !causes.is_empty() {
        return Err(ApiError::invalid(
            &ti.kind,
            invalid_group(ti),
            &name,
            &causes,
        ));
    }
    if ti.has_generation() && spec_part(&new) != spec_part(old) {
        let g = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        new["metadata"]["generation"] = json!(g + 1);
    }
    if !tracked && !o.manager.is_empty() {
        let sub = if is_status { "status" } else { "" };
        fields::track_update(
            Some(old),
            &mut new,
            &o.manager,
            &ti.api_version(),
            sub,
            &now(),
        );
    }
    if fields::strip_times(&new) == fields::strip_times(old) {
        return Ok(old.clone());
    }
    if o.dry_run {
        return Ok(new);
    }
    let deleting = new.pointer("/metadata/deletionTimestamp").is_some();
    let no_finalizers = new
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(|a| a.is_empty());
    if deleting && no_finalizers {
        let key = key_of(old);
        st.remove(&ti.storage(), &key);
        if let Some(m) = new["metadata"].as_object_mut()
            && m.get("finalizers").is_some()
        {
            m.remove("finalizers");
        }
        return Ok(new);
    }
    Ok(st.replace(&ti.storage(), new))
}

/// Options of one DELETE.
#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    pub dry_run: bool,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub propagation: Option<String>,
}

/// Deletes (or starts deleting) an object; the answer is a Status or the object.
pub fn delete(st: &mut State, ti: &TypeInfo, key: &Key, o: &DeleteOpts) -> Result<Value, ApiError> {
    let storage = ti.storage();
    let Some(old) = st.get(&storage, key).cloned() else {
        return Err(ApiError::not_found(&ti.plural, &ti.group, &key.1));
    };
    let uid = meta_str(&old, "uid").to_string();
    if let Some(u) = &o.uid
        && *u != uid
    {
        let msg = format!(
            "Operation cannot be fulfilled on {} \"{}\": the UID in the precondition ({u}) does not match the UID in record ({uid}). The object might have been deleted and then recreated",
            ti.kind, key.1
        );
        return Err(ApiError::new(
            409,
            Some("Conflict"),
            &msg,
            Some(crate::status::details(&key.1, &ti.group, &ti.kind)),
        ));
    }
    if let Some(rv) = &o.resource_version
        && Some(rv.as_str())
            != old
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
    {
        let msg = format!(
            "Operation cannot be fulfilled on {} \"{}\": the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record ({}). The object might have been modified",
            ti.kind,
            key.1,
            rv_of(&old).unwrap_or_default()
        );
        return Err(ApiError::new(
            409,
            Some("Conflict"),
            &msg,
            Some(crate::status::details(&key.1, &ti.group, &ti.kind)),
        ));
    }
    if ti.kind == "Namespace" {
        if old.pointer("/metadata/deletionTimestamp").is_some() || o.dry_run {
            return Ok(old);
        }
        let mut new = old.clone();
        new["metadata"]["deletionTimestamp"] = json!(now());
        new["status"]["phase"] = json!("Terminating");
        return Ok(st.replace(&storage, new));
    }
    let mut finalizers: Vec<Value> = old
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    match o.propagation.as_deref() {
        Some("Foreground") if !finalizers.contains(&json!("foregroundDeletion")) => {
            finalizers.push(json!("foregroundDeletion"))
        }
        Some("Orphan") if !finalizers.contains(&json!("orphan")) => {
            finalizers.push(json!("orphan"))
        }
        _ => {}
    }
    if finalizers.is_empty() {
        if !o.dry_run {
            st.remove(&storage, key);
            if ti.plural == "customresourcedefinitions" {
                unregister_crd(st, &old);
            }
        }
        return Ok(success_deleted(&ti.plural, &ti.group, &key.1, &uid));
    }
    if old.pointer("/metadata/deletionTimestamp").is_some() || o.dry_run {
        return Ok(old);
    }
    let mut new = old.clone();
    new["metadata"]["deletionTimestamp"] = json!(now());
    new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    new["metadata"]["finalizers"] = Value::Array(finalizers);
    if ti.has_generation() {
        let g = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        new["metadata"]["generation"] = json!(g + 1);
    }
    Ok(st.replace(&storage, new))
}

fn unregister_crd(st: &mut State, crd: &Value) {
    let group = crd
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let plural = crd
        .pointer("/spec/names/plural")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let storage = crate::status::qualified(&plural, &group);
    let keys: Vec<Key> = st
        .objects
        .get(&storage)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    for k in keys {
        st.remove(&storage, &k);
    }
    st.types
        .retain(|t| !(t.group == group && t.plural == plural));
}
