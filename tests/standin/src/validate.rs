//! Decoding (defaults, pruning, base64) and validation of the types served here.

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::status::{ApiError, Cause};
use crate::store::TypeInfo;
use crate::webhook_config;

const META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

fn known_fields(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Namespace" => &["spec", "status"],
        "Secret" => &["data", "stringData", "type", "immutable"],
        "ServiceAccount" => &[
            "secrets",
            "imagePullSecrets",
            "automountServiceAccountToken",
        ],
        "Lease" => &["spec"],
        "ConfigMap" => &["data", "binaryData", "immutable"],
        "MutatingWebhookConfiguration" => &["webhooks"],
        _ => return None,
    })
}

pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain)
        && !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn is_micro_time(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 27
        && b[10] == b'T'
        && b[19] == b'.'
        && b[26] == b'Z'
        && chrono::NaiveDateTime::parse_from_str(&s[..26], "%Y-%m-%dT%H:%M:%S%.6f").is_ok()
}

/// Lease MicroTime fields that fail to parse; the caller decides 400 vs 422.
pub fn bad_micro_time(obj: &Value) -> Option<String> {
    for f in ["acquireTime", "renewTime"] {
        if let Some(v) = obj.pointer(&format!("/spec/{f}")) {
            match v.as_str() {
                Some(s) if is_micro_time(s) => {}
                Some(s) => {
                    return Some(format!(
                        "parsing time \"{s}\" as \"2006-01-02T15:04:05.000000Z07:00\": cannot parse \"{s}\" as \"2006-01-02T15:04:05.000000Z07:00\""
                    ));
                }
                None if v.is_null() => {}
                None => return Some(format!("{f}: expected a string")),
            }
        }
    }
    None
}

/// What decoding a request body produced.
pub struct Decoded {
    pub obj: Value,
    pub warnings: Vec<String>,
}

/// Turns a request body into a stored-form object: checks kind and apiVersion,
/// fills them in, prunes unknown fields (or fails with `strict`), decodes Secret data.
pub fn decode(ti: &TypeInfo, body: &Value, strict: bool) -> Result<Decoded, ApiError> {
    let Value::Object(m) = body else {
        return Err(ApiError::bad_request(&format!(
            "the object provided is unrecognized (must be of type {}): couldn't get version/kind; json parse error",
            ti.kind
        )));
    };
    let mut m = m.clone();
    let mut warnings = Vec::new();
    if let Some(k) = m.get("kind").and_then(Value::as_str)
        && k != ti.kind
    {
        return Err(ApiError::bad_request(&format!(
            "{k} in version \"{}\" cannot be handled as a {}: converting to {} is not possible",
            ti.version, ti.kind, ti.kind
        )));
    }
    if let Some(av) = m.get("apiVersion").and_then(Value::as_str)
        && av != ti.api_version()
        && ti.custom
    {
        return Err(ApiError::bad_request(&format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            ti.api_version()
        )));
    }
    m.insert("kind".into(), json!(ti.kind));
    m.insert("apiVersion".into(), json!(ti.api_version()));
    let mut unknown = Vec::new();
    if !m.get("metadata").is_some_and(Value::is_object) {
        m.insert("metadata".into(), json!({}));
    }
    if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.retain(|k, _| {
            let ok = META_FIELDS.contains(&k.as_str());
            if !ok {
                unknown.push(format!("metadata.{k}"));
            }
            ok
        });
    }
    if let Some(known) = known_fields(&ti.kind) {
        m.retain(|k, _| {
            let ok = ["kind", "apiVersion", "metadata"].contains(&k.as_str())
                || known.contains(&k.as_str());
            if !ok {
                unknown.push(k.clone());
            }
            ok
        });
    }
    if ti.kind == "ServiceAccount"
        && let Some(list) = m.get_mut("imagePullSecrets").and_then(Value::as_array_mut)
    {
        for (i, e) in list.iter_mut().enumerate() {
            if let Some(em) = e.as_object_mut() {
                em.retain(|k, _| {
                    let ok = k == "name";
                    if !ok {
                        unknown.push(format!("imagePullSecrets[{i}].{k}"));
                    }
                    ok
                });
                if em.get("name").and_then(Value::as_str) == Some("") {
                    em.remove("name");
                }
            }
        }
    }
    if ti.custom
        && let Some(schema) = &ti.schema
    {
        let mut obj = Value::Object(m);
        for (k, sub) in schema
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            if k == "metadata" || k == "apiVersion" || k == "kind" {
                continue;
            }
            if let Some(v) = obj.get_mut(k) {
                prune(v, sub, k, &mut unknown);
            }
        }
        if let Some(om) = obj.as_object_mut() {
            let props = schema.get("properties").and_then(Value::as_object);
            om.retain(|k, _| {
                let ok = ["kind", "apiVersion", "metadata"].contains(&k.as_str())
                    || props.is_some_and(|p| p.contains_key(k));
                if !ok {
                    unknown.push(k.clone());
                }
                ok
            });
        }
        m = match obj {
            Value::Object(m) => m,
            _ => Map::new(),
        };
    }
    if !unknown.is_empty() {
        if strict {
            let list: Vec<String> = unknown
                .iter()
                .map(|u| format!("unknown field \"{u}\""))
                .collect();
            return Err(ApiError::bad_request(&format!(
                "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                ti.kind,
                ti.version,
                ti.kind,
                list.join(", ")
            )));
        }
        warnings.extend(unknown.iter().map(|u| format!("unknown field \"{u}\"")));
    }
    if ti.kind == "Secret" {
        decode_secret(&mut m, ti)?;
    }
    if ti.kind == "MutatingWebhookConfiguration"
        && let Err(e) = webhook_config::check_types(&Value::Object(m.clone()))
    {
        return Err(ApiError::bad_request(&format!(
            "{} in version \"v1\" cannot be handled as a {}: {e}",
            ti.kind, ti.kind
        )));
    }
    if ti.kind == "Lease"
        && let Some(e) = bad_micro_time(&Value::Object(m.clone()))
    {
        return Err(ApiError::bad_request(&format!(
            "Lease in version \"v1\" cannot be handled as a Lease: {e}"
        )));
    }
    Ok(Decoded {
        obj: Value::Object(m),
        warnings,
    })
}

fn prune(v: &mut Value, schema: &Value, path: &str, unknown: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true)) {
        return;
    }
    match v {
        Value::Object(m) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                m.retain(|k, _| {
                    let ok = props.contains_key(k);
                    if !ok {
                        unknown.push(format!("{path}.{k}"));
                    }
                    ok
                });
                for (k, c) in m.iter_mut() {
                    prune(c, &props[k], &format!("{path}.{k}"), unknown);
                }
            } else if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, c) in m.iter_mut() {
                    prune(c, ap, &format!("{path}.{k}"), unknown);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = schema.get("items") {
                for (i, c) in items.iter_mut().enumerate() {
                    prune(c, is, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

fn decode_secret(m: &mut Map<String, Value>, ti: &TypeInfo) -> Result<(), ApiError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(data) = m.get("data").and_then(Value::as_object) {
        for v in data.values() {
            let s = v.as_str().unwrap_or_default();
            if let Err(e) = b64.decode(s) {
                let at = match e {
                    base64::DecodeError::InvalidByte(i, _) => i,
                    base64::DecodeError::InvalidLength(i) => i,
                    base64::DecodeError::InvalidLastSymbol(i, _) => i,
                    base64::DecodeError::InvalidPadding => s.len(),
                };
                return Err(ApiError::bad_request(&format!(
                    "{} in version \"v1\" cannot be handled as a {}: illegal base64 data at input byte {at}",
                    ti.kind, ti.kind
                )));
            }
        }
    }
    if let Some(Value::Object(sd)) = m.remove("stringData") {
        let data = m.entry("data").or_insert_with(|| json!({}));
        if !data.is_object() {
            *data = json!({});
        }
        for (k, v) in sd {
            data[&k] = json!(b64.encode(v.as_str().unwrap_or_default()));
        }
    }
    if !m.contains_key("type") || m.get("type") == Some(&json!("")) {
        m.insert("type".into(), json!("Opaque"));
    }
    Ok(())
}

/// Validates name and generateName on create.
pub fn validate_name(ti: &TypeInfo, obj: &Value, generated: bool) -> Vec<Cause> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let check = |s: &str| {
        if ti.kind == "Namespace" {
            is_dns_label(s)
        } else {
            is_dns_subdomain(s)
        }
    };
    let what = if ti.kind == "Namespace" {
        "RFC 1123 label"
    } else {
        "RFC 1123 subdomain"
    };
    if generated {
        let gn = obj
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let masked = match gn.strip_suffix('-') {
            Some(p) => format!("{p}a"),
            None => gn.to_string(),
        };
        if !check(&masked) {
            return vec![Cause::invalid(
                "metadata.generateName",
                format!(
                    "Invalid value: \"{gn}\": a lowercase {what} must consist of lower case alphanumeric characters"
                ),
            )];
        }
        return Vec::new();
    }
    if name.is_empty() {
        return vec![Cause::new(
            "FieldValueRequired",
            "metadata.name",
            "Required value: name or generateName is required",
        )];
    }
    if !check(name) {
        return vec![Cause::invalid(
            "metadata.name",
            format!(
                "Invalid value: \"{name}\": a lowercase {what} must consist of lower case alphanumeric characters"
            ),
        )];
    }
    Vec::new()
}

/// Type-specific validation of the object to store (`old` on update).
pub fn validate(ti: &TypeInfo, obj: &Value, old: Option<&Value>, events_api: bool) -> Vec<Cause> {
    let mut c = Vec::new();
    if let Some(o) = old
        && o.pointer("/metadata/uid") != obj.pointer("/metadata/uid")
    {
        let uid = obj
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default();
        c.push(Cause::invalid(
            "metadata.uid",
            format!("Invalid value: \"{uid}\": field is immutable"),
        ));
        c.push(Cause::invalid(
            "metadata.uid",
            format!("Invalid value: \"{uid}\": field is immutable"),
        ));
    }
    match ti.kind.as_str() {
        "Secret" => validate_secret(obj, old, &mut c),
        "Lease" => validate_lease(obj, &mut c),
        "Event" => validate_event(obj, old, events_api, &mut c),
        "MutatingWebhookConfiguration" => webhook_config::validate(obj, &mut c),
        _ if ti.custom => {
            if let Some(s) = &ti.schema {
                validate_schema(obj, s, "", &mut c, true);
            }
        }
        _ => {}
    }
    c
}

fn validate_secret(obj: &Value, old: Option<&Value>, c: &mut Vec<Cause>) {
    let ty = obj.get("type").and_then(Value::as_str).unwrap_or("Opaque");
    if let Some(o) = old {
        let oty = o.get("type").and_then(Value::as_str).unwrap_or("Opaque");
        if oty != ty {
            c.push(Cause::invalid(
                "type",
                format!("Invalid value: \"{ty}\": field is immutable"),
            ));
        }
    }
    let key = match ty {
        "kubernetes.io/dockerconfigjson" => ".dockerconfigjson",
        "kubernetes.io/dockercfg" => ".dockercfg",
        _ => return,
    };
    match obj
        .pointer("/data")
        .and_then(|d| d.get(key))
        .and_then(Value::as_str)
    {
        None => c.push(Cause::required(format!("data[{key}]"))),
        Some(s) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s)
                .unwrap_or_default();
            let ok = match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(_)) => true,
                Ok(_) => key == ".dockercfg",
                Err(_) => false,
            };
            if !ok {
                c.push(Cause::invalid(
                    format!("data[{key}]"),
                    "Invalid value: \"<secret contents redacted>\": invalid character",
                ));
            }
        }
    }
}

fn validate_lease(obj: &Value, c: &mut Vec<Cause>) {
    if let Some(d) = obj
        .pointer("/spec/leaseDurationSeconds")
        .and_then(Value::as_i64)
        && d <= 0
    {
        c.push(Cause::invalid(
            "spec.leaseDurationSeconds",
            format!("Invalid value: {d}: must be greater than 0"),
        ));
    }
    if let Some(t) = obj
        .pointer("/spec/leaseTransitions")
        .and_then(Value::as_i64)
        && t < 0
    {
        c.push(Cause::invalid(
            "spec.leaseTransitions",
            format!("Invalid value: {t}: must be greater than or equal to 0"),
        ));
    }
}

fn validate_event(obj: &Value, old: Option<&Value>, events_api: bool, c: &mut Vec<Cause>) {
    let s = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or_default();
    let event_time = obj.get("eventTime").filter(|v| !v.is_null());
    if let Some(o) = old {
        if o.get("involvedObject") != obj.get("involvedObject") {
            c.push(Cause::invalid(
                "involvedObject",
                "Invalid value: field is immutable",
            ));
        }
    } else if events_api {
        if event_time.is_none() {
            c.push(Cause::required("eventTime"));
        }
        let ty = s("type");
        if ty != "Normal" && ty != "Warning" {
            c.push(Cause::invalid(
                "type",
                format!("Invalid value: \"\": has invalid value: {ty}"),
            ));
        }
        if obj.get("firstTimestamp").is_some_and(|v| !v.is_null()) {
            c.push(Cause::invalid(
                "firstTimestamp",
                "Invalid value: \"\": needs to be unset",
            ));
        }
        if obj.get("lastTimestamp").is_some_and(|v| !v.is_null()) {
            c.push(Cause::invalid(
                "lastTimestamp",
                "Invalid value: \"\": needs to be unset",
            ));
        }
    }
    if let Some(series) = obj.get("series").filter(|v| !v.is_null())
        && series.get("count").and_then(Value::as_i64).unwrap_or(0) < 2
    {
        c.push(Cause::invalid(
            "series.count",
            "Invalid value: \"\": should be at least 2",
        ));
    }
    if event_time.is_some() {
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let ions = obj
            .pointer("/involvedObject/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if ions.is_empty() && ns != "default" && ns != "kube-system" {
            c.push(Cause::invalid(
                "involvedObject.namespace",
                "Invalid value: \"\": does not match event.namespace",
            ));
        }
        let rc = s("reportingComponent");
        if rc.is_empty() {
            c.push(Cause::required("reportingController"));
            c.push(Cause::invalid(
                "reportingController",
                "Invalid value: \"\": name part must be non-empty",
            ));
            c.push(Cause::invalid(
                "reportingController",
                "Invalid value: \"\": name part must consist of alphanumeric characters",
            ));
        } else if !is_qualified_name(rc) {
            c.push(Cause::invalid(
                "reportingController",
                format!(
                    "Invalid value: \"{rc}\": name part must consist of alphanumeric characters"
                ),
            ));
        }
        if s("reportingInstance").is_empty() {
            c.push(Cause::required("reportingInstance"));
        }
        if s("action").is_empty() {
            c.push(Cause::required("action"));
        } else if s("action").len() > 128 {
            c.push(Cause::invalid(
                "action",
                "Invalid value: \"\": can have at most 128 characters",
            ));
        }
        if s("reason").is_empty() {
            c.push(Cause::required("reason"));
        } else if s("reason").len() > 128 {
            c.push(Cause::invalid(
                "reason",
                "Invalid value: \"\": can have at most 128 characters",
            ));
        }
        if s("message").len() > 1024 {
            c.push(Cause::invalid(
                "message",
                "Invalid value: \"\": can have at most 1024 characters",
            ));
        }
    }
}

fn type_ok(v: &Value, ty: &str) -> bool {
    match ty {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        _ => true,
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn validate_schema(v: &Value, schema: &Value, path: &str, c: &mut Vec<Cause>, root: bool) {
    let child = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    if let Some(ty) = schema.get("type").and_then(Value::as_str)
        && !type_ok(v, ty)
        && !root
    {
        let got = json_type(v);
        c.push(Cause::new(
            "FieldValueTypeInvalid",
            path,
            format!("Invalid value: \"{got}\": {path} in body must be of type {ty}: \"{got}\""),
        ));
        return;
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        c.push(Cause::new(
            "FieldValueNotSupported",
            path,
            format!("Unsupported value: {v}"),
        ));
    }
    if let (Some(min), Some(s)) = (schema.get("minLength").and_then(Value::as_u64), v.as_str())
        && (s.chars().count() as u64) < min
    {
        c.push(Cause::invalid(
            path,
            format!("Invalid value: \"{s}\": {path} in body should be at least {min} chars long"),
        ));
    }
    if let Value::Object(m) = v {
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(k) = r.as_str()
                && !m.contains_key(k)
            {
                c.push(Cause::required(child(k)));
            }
        }
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (k, sub) in props {
                if root && (k == "metadata" || k == "apiVersion" || k == "kind") {
                    continue;
                }
                if let Some(cv) = m.get(k) {
                    validate_schema(cv, sub, &child(k), c, false);
                }
            }
        }
    }
    if let (Value::Array(items), Some(is)) = (v, schema.get("items")) {
        for (i, it) in items.iter().enumerate() {
            validate_schema(it, is, &format!("{path}[{i}]"), c, false);
        }
    }
}

/// events.k8s.io/v1 to core/v1 field names.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// Converts an events.k8s.io/v1 Event body to its stored core/v1 form.
pub fn event_to_core(v: &Value) -> Value {
    let mut o = v.clone();
    if let Some(m) = o.as_object_mut() {
        for (e, c) in EVENT_FIELDS {
            if let Some(x) = m.remove(*e) {
                m.insert((*c).into(), x);
            }
        }
        m.insert("apiVersion".into(), json!("v1"));
    }
    o
}

/// Converts a stored core/v1 Event to the events.k8s.io/v1 form.
pub fn event_from_core(v: &Value) -> Value {
    let mut o = v.clone();
    if let Some(m) = o.as_object_mut() {
        for (e, c) in EVENT_FIELDS {
            if let Some(x) = m.remove(*c) {
                m.insert((*e).into(), x);
            }
        }
        m.insert("apiVersion".into(), json!("events.k8s.io/v1"));
        m.entry("deprecatedSource").or_insert(json!({}));
        m.entry("deprecatedFirstTimestamp").or_insert(Value::Null);
        m.entry("deprecatedLastTimestamp").or_insert(Value::Null);
    }
    o
}

/// Fills the core/v1 Event defaults a real server shows.
pub fn default_core_event(v: &mut Value) {
    if let Some(m) = v.as_object_mut() {
        m.entry("source").or_insert(json!({}));
        m.entry("firstTimestamp").or_insert(Value::Null);
        m.entry("lastTimestamp").or_insert(Value::Null);
        m.entry("involvedObject").or_insert(json!({}));
    }
}
