//! The HTTP face: routing, content negotiation, list, watch, patch, and the
//! request log and fault injection every request passes through.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::RequestRecord;
use crate::admission::{self, Attributes, Operation};
use crate::fields;
use crate::ops::{self, DeleteOpts, WriteOpts};
use crate::patch;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{ApiError, Cause};
use crate::store::{EventType, Key, State, TypeInfo, key_of, now, rv_of};
use crate::validate::{self, event_from_core};
use crate::webhook_client;

/// State shared by the server and the handle tests hold.
pub struct Shared {
    pub state: Mutex<State>,
    pub tick: watch::Sender<u64>,
    pub webhook_clients: webhook_client::Clients,
}

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn notify(&self) {
        self.tick.send_modify(|t| *t += 1);
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

struct Req {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
}

impl Req {
    fn q(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str)
    }
    fn header(&self, k: header::HeaderName) -> Option<&str> {
        self.headers.get(k).and_then(|v| v.to_str().ok())
    }
    fn content_type(&self) -> String {
        self.header(header::CONTENT_TYPE)
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    }
    fn manager(&self) -> String {
        if let Some(m) = self.q("fieldManager") {
            return m.to_string();
        }
        let ua = self.header(header::USER_AGENT).unwrap_or("unknown");
        ua.split('/').next().unwrap_or("unknown").to_string()
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(v) => {
                    out.push(v);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

fn respond(code: u16, body: &Value, warnings: &[String]) -> Response {
    let mut r = Response::new(Body::from(serde_json::to_vec(body).unwrap_or_default()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for w in warnings {
        let v = format!("299 - {}", serde_json::to_string(w).unwrap_or_default());
        if let Ok(h) = HeaderValue::from_str(&v) {
            r.headers_mut().append(header::WARNING, h);
        }
    }
    r
}

fn error_response(e: ApiError) -> Response {
    match e.text {
        Some(t) => {
            let mut r = Response::new(Body::from(t));
            *r.status_mut() = StatusCode::from_u16(e.code).unwrap_or(StatusCode::NOT_FOUND);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        }
        None => respond(e.code, &e.body, &[]),
    }
}

async fn handle(
    axum::extract::State(sh): axum::extract::State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = Req {
        method,
        path: uri.path().to_string(),
        query: parse_query(uri.query()),
        headers,
        body,
    };
    let mut delay = None;
    {
        let mut st = sh.lock();
        st.requests.push(RequestRecord {
            method: req.method.to_string(),
            path: req.path.clone(),
            query: req.query.clone(),
            content_type: req.header(header::CONTENT_TYPE).map(str::to_string),
            body: if req.body.is_empty() {
                None
            } else {
                Some(serde_json::from_slice(&req.body).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(&req.body).into_owned())
                }))
            },
        });
        let matched = st.faults.iter_mut().find(|f| {
            f.times > 0
                && f.method.as_ref().is_none_or(|m| *m == req.method)
                && req.path.contains(&f.path_contains)
        });
        if let Some(f) = matched {
            f.times -= 1;
            let fault = f.clone();
            st.faults.retain(|f| f.times > 0);
            match fault.delay {
                Some(by) => delay = Some(by),
                None => return fault_response(fault.status, &fault.reason),
            }
        }
    }
    if let Some(by) = delay {
        tokio::time::sleep(by).await;
    }
    match route(&sh, req).await {
        Ok(r) => r,
        Err(e) => error_response(e),
    }
}

/// The Status an injected failure answers with.
fn fault_response(code: u16, reason: &str) -> Response {
    let mut body = ApiError::new(
        code,
        Some(reason),
        &format!("injected fault: {reason}"),
        Some(json!({})),
    )
    .body;
    if code == 429 || code == 503 || code == 504 {
        body["details"]["retryAfterSeconds"] = json!(1);
    }
    respond(code, &body, &[])
}

async fn route(sh: &Arc<Shared>, req: Req) -> Result<Response, ApiError> {
    let segs: Vec<String> = req
        .path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["version"] => {
            return Ok(respond(
                200,
                &json!({"major": "1", "minor": "36", "emulationMajor": "1", "emulationMinor": "36", "minCompatibilityMajor": "1", "minCompatibilityMinor": "35",
                        "gitVersion": "v1.36.2", "gitCommit": "standin", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                        "goVersion": "go1.25", "compiler": "gc", "platform": "linux/amd64"}),
                &[],
            ));
        }
        ["readyz"] | ["livez"] | ["healthz"] => {
            let mut r = Response::new(Body::from("ok"));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return Ok(r);
        }
        ["api"] => {
            return Ok(respond(
                200,
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}),
                &[],
            ));
        }
        ["apis"] => return Ok(respond(200, &group_list(&sh.lock()), &[])),
        ["api", "v1"] => return Ok(respond(200, &resource_list(&sh.lock(), "", "v1"), &[])),
        ["api", "v1", rest @ ..] => return resource(sh, &req, "", "v1", rest).await,
        ["api", ..] => return Err(ApiError::resource_not_found()),
        ["apis", g] => {
            let st = sh.lock();
            let versions: Vec<String> = st
                .types
                .iter()
                .filter(|t| t.group == *g)
                .map(|t| t.version.clone())
                .collect();
            if versions.is_empty() {
                return Err(ApiError::page_not_found());
            }
            return Ok(respond(200, &group_json(g, &versions), &[]));
        }
        ["apis", g, v] => {
            let st = sh.lock();
            if !st.types.iter().any(|t| t.group == *g && t.version == *v) {
                return Err(ApiError::page_not_found());
            }
            return Ok(respond(200, &resource_list(&st, g, v), &[]));
        }
        ["apis", g, v, rest @ ..] => return resource(sh, &req, g, v, rest).await,
        _ => {}
    }
    Err(ApiError::page_not_found())
}

fn group_json(g: &str, versions: &[String]) -> Value {
    let mut vs: Vec<String> = versions.to_vec();
    vs.dedup();
    let list: Vec<Value> = vs
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": list, "preferredVersion": list[0]})
}

fn group_list(st: &State) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for t in st.types.iter().filter(|t| !t.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, vs)) => {
                if !vs.contains(&t.version) {
                    vs.push(t.version.clone())
                }
            }
            None => groups.push((t.group.clone(), vec![t.version.clone()])),
        }
    }
    let gs: Vec<Value> = groups
        .iter()
        .map(|(g, vs)| {
            let mut v = group_json(g, vs);
            if let Some(m) = v.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            v
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": gs})
}

fn resource_list(st: &State, g: &str, v: &str) -> Value {
    let mut res = Vec::new();
    for t in st.types.iter().filter(|t| t.group == g && t.version == v) {
        let mut r = json!({"name": t.plural, "singularName": t.singular, "namespaced": t.namespaced, "kind": t.kind,
            "verbs": ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"]});
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        res.push(r);
        if t.status_subresource {
            res.push(json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced, "kind": t.kind, "verbs": ["get", "patch", "update"]}));
        }
        if t.plural == "serviceaccounts" {
            res.push(json!({"name": "serviceaccounts/token", "singularName": "", "namespaced": true, "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]}));
        }
    }
    let gv = if g.is_empty() {
        v.to_string()
    } else {
        format!("{g}/{v}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": res})
}

/// What the client accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    Full,
    Meta(&'static str),
    /// A watch asked for PartialObjectMetadataList: an empty stream.
    EmptyWatch,
}

fn negotiate(accept: Option<&str>, is_list: bool, is_watch: bool) -> Result<Shape, ApiError> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(Shape::Full);
    };
    let mut mismatch = None;
    let mut unknown_as = false;
    for entry in accept.split(',') {
        let mut parts = entry.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let params: BTreeMap<&str, &str> = parts.filter_map(|p| p.split_once('=')).collect();
        if !matches!(media, "application/json" | "*/*" | "application/*") {
            continue;
        }
        let ver = match params.get("v") {
            Some(&"v1beta1") => "v1beta1",
            _ => "v1",
        };
        match params.get("as") {
            None => return Ok(Shape::Full),
            Some(&"PartialObjectMetadata") => {
                if is_watch || !is_list {
                    return Ok(Shape::Meta(ver));
                }
                mismatch =
                    Some("you requested PartialObjectMetadata, but the requested object is a list");
            }
            Some(&"PartialObjectMetadataList") => {
                if is_watch {
                    return Ok(Shape::EmptyWatch);
                }
                if is_list {
                    return Ok(Shape::Meta(ver));
                }
                mismatch = Some(
                    "you requested PartialObjectMetadataList, but the requested object is not a list",
                );
            }
            Some(_) => unknown_as = true,
        }
    }
    if let Some(m) = mismatch {
        return Err(ApiError::not_acceptable(m, None));
    }
    if unknown_as {
        return Err(ApiError::not_acceptable(
            "only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf",
            None,
        ));
    }
    Err(ApiError::not_acceptable(
        "406: Not Acceptable\n\nAvailable representations: application/json, application/yaml, application/vnd.kubernetes.protobuf",
        Some(json!({})),
    ))
}

fn to_meta(obj: &Value, ver: &str) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": format!("meta.k8s.io/{ver}"), "metadata": obj["metadata"]})
}

/// The stored object as this API (group) shows it.
fn present(ti: &TypeInfo, obj: &Value) -> Value {
    if ti.plural == "events" && ti.group == "events.k8s.io" {
        event_from_core(obj)
    } else {
        obj.clone()
    }
}

fn shaped(ti: &TypeInfo, obj: &Value, shape: Shape) -> Value {
    match shape {
        Shape::Meta(v) => to_meta(obj, v),
        _ => present(ti, obj),
    }
}

fn dry_run(req: &Req, options_kind: &str) -> Result<bool, ApiError> {
    match req.q("dryRun") {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(v) => Err(ApiError::invalid(
            options_kind,
            "meta.k8s.io",
            "",
            &[Cause::new(
                "FieldValueNotSupported",
                "dryRun",
                format!("Unsupported value: [\"{v}\"]: supported values: \"All\""),
            )],
        )),
    }
}

fn write_opts(req: &Req, ti: &TypeInfo, dry: bool, sub: Option<&str>) -> WriteOpts {
    WriteOpts {
        dry_run: dry,
        manager: req.manager(),
        strict: req.q("fieldValidation") == Some("Strict"),
        events_api: ti.group == "events.k8s.io",
        subresource: sub.map(str::to_string),
    }
}

fn parse_json_body(req: &Req, ti: &TypeInfo) -> Result<Value, ApiError> {
    let ct = req.content_type();
    match ct.as_str() {
        "application/json" | "" => serde_json::from_slice(&req.body).map_err(|e| {
            ApiError::bad_request(&format!(
                "the object provided is unrecognized (must be of type {}): couldn't get version/kind; json parse error: {e}",
                ti.kind
            ))
        }),
        "application/yaml" => serde_yaml::from_slice(&req.body).map_err(|e| ApiError::bad_request(&format!("yaml parse error: {e}"))),
        _ => Err(ApiError::unsupported_media_type(
            &format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf, application/cbor (got {ct})"),
            None,
        )),
    }
}

async fn resource(
    sh: &Arc<Shared>,
    req: &Req,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Response, ApiError> {
    let (ns, rest): (Option<&str>, &[&str]) = if rest.first() == Some(&"namespaces")
        && rest.len() >= 3
        && !(rest.len() == 3 && matches!(rest[2], "status" | "finalize"))
    {
        (Some(rest[1]), &rest[2..])
    } else {
        (None, rest)
    };
    if rest.is_empty() || rest.len() > 3 {
        return Err(if group.is_empty() {
            ApiError::resource_not_found()
        } else {
            ApiError::page_not_found()
        });
    }
    let plural = rest[0];
    let name = rest.get(1).copied();
    let sub = rest.get(2).copied();
    let not_found = || {
        if group.is_empty() {
            ApiError::resource_not_found()
        } else {
            ApiError::page_not_found()
        }
    };
    let ti = sh
        .lock()
        .find_type(group, version, plural)
        .ok_or_else(not_found)?;
    if ns.is_some() && !ti.namespaced {
        return Err(not_found());
    }
    if ti.namespaced && ns.is_none() && name.is_some() {
        return Err(not_found());
    }
    if let Some(s) = sub {
        let ok = (s == "status" && ti.status_subresource)
            || (s == "token" && ti.plural == "serviceaccounts");
        if !ok {
            return Err(ApiError::resource_not_found());
        }
    }
    let m = req.method.clone();
    match (m, name, sub) {
        (Method::GET, None, _) => {
            let watch = matches!(req.q("watch"), Some("true" | "1"));
            if watch {
                watch_handler(sh, req, &ti, ns).await
            } else {
                list_handler(sh, req, &ti, ns).await
            }
        }
        (Method::GET, Some(_), Some("token")) => Err(ApiError::method_not_allowed()),
        (Method::GET, Some(n), _) => get_handler(sh, req, &ti, ns, n),
        (Method::POST, None, _) => create_handler(sh, req, &ti, ns).await,
        (Method::POST, Some(n), Some("token")) => token_handler(sh, req, ns.unwrap_or_default(), n),
        (Method::PUT, Some(n), s) => put_handler(sh, req, &ti, ns, n, s).await,
        (Method::PATCH, Some(n), s) => patch_handler(sh, req, &ti, ns, n, s).await,
        (Method::DELETE, Some(n), None) => delete_handler(sh, req, &ti, ns, n),
        (Method::DELETE, None, None) => delete_collection(sh, req, &ti, ns).await,
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn key(ns: Option<&str>, name: &str) -> Key {
    (ns.unwrap_or_default().to_string(), name.to_string())
}

fn get_handler(
    sh: &Arc<Shared>,
    req: &Req,
    ti: &TypeInfo,
    ns: Option<&str>,
    name: &str,
) -> Result<Response, ApiError> {
    let shape = negotiate(req.header(header::ACCEPT), false, false)?;
    let st = sh.lock();
    let obj = st
        .get(&ti.storage(), &key(ns, name))
        .ok_or_else(|| ApiError::not_found(&ti.plural, &ti.group, name))?;
    Ok(respond(200, &shaped(ti, obj, shape), &[]))
}

/// The write options a webhook is shown, as the request's query set them.
fn options(req: &Req, kind: &str) -> Value {
    let mut o = json!({"kind": kind, "apiVersion": "meta.k8s.io/v1"});
    if req.q("dryRun") == Some("All") {
        o["dryRun"] = json!(["All"]);
    }
    for k in ["fieldManager", "fieldValidation"] {
        if let Some(v) = req.q(k).filter(|v| !v.is_empty()) {
            o[k] = json!(v);
        }
    }
    if kind == "PatchOptions" && req.q("force") == Some("true") {
        o["force"] = json!(true);
    }
    o
}

/// Has the object under `key` changed since `seen` was read (created, replaced or
/// deleted)? Admission runs without the lock, so a write must check before storing.
fn changed_since(st: &State, ti: &TypeInfo, key: &Key, seen: Option<&Value>) -> bool {
    st.get(&ti.storage(), key).and_then(rv_of) != seen.and_then(rv_of)
}

async fn create_handler(
    sh: &Arc<Shared>,
    req: &Req,
    ti: &TypeInfo,
    ns: Option<&str>,
) -> Result<Response, ApiError> {
    let body = parse_json_body(req, ti)?;
    let dry = dry_run(req, "CreateOptions")?;
    let o = write_opts(req, ti, dry, None);
    let (mut obj, warnings) = ops::decode_body(ti, &body, &o)?;
    ops::set_namespace(&mut obj, ns)?;
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let attrs = Attributes {
        ti,
        operation: Operation::Create,
        name: &name,
        namespace: ns.unwrap_or_default(),
        subresource: None,
        old: None,
        dry_run: dry,
        options: options(req, "CreateOptions"),
    };
    let obj = admission::admit(sh, &attrs, obj).await?;
    let out = ops::create(&mut sh.lock(), ti, ns, obj, &o)?;
    sh.notify();
    let mut out = present(ti, &out);
    if dry && let Some(m) = out["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    Ok(respond(201, &out, &warnings))
}

fn check_identity(obj: &Value, ns: Option<&str>, name: &str) -> Result<(), ApiError> {
    if let Some(n) = obj.pointer("/metadata/name").and_then(Value::as_str)
        && !n.is_empty()
        && n != name
    {
        return Err(ApiError::bad_request(&format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        )));
    }
    if let Some(bns) = obj.pointer("/metadata/namespace").and_then(Value::as_str)
        && !bns.is_empty()
        && Some(bns) != ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(())
}

/// The object a PUT replaces, after its preconditions.
fn put_target(st: &State, ti: &TypeInfo, k: &Key, obj: &Value) -> Result<Value, ApiError> {
    let name = &k.1;
    let old = st
        .get(&ti.storage(), k)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&ti.plural, &ti.group, name))?;
    match obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        Some(rv)
            if Some(rv)
                != old
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str) =>
        {
            Err(ApiError::conflict(&ti.plural, &ti.group, name))
        }
        None if ti.kind == "Lease" => {
            let mut e = ApiError::invalid(
                &ti.plural,
                &ti.group,
                name,
                &[Cause::invalid(
                    "metadata.resourceVersion",
                    "Invalid value: 0x0: must be specified for an update",
                )],
            );
            e.body["message"] = json!(format!(
                "{} \"{name}\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
                crate::status::qualified(&ti.plural, &ti.group)
            ));
            Err(e)
        }
        _ => Ok(old),
    }
}

/// A PUT: like the real GuaranteedUpdate loop, it starts over when the object
/// changed while admission ran, so a PUT naming a resourceVersion then gets 409.
async fn put_handler(
    sh: &Arc<Shared>,
    req: &Req,
    ti: &TypeInfo,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
) -> Result<Response, ApiError> {
    let body = parse_json_body(req, ti)?;
    let dry = dry_run(req, "UpdateOptions")?;
    let o = write_opts(req, ti, dry, sub);
    check_identity(&body, ns, name)?;
    let (mut obj, warnings) = ops::decode_body(ti, &body, &o)?;
    obj["metadata"]["name"] = json!(name);
    if let Some(ns) = ns {
        obj["metadata"]["namespace"] = json!(ns);
    }
    let k = key(ns, name);
    loop {
        let old = put_target(&sh.lock(), ti, &k, &obj)?;
        let attrs = Attributes {
            ti,
            operation: Operation::Update,
            name,
            namespace: ns.unwrap_or_default(),
            subresource: sub,
            old: Some(&old),
            dry_run: dry,
            options: options(req, "UpdateOptions"),
        };
        let admitted = admission::admit(sh, &attrs, obj.clone()).await?;
        let mut st = sh.lock();
        if changed_since(&st, ti, &k, Some(&old)) {
            continue;
        }
        let out = ops::update(&mut st, ti, &old, admitted, &o, false)?;
        drop(st);
        sh.notify();
        return Ok(respond(200, &present(ti, &out), &warnings));
    }
}

/// What a PATCH body is and how it applies.
struct PatchRequest<'a> {
    ti: &'a TypeInfo,
    ns: Option<&'a str>,
    name: &'a str,
    sub: Option<&'a str>,
    kind: String,
    body: Value,
    force: bool,
}

impl PatchRequest<'_> {
    fn is_apply(&self) -> bool {
        self.kind == "application/apply-patch+yaml"
    }

    /// The object the patch makes of `old` (for apply, `None` creates), decoded,
    /// before admission.
    fn patched(
        &self,
        old: Option<&Value>,
        o: &WriteOpts,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let (ti, ns, name, body) = (self.ti, self.ns, self.name, &self.body);
        if self.is_apply() {
            check_identity(body, ns, name)?;
            let (mut config, warnings) = ops::decode_body(ti, body, o)?;
            config["metadata"]["name"] = json!(name);
            if let Some(ns) = ns {
                config["metadata"]["namespace"] = json!(ns);
            }
            let api_version = ti.api_version();
            let subname = if self.sub == Some("status") {
                "status"
            } else {
                ""
            };
            let merged = match old {
                None => {
                    if self.sub.is_some() {
                        return Err(ApiError::not_found(&ti.plural, &ti.group, name));
                    }
                    let base = json!({"kind": ti.kind, "apiVersion": api_version, "metadata": {}});
                    let mut merged = fields::apply(
                        &base,
                        &config,
                        &o.manager,
                        self.force,
                        &api_version,
                        subname,
                        &now(),
                    )
                    .map_err(conflict_error)?;
                    merged["metadata"]["name"] = json!(name);
                    if let Some(ns) = ns {
                        merged["metadata"]["namespace"] = json!(ns);
                    }
                    merged
                }
                Some(old) => fields::apply(
                    old,
                    &config,
                    &o.manager,
                    self.force,
                    &api_version,
                    subname,
                    &now(),
                )
                .map_err(conflict_error)?,
            };
            return Ok((merged, warnings));
        }
        let old = old.ok_or_else(|| ApiError::not_found(&ti.plural, &ti.group, name))?;
        let view = present(ti, old);
        let patched = match self.kind.as_str() {
            "application/json-patch+json" => patch::json_patch(&view, body)?,
            "application/merge-patch+json" => {
                if !body.is_object() {
                    return Err(ApiError::bad_request(
                        "error decoding patch: not a JSON object",
                    ));
                }
                patch::merge_patch(&view, body)
            }
            _ => patch::strategic_merge(&view, body, &ti.kind),
        };
        check_identity(&patched, ns, name)?;
        if patched.pointer("/metadata/resourceVersion") != old.pointer("/metadata/resourceVersion")
            && patched
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::conflict(&ti.plural, &ti.group, name));
        }
        if ti.kind == "Lease"
            && let Some(msg) = validate::bad_micro_time(&patched)
        {
            let text = serde_json::to_string(&patched).unwrap_or_default();
            let c = Cause::invalid("patch", format!("Invalid value: {text:?}: {msg}"));
            let mut e = ApiError::invalid("", "", "", &[c]);
            if let Some(d) = e.body["details"].as_object_mut() {
                d.remove("kind");
            }
            return Err(e);
        }
        ops::decode_body(ti, &patched, o)
    }
}

/// A PATCH of any kind. Like the real GuaranteedUpdate loop, the patch is applied
/// again to the current object when it changed while admission ran.
async fn patch_handler(
    sh: &Arc<Shared>,
    req: &Req,
    ti: &TypeInfo,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
) -> Result<Response, ApiError> {
    let ct = req.content_type();
    let kind = match ct.as_str() {
        "application/json-patch+json"
        | "application/merge-patch+json"
        | "application/apply-patch+yaml" => ct.clone(),
        "application/strategic-merge-patch+json" if !ti.custom => ct.clone(),
        _ => {
            return Err(ApiError::unsupported_media_type(
                "415: Unsupported Media Type",
                Some(json!({})),
            ));
        }
    };
    let shape = negotiate(req.header(header::ACCEPT), false, false)?;
    let body: Value = if kind == "application/apply-patch+yaml" {
        serde_yaml::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(&format!("error decoding YAML: {e}")))?
    } else {
        serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(&format!("error decoding patch: {e}")))?
    };
    let dry = dry_run(req, "PatchOptions")?;
    let o = write_opts(req, ti, dry, sub);
    let p = PatchRequest {
        ti,
        ns,
        name,
        sub,
        kind,
        body,
        force: req.q("force") == Some("true"),
    };
    if p.is_apply() && req.q("fieldManager").is_none_or(str::is_empty) {
        return Err(ApiError::invalid(
            "PatchOptions",
            "meta.k8s.io",
            "",
            &[Cause::required("fieldManager")
                .tap_message("Required value: is required for apply patch")],
        ));
    }
    let k = key(ns, name);
    loop {
        let old = sh.lock().get(&ti.storage(), &k).cloned();
        let (candidate, warnings) = p.patched(old.as_ref(), &o)?;
        let attrs = Attributes {
            ti,
            operation: if old.is_some() {
                Operation::Update
            } else {
                Operation::Create
            },
            name,
            namespace: ns.unwrap_or_default(),
            subresource: sub,
            old: old.as_ref(),
            dry_run: dry,
            options: options(req, "PatchOptions"),
        };
        let admitted = admission::admit(sh, &attrs, candidate).await?;
        let mut st = sh.lock();
        if changed_since(&st, ti, &k, old.as_ref()) {
            continue;
        }
        let (code, out) = match &old {
            None => {
                let o = WriteOpts {
                    subresource: Some("apply".into()),
                    ..o.clone()
                };
                (201, ops::create(&mut st, ti, ns, admitted, &o)?)
            }
            Some(old) => (
                200,
                ops::update(&mut st, ti, old, admitted, &o, p.is_apply())?,
            ),
        };
        drop(st);
        sh.notify();
        return Ok(respond(code, &shaped(ti, &out, shape), &warnings));
    }
}

trait TapMessage {
    fn tap_message(self, m: &str) -> Self;
}
impl TapMessage for Cause {
    fn tap_message(mut self, m: &str) -> Self {
        self.message = m.to_string();
        self
    }
}

fn conflict_error(c: Vec<fields::Conflict>) -> ApiError {
    let msg = fields::conflict_message(&c);
    let causes: Vec<Value> = c
        .iter()
        .map(|c| {
            let who = if c.operation == "Update" {
                format!("conflict with \"{}\" using {}", c.manager, c.api_version)
            } else {
                format!("conflict with \"{}\"", c.manager)
            };
            json!({"reason": "FieldManagerConflict", "message": who, "field": fields::render(&c.path)})
        })
        .collect();
    ApiError::new(409, Some("Conflict"), &msg, Some(json!({"causes": causes})))
}

fn delete_options(req: &Req) -> Result<DeleteOpts, ApiError> {
    let body: Value = if req.body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&req.body).map_err(|e| {
            ApiError::bad_request(&format!("couldn't get version/kind; json parse error: {e}"))
        })?
    };
    let dry = dry_run(req, "DeleteOptions")?
        || body
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.contains(&json!("All")));
    Ok(DeleteOpts {
        dry_run: dry,
        uid: body
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        resource_version: body
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
        propagation: req.q("propagationPolicy").map(str::to_string).or_else(|| {
            body.get("propagationPolicy")
                .and_then(Value::as_str)
                .map(str::to_string)
        }),
    })
}

fn delete_handler(
    sh: &Arc<Shared>,
    req: &Req,
    ti: &TypeInfo,
    ns: Option<&str>,
    name: &str,
) -> Result<Response, ApiError> {
    let o = delete_options(req)?;
    let mut st = sh.lock();
    let out = ops::delete(&mut st, ti, &key(ns, name), &o)?;
    drop(st);
    sh.notify();
    Ok(respond(200, &present(ti, &out), &[]))
}

async fn delete_collection(
    sh: &Arc<Shared>,
    req: &Req,
    ti: &TypeInfo,
    ns: Option<&str>,
) -> Result<Response, ApiError> {
    let o = delete_options(req)?;
    let (label, field) = selectors(req, ti)?;
    let mut st = sh.lock();
    let matching: Vec<Value> = st
        .snapshot(&ti.storage(), None)
        .into_iter()
        .filter(|obj| selected(ti, obj, ns, &label, &field))
        .collect();
    let mut items = Vec::new();
    for obj in matching {
        let k = key_of(&obj);
        ops::delete(&mut st, ti, &k, &o)?;
        let mut item = present(ti, &obj);
        if !ti.custom
            && let Some(m) = item.as_object_mut()
        {
            m.remove("kind");
            m.remove("apiVersion");
        }
        items.push(item);
    }
    let rv = st.rv;
    drop(st);
    sh.notify();
    Ok(respond(
        200,
        &json!({"kind": format!("{}List", ti.kind), "apiVersion": ti.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
        &[],
    ))
}

fn field_supported(ti: &TypeInfo, f: &str) -> bool {
    if f == "metadata.name" || f == "metadata.namespace" {
        return true;
    }
    match ti.kind.as_str() {
        "Secret" => f == "type",
        "Namespace" => f == "status.phase",
        "Event" => {
            let core = event_field(ti, f);
            matches!(
                core.as_str(),
                "reason" | "reportingComponent" | "source" | "type"
            ) || core.strip_prefix("involvedObject.").is_some_and(|r| {
                [
                    "kind",
                    "namespace",
                    "name",
                    "uid",
                    "apiVersion",
                    "resourceVersion",
                    "fieldPath",
                ]
                .contains(&r)
            })
        }
        _ => false,
    }
}

fn event_field(ti: &TypeInfo, f: &str) -> String {
    if ti.group != "events.k8s.io" {
        return f.to_string();
    }
    if let Some(r) = f.strip_prefix("regarding.") {
        return format!("involvedObject.{r}");
    }
    match f {
        "reportingController" => "reportingComponent".into(),
        "deprecatedSource" => "source".into(),
        _ => f.to_string(),
    }
}

fn selectors(req: &Req, ti: &TypeInfo) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let label = LabelSelector::parse(req.q("labelSelector").unwrap_or_default())
        .map_err(|e| ApiError::bad_request(&e))?;
    let field = FieldSelector::parse(req.q("fieldSelector").unwrap_or_default(), &|f| {
        field_supported(ti, f)
    })
    .map_err(|e| ApiError::bad_request(&e))?;
    Ok((label, field))
}

fn selected(
    ti: &TypeInfo,
    obj: &Value,
    ns: Option<&str>,
    label: &LabelSelector,
    field: &FieldSelector,
) -> bool {
    if let Some(ns) = ns
        && obj.pointer("/metadata/namespace").and_then(Value::as_str) != Some(ns)
    {
        return false;
    }
    label.matches(obj)
        && field.matches(obj, &|o, f| {
            let f = event_field(ti, f);
            let ptr = format!("/{}", f.replace('.', "/"));
            o.pointer(&ptr)
                .and_then(Value::as_str)
                .unwrap_or(if f == "status.phase" { "Active" } else { "" })
                .to_string()
        })
}

fn parse_int(v: Option<&str>) -> Result<Option<i64>, ApiError> {
    match v {
        None | Some("") => Ok(None),
        Some(s) => s.parse::<i64>().map(Some).map_err(|_| {
            ApiError::bad_request(&format!(
                "strconv.ParseInt: parsing \"{s}\": invalid syntax"
            ))
        }),
    }
}

fn parse_rv(v: Option<&str>) -> Result<Option<u64>, ApiError> {
    match v {
        None | Some("") => Ok(None),
        Some(s) => s.parse::<u64>().map(Some).map_err(|_| {
            ApiError::internal(&format!("resourceVersion: Invalid value: \"{s}\": strconv.ParseUint: parsing \"{s}\": invalid syntax"))
        }),
    }
}

fn encode_continue(rv: u64, start: &str) -> String {
    let tok = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{start}\u{0}")});
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&tok).unwrap_or_default())
}

fn decode_continue(s: &str) -> Result<(u64, String), ApiError> {
    let bad = || ApiError::bad_request("invalid continue token: continue key is not valid");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    Ok((
        rv,
        start
            .trim_end_matches('\u{0}')
            .trim_start_matches('/')
            .to_string(),
    ))
}

fn list_key(obj: &Value) -> String {
    let (ns, name) = key_of(obj);
    if ns.is_empty() {
        name
    } else {
        format!("{ns}/{name}")
    }
}

async fn list_handler(
    sh: &Arc<Shared>,
    req: &Req,
    ti: &TypeInfo,
    ns: Option<&str>,
) -> Result<Response, ApiError> {
    let shape = negotiate(req.header(header::ACCEPT), true, false)?;
    let (label, field) = selectors(req, ti)?;
    let limit = parse_int(req.q("limit"))?.filter(|l| *l > 0);
    parse_int(req.q("timeoutSeconds"))?;
    let rv = parse_rv(req.q("resourceVersion"))?;
    let rv_match = req.q("resourceVersionMatch").filter(|s| !s.is_empty());
    if rv_match.is_some() && rv.is_none() {
        return Err(ApiError::invalid(
            "ListOptions",
            "meta.k8s.io",
            "",
            &[Cause::new(
                "FieldValueForbidden",
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
            )],
        ));
    }
    let cont = req.q("continue").filter(|s| !s.is_empty());
    if let (Some(want), None) = (rv.filter(|r| *r > 0), cont)
        && rv_match != Some("Exact")
    {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut tick = sh.tick.subscribe();
        while sh.lock().rv < want {
            if tokio::time::timeout_at(deadline, tick.changed())
                .await
                .is_err()
            {
                let cur = sh.lock().rv;
                return Err(ApiError::new(
                    504,
                    Some("Timeout"),
                    &format!("Timeout: Too large resource version: {want}, current: {cur}"),
                    Some(
                        json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}),
                    ),
                ));
            }
        }
    }
    let st = sh.lock();
    let (at, start) = if let Some(c) = cont {
        let (crv, start) = decode_continue(c)?;
        if crv < st.compacted {
            let mut e = ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
            );
            e.body["metadata"] = json!({"continue": encode_continue(st.rv, &start)});
            return Err(e);
        }
        (Some(crv), Some(start))
    } else if rv_match == Some("Exact") {
        let r = rv.unwrap_or_default();
        let in_cache = r >= st.watch_floor && r >= ti.cache_start;
        if !in_cache && r < st.compacted {
            return Err(ApiError::expired(
                "The resourceVersion for the provided list is too old.",
            ));
        }
        (Some(r), None)
    } else {
        (None, None)
    };
    let snapshot_rv = at.unwrap_or(st.rv);
    let all: Vec<Value> = st
        .snapshot(&ti.storage(), at)
        .into_iter()
        .filter(|o| selected(ti, o, ns, &label, &field))
        .filter(|o| start.as_ref().is_none_or(|s| list_key(o) > *s))
        .collect();
    drop(st);
    let total = all.len();
    let take = limit.map(|l| l as usize).unwrap_or(total).min(total);
    let page: Vec<Value> = all[..take].to_vec();
    let mut meta = json!({"resourceVersion": snapshot_rv.to_string()});
    if take < total {
        meta["continue"] = json!(encode_continue(snapshot_rv, &list_key(&page[take - 1])));
        meta["remainingItemCount"] = json!(total - take);
    } else if ti.custom {
        meta["continue"] = json!("");
    }
    let items: Vec<Value> = page
        .iter()
        .map(|o| match shape {
            Shape::Meta(v) => to_meta(o, v),
            _ => {
                let mut p = present(ti, o);
                if !ti.custom
                    && let Some(m) = p.as_object_mut()
                {
                    m.remove("kind");
                    m.remove("apiVersion");
                }
                p
            }
        })
        .collect();
    let body = match shape {
        Shape::Meta(v) => {
            json!({"kind": "PartialObjectMetadataList", "apiVersion": format!("meta.k8s.io/{v}"), "metadata": meta, "items": items})
        }
        _ => {
            json!({"kind": format!("{}List", ti.kind), "apiVersion": ti.api_version(), "metadata": meta, "items": items})
        }
    };
    Ok(respond(200, &body, &[]))
}

struct WatchSpec {
    ti: TypeInfo,
    ns: Option<String>,
    label: LabelSelector,
    field: FieldSelector,
    shape: Shape,
    rv: Option<u64>,
    initial: bool,
    bookmarks: bool,
    timeout: Option<Duration>,
}

async fn watch_handler(
    sh: &Arc<Shared>,
    req: &Req,
    ti: &TypeInfo,
    ns: Option<&str>,
) -> Result<Response, ApiError> {
    let (label, field) = selectors(req, ti)?;
    let rv = parse_rv(req.q("resourceVersion"))?;
    let timeout = parse_int(req.q("timeoutSeconds"))?
        .filter(|t| *t > 0)
        .map(|t| Duration::from_secs(t as u64));
    let send_initial = req.q("sendInitialEvents") == Some("true");
    let rv_match = req.q("resourceVersionMatch").filter(|s| !s.is_empty());
    if send_initial && rv_match != Some("NotOlderThan") {
        return Err(ApiError::invalid(
            "ListOptions",
            "meta.k8s.io",
            "",
            &[Cause::new(
                "FieldValueForbidden",
                "resourceVersionMatch",
                "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            )],
        ));
    }
    let shape = negotiate(req.header(header::ACCEPT), false, true)?;
    let bookmarks = req.q("allowWatchBookmarks") == Some("true");
    let initial = send_initial || rv.is_none_or(|r| r == 0);
    let spec = WatchSpec {
        ti: ti.clone(),
        ns: ns.map(str::to_string),
        label,
        field,
        shape,
        rv: rv.filter(|r| *r > 0),
        initial,
        bookmarks,
        timeout,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    if shape != Shape::EmptyWatch {
        tokio::spawn(run_watch(sh.clone(), spec, tx));
    }
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

fn expired_event(rv: u64, oldest: u64) -> Value {
    json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("too old resource version: {rv} ({oldest})"), "reason": "Expired", "code": 410}})
}

async fn run_watch(sh: Arc<Shared>, spec: WatchSpec, tx: mpsc::Sender<Bytes>) {
    let ti = &spec.ti;
    let storage = ti.storage();
    let ns = spec.ns.as_deref();
    let matches = |o: &Value| selected(ti, o, ns, &spec.label, &spec.field);
    let bookmark = |rv: u64, end: bool| {
        let (kind, av) = match spec.shape {
            Shape::Meta(v) => (
                "PartialObjectMetadata".to_string(),
                format!("meta.k8s.io/{v}"),
            ),
            _ => (ti.kind.clone(), ti.api_version()),
        };
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": av, "metadata": meta}})
    };
    let mut tick = sh.tick.subscribe();
    let (mut pos, epoch, start_rv, out, expired) = {
        let st = sh.lock();
        let mut out = Vec::new();
        let mut expired = None;
        if let Some(r) = spec.rv {
            let oldest = st.watch_floor.max(ti.cache_start);
            if r < oldest {
                expired = Some(expired_event(r, oldest));
            }
        }
        let (pos, start_rv) = if spec.initial {
            for o in st.snapshot(&storage, None).iter().filter(|o| matches(o)) {
                out.push(json!({"type": "ADDED", "object": shaped(ti, o, spec.shape)}));
            }
            if spec.bookmarks {
                out.push(bookmark(st.rv, true));
            }
            (st.history.len(), st.rv)
        } else {
            let r = spec.rv.unwrap_or(st.rv);
            (st.history.partition_point(|e| e.rv <= r), r)
        };
        (pos, st.watch_epoch, start_rv, out, expired)
    };
    if let Some(e) = expired {
        let _ = tx.send(line(&e)).await;
        return;
    }
    for e in out {
        if tx.send(line(&e)).await.is_err() {
            return;
        }
    }
    let deadline = spec.timeout.map(|t| Instant::now() + t);
    let mut next_bookmark = match (spec.bookmarks, deadline) {
        (true, Some(d)) => Some(d.checked_sub(Duration::from_secs(2)).unwrap_or(d)),
        _ => None,
    };
    loop {
        let mut out = Vec::new();
        let mut expired = None;
        {
            let st = sh.lock();
            if st.watch_epoch != epoch {
                expired = Some(expired_event(spec.rv.unwrap_or(start_rv), st.watch_floor));
            }
            for e in &st.history[pos..] {
                if e.storage != storage {
                    continue;
                }
                let now_in = matches(&e.obj);
                let was_in = e.prev.as_ref().is_some_and(&matches);
                let ty = match e.kind {
                    EventType::Added if now_in => "ADDED",
                    EventType::Deleted if was_in || now_in => "DELETED",
                    EventType::Modified => {
                        match (was_in, now_in) {
                            (true, true) => "MODIFIED",
                            (true, false) => {
                                let mut last = e.prev.clone().unwrap_or_default();
                                crate::store::set_rv(&mut last, e.rv);
                                out.push(json!({"type": "DELETED", "object": shaped(ti, &last, spec.shape)}));
                                continue;
                            }
                            (false, true) => "ADDED",
                            _ => continue,
                        }
                    }
                    _ => continue,
                };
                out.push(json!({"type": ty, "object": shaped(ti, &e.obj, spec.shape)}));
            }
            pos = st.history.len();
        }
        if let Some(e) = expired {
            let _ = tx.send(line(&e)).await;
            return;
        }
        for e in out {
            if tx.send(line(&e)).await.is_err() {
                return;
            }
        }
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            r = tick.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)) => return,
            _ = tokio::time::sleep_until(next_bookmark.unwrap_or(far)) => {
                let cur = sh.lock().rv;
                if cur > start_rv && tx.send(line(&bookmark(cur, false))).await.is_err() {
                    return;
                }
                next_bookmark = next_bookmark
                    .map(|b| b + Duration::from_secs(1))
                    .filter(|b| deadline.is_some_and(|d| *b + Duration::from_millis(500) < d));
            }
            _ = tx.closed() => return,
        }
    }
}

fn token_handler(sh: &Arc<Shared>, req: &Req, ns: &str, name: &str) -> Result<Response, ApiError> {
    let ti = TypeInfo::builtin(
        "authentication.k8s.io",
        "tokenrequests",
        "TokenRequest",
        true,
    );
    let body = parse_json_body(req, &ti)?;
    let st = sh.lock();
    if st.namespace_phase(ns).is_none() {
        return Err(ApiError::not_found("namespaces", "", ns));
    }
    let sa = st
        .get("serviceaccounts", &key(Some(ns), name))
        .cloned()
        .ok_or_else(|| ApiError::not_found("serviceaccounts", "", name))?;
    let spec = body.get("spec").cloned().unwrap_or(json!({}));
    let audiences = spec
        .get("audiences")
        .filter(|a| a.as_array().is_some_and(|a| !a.is_empty()))
        .cloned()
        .unwrap_or(json!(["https://kubernetes.default.svc"]));
    let secs = spec
        .get("expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(3600);
    if secs < 600 {
        return Err(ApiError::invalid(
            "TokenRequest",
            "authentication.k8s.io",
            "",
            &[Cause::invalid(
                "spec.expirationSeconds",
                format!("Invalid value: {secs}: may not specify a duration less than 10 minutes"),
            )],
        ));
    }
    let bound = spec.get("boundObjectRef").cloned().unwrap_or(Value::Null);
    if let Some(kind) = bound.get("kind").and_then(Value::as_str) {
        let bname = bound
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let plural = match kind {
            "Secret" => "secrets",
            "Pod" => "pods",
            _ => "",
        };
        if st.get(plural, &key(Some(ns), bname)).is_none() {
            return Err(ApiError::not_found(plural, "", bname));
        }
    }
    let iat = chrono::Utc::now().timestamp();
    let claims = json!({
        "aud": audiences, "exp": iat + secs, "iat": iat, "iss": "https://kubernetes.default.svc",
        "jti": format!("standin-{iat}-{}", st.rv), "nbf": iat,
        "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": name, "uid": sa["metadata"]["uid"]}},
        "sub": format!("system:serviceaccount:{ns}:{name}"),
    });
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let token = format!(
        "{}.{}.{}",
        b64.encode(br#"{"alg":"RS256","kid":"standin"}"#),
        b64.encode(serde_json::to_vec(&claims).unwrap_or_default()),
        b64.encode(b"standin-signature")
    );
    let exp = chrono::DateTime::from_timestamp(iat + secs, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let out = json!({
        "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "uid": sa["metadata"]["uid"], "creationTimestamp": now()},
        "spec": {"audiences": audiences, "expirationSeconds": secs, "boundObjectRef": bound},
        "status": {"token": token, "expirationTimestamp": exp},
    });
    Ok(respond(201, &out, &[]))
}

/// Used by the direct API: the present form of a stored object.
pub fn present_for(ti: &TypeInfo, obj: &Value) -> Value {
    present(ti, obj)
}
