//! Replays the recorded kube-apiserver 1.36 corpus (`tests/standin/corpus/*.json`, a copy of `shared/apiserver`)
//! against fresh stand-ins, one per group, and reports every mismatch per group.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use regbridge_standin::StandIn;
use serde_json::{Value, json};

/// Exchanges not replayed, each with the reason.
const SKIP: &[(&str, &str)] = &[
    (
        "server-01-version",
        "environment only: the server's build info",
    ),
    ("server-02-readyz", "environment only"),
    (
        "server-03-discovery-core",
        "environment only: server address",
    ),
    (
        "server-05-discovery-coordination",
        "environment only: full discovery document",
    ),
    (
        "server-06-discovery-events",
        "environment only: full discovery document",
    ),
    (
        "serviceaccounts-02-default-sa-absent",
        "environment only: no controller manager",
    ),
    ("errors-39-accept-protobuf", "protobuf is not served"),
    (
        "errors-15-duplicate-field-default",
        "duplicate JSON keys are not detected by serde_json",
    ),
    (
        "errors-17-post-yaml",
        "raw YAML body shape differs only in warnings",
    ),
];

/// Cluster-wide lists that saw other groups' objects: compare the shape only.
const SHAPE_ONLY: &[&str] = &["namespaces-26", "namespaces-27", "metadata-20"];

/// Object fields whose values are not compared.
const IGNORED: &[&str] = &[
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "managedFields",
    "eventTime",
    "expirationTimestamp",
    "token",
    "continue",
    "lastTransitionTime",
    "time",
    "message",
    "storageVersionHash",
    "serverAddressByClientCIDRs",
    "remainingItemCount",
    "renewTime",
    "acquireTime",
    "lastObservedTime",
    "jti",
];

/// This crate's directory, read at run time: a binary built in another
/// checkout sharing the target dir must still look in this one.
fn crate_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
}

/// The corpus replayed: the copy in `tests/standin/corpus/`, so a bare
/// clone passes, or `REGBRIDGE_APISERVER_CORPUS`.
fn corpus_dir() -> PathBuf {
    match std::env::var("REGBRIDGE_APISERVER_CORPUS") {
        Ok(d) => PathBuf::from(d),
        Err(_) => crate_dir().join("corpus"),
    }
}

/// `shared/apiserver` beside the repository is where the corpus is
/// refreshed from. When it is there, the copy must equal it, so a refreshed
/// recording is never replayed stale.
#[test]
fn the_copy_is_the_shared_corpus_when_that_is_present() {
    let shared = crate_dir().join("../../../shared/apiserver");
    if !shared.is_dir() {
        eprintln!(
            "no {} beside the repository; the copy stands",
            shared.display()
        );
        return;
    }
    let names = |dir: &std::path::Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let copy = crate_dir().join("corpus");
    assert_eq!(names(&copy), names(&shared), "the same files");
    for name in names(&shared) {
        assert!(
            std::fs::read(copy.join(&name)).unwrap() == std::fs::read(shared.join(&name)).unwrap(),
            "{name} differs from shared/apiserver: refresh it with `cp ../shared/apiserver/* tests/standin/corpus/`"
        );
    }
}

fn get_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, k| match cur {
        Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => cur.get(k),
    })
}

fn set_path(v: &mut Value, path: &str, value: Value) {
    let parts: Vec<&str> = path
        .split('.')
        .map(|p| p.trim_start_matches('[').trim_end_matches(']'))
        .collect();
    let mut cur = v;
    for k in &parts[..parts.len() - 1] {
        cur = match cur {
            Value::Array(a) => &mut a[k.parse::<usize>().expect("index")],
            _ => cur.get_mut(*k).expect("path exists"),
        };
    }
    let last = parts[parts.len() - 1];
    match cur {
        Value::Array(a) => a[last.parse::<usize>().expect("index")] = value,
        _ => cur[last] = value,
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn build(url: &str, req: &Value) -> hyper::Request<Full<Bytes>> {
    let q: Vec<String> = req["query"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{}={}", enc(k), enc(v.as_str().unwrap_or_default())))
                .collect()
        })
        .unwrap_or_default();
    let uri = format!(
        "{url}{}{}{}",
        req["path"].as_str().unwrap_or("/"),
        if q.is_empty() { "" } else { "?" },
        q.join("&")
    );
    let mut b = hyper::Request::builder()
        .method(req["method"].as_str().unwrap_or("GET"))
        .uri(uri)
        .header("user-agent", "regbridge-recorder/1.0");
    if let Some(ct) = req["content_type"].as_str() {
        b = b.header("content-type", ct);
    }
    if let Some(a) = req["accept"].as_str() {
        b = b.header("accept", a);
    }
    let body = match (&req["body"], req["body_encoding"].as_str()) {
        (Value::Null, _) => Bytes::new(),
        (Value::String(s), Some("raw")) => Bytes::from(s.clone()),
        (v, _) => Bytes::from(serde_json::to_vec(v).expect("json")),
    };
    b.body(Full::new(body)).expect("request")
}

async fn send(client: &HttpClient, url: &str, req: &Value) -> Value {
    let resp = client.request(build(url, req)).await.expect("send");
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    json!({"status": status, "content_type": ct, "body": body})
}

async fn open_watch(
    client: &HttpClient,
    url: &str,
    req: &Value,
    read_for: Duration,
) -> (u16, Vec<Value>, bool) {
    let resp = client.request(build(url, req)).await.expect("send");
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let deadline = tokio::time::Instant::now() + read_for;
    let mut buf = Vec::new();
    let mut closed = false;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    buf.extend_from_slice(d);
                }
            }
            Ok(_) => {
                closed = true;
                break;
            }
            Err(_) => break,
        }
    }
    let events = buf
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    (status, events, closed)
}

fn compare(want: &Value, got: &Value, path: &str, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            let keys: BTreeSet<&String> = w.keys().chain(g.keys()).collect();
            for k in keys {
                if IGNORED.contains(&k.as_str()) || (k == "name" && w.contains_key("generateName"))
                {
                    continue;
                }
                let (wv, gv) = (
                    w.get(k).unwrap_or(&Value::Null),
                    g.get(k).unwrap_or(&Value::Null),
                );
                compare(wv, gv, &format!("{path}.{k}"), out);
            }
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            for (i, (a, b)) in w.iter().zip(g).enumerate() {
                compare(a, b, &format!("{path}[{i}]"), out);
            }
        }
        _ if want != got => out.push(format!("{path}: want {} got {}", short(want), short(got))),
        _ => {}
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 120 {
        format!("{}…", &s[..120])
    } else {
        s
    }
}

fn causes(v: &Value) -> BTreeSet<(String, String)> {
    v.pointer("/details/causes")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|c| {
                    (
                        c["reason"].as_str().unwrap_or_default().into(),
                        c["field"].as_str().unwrap_or_default().into(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn compare_body(id: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    if want.get("kind") == Some(&json!("Status")) {
        for k in ["kind", "status", "reason", "code"] {
            if want.get(k) != got.get(k) {
                out.push(format!(
                    "{k}: want {} got {}",
                    short(&want[k]),
                    short(&got[k])
                ));
            }
        }
        for k in ["name", "group", "kind"] {
            if k == "name" && id.contains("generate-name") {
                continue;
            }
            let (w, g) = (
                want.pointer(&format!("/details/{k}")),
                got.pointer(&format!("/details/{k}")),
            );
            if w != g {
                out.push(format!("details.{k}: want {w:?} got {g:?}"));
            }
        }
        if causes(want) != causes(got) {
            out.push(format!(
                "causes: want {:?} got {:?}",
                causes(want),
                causes(got)
            ));
        }
        return;
    }
    if SHAPE_ONLY.iter().any(|p| id.starts_with(p)) {
        for k in ["kind", "apiVersion"] {
            if want.get(k) != got.get(k) {
                out.push(format!(
                    "{k}: want {} got {}",
                    short(&want[k]),
                    short(&got[k])
                ));
            }
        }
        return;
    }
    let (mut w, mut g) = (want.clone(), got.clone());
    // Generated names are not compared.
    if want.pointer("/metadata/generateName").is_some() {
        w["metadata"]["name"] = Value::Null;
        g["metadata"]["name"] = Value::Null;
    }
    compare(&w, &g, "", out);
}

fn base64_digits(i: u32) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(i.to_string())
}

async fn replay(file: PathBuf) -> (String, usize, Vec<String>) {
    let group = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let exchanges: Vec<Value> =
        serde_json::from_slice(&std::fs::read(&file).expect("read corpus")).expect("corpus json");
    let server = StandIn::start().await;
    let url = server.url();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let skip: HashSet<&str> = SKIP.iter().map(|(id, _)| *id).collect();
    let by_id: HashMap<String, Value> = exchanges
        .iter()
        .map(|e| (e["id"].as_str().unwrap_or_default().to_string(), e.clone()))
        .collect();
    let mut answers: HashMap<String, Value> = HashMap::new();
    let mut done: HashSet<String> = HashSet::new();
    let mut problems = Vec::new();
    let mut checked = 0;

    let prepare = |e: &Value, answers: &HashMap<String, Value>| -> Value {
        let mut req = e["request"].clone();
        for d in e["derived"].as_array().into_iter().flatten() {
            let from = d["from"].as_str().unwrap_or_default();
            if let Some(v) = answers
                .get(from)
                .and_then(|a| get_path(a, d["path"].as_str().unwrap_or_default()))
            {
                let mut wrapper =
                    json!({"query": req["query"].clone(), "body": req["body"].clone()});
                set_path(
                    &mut wrapper,
                    d["at"].as_str().unwrap_or_default(),
                    v.clone(),
                );
                req["query"] = wrapper["query"].take();
                req["body"] = wrapper["body"].take();
            }
        }
        req
    };

    for e in &exchanges {
        let id = e["id"].as_str().unwrap_or_default().to_string();
        if done.contains(&id) {
            continue;
        }
        if id == "watch-expiry-15-probe-list-compacted-exact" {
            server.compact();
        }
        if id == "watch-expiry-20-watch-expired-rv" {
            // The recorder's 100 out-of-band writes to the churn Secret, then the
            // watch cache dropping R_old.
            let secrets = regbridge_standin::Resource::SECRETS;
            for i in 0..100 {
                let mut s = server
                    .get(&secrets, Some("rec-expiry"), "churn")
                    .expect("churn secret");
                s["data"]["k"] = json!(base64_digits(i));
                server
                    .update(&secrets, Some("rec-expiry"), s)
                    .expect("churn write");
            }
            server.expire_watches();
        }
        let req = prepare(e, &answers);
        let resp = &e["response"];
        let mut diffs = Vec::new();
        if let Some(want_events) = resp["events"].as_array() {
            let elapsed = resp["elapsed_s"].as_f64().unwrap_or(1.5);
            let closed_by_server = resp["closed_by_server"].as_bool().unwrap_or(false);
            let read_for = if closed_by_server {
                elapsed + 0.5
            } else {
                elapsed.min(1.0)
            };
            let during: Vec<String> = e["during"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d.as_str().map(String::from))
                .collect();
            let (watch_result, during_answers) = if during.is_empty() {
                (
                    open_watch(&client, &url, &req, Duration::from_secs_f64(read_for)).await,
                    Vec::new(),
                )
            } else {
                let handle = tokio::spawn({
                    let client = client.clone();
                    let url = url.clone();
                    async move {
                        open_watch(&client, &url, &req, Duration::from_secs_f64(read_for)).await
                    }
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut outs = Vec::new();
                for d in &during {
                    let de = &by_id[d];
                    let dreq = prepare(de, &answers);
                    let a = send(&client, &url, &dreq).await;
                    answers.insert(d.clone(), a.clone());
                    outs.push((d.clone(), a));
                }
                (handle.await.expect("watch task"), outs)
            };
            let (status, got_events, closed) = watch_result;
            if status != resp["status"].as_u64().unwrap_or(0) as u16 {
                diffs.push(format!("status: want {} got {status}", resp["status"]));
            }
            let sig = |ev: &Value| {
                format!(
                    "{} {} {}",
                    ev["type"].as_str().unwrap_or_default(),
                    ev["object"]["kind"].as_str().unwrap_or_default(),
                    ev["object"]["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                )
            };
            let want_sig: Vec<String> = want_events.iter().map(sig).collect();
            let got_sig: Vec<String> = got_events.iter().map(sig).collect();
            if want_sig != got_sig {
                diffs.push(format!("events: want {want_sig:?} got {got_sig:?}"));
            } else {
                for (i, (w, g)) in want_events.iter().zip(&got_events).enumerate() {
                    let mut d = Vec::new();
                    compare_body(&id, &w["object"], &g["object"], &mut d);
                    diffs.extend(d.into_iter().map(|x| format!("event[{i}] {x}")));
                }
            }
            if closed_by_server && !closed {
                diffs.push("stream: want closed by server, still open".into());
            }
            if !closed_by_server && closed {
                diffs.push("stream: want open, closed by server".into());
            }
            for (d, a) in during_answers {
                done.insert(d.clone());
                if skip.contains(d.as_str()) {
                    continue;
                }
                checked += 1;
                let dr = &by_id[&d]["response"];
                let mut dd = Vec::new();
                if a["status"] != dr["status"] {
                    dd.push(format!("status: want {} got {}", dr["status"], a["status"]));
                }
                compare_body(&d, &dr["body"], &a["body"], &mut dd);
                problems.extend(dd.into_iter().map(|x| format!("{d}: {x}")));
            }
        } else {
            let a = send(&client, &url, &req).await;
            answers.insert(id.clone(), a.clone());
            if skip.contains(id.as_str()) {
                continue;
            }
            if a["status"] != resp["status"] {
                diffs.push(format!(
                    "status: want {} got {}",
                    resp["status"], a["status"]
                ));
            }
            if resp["body"].is_object() || a["body"].is_object() {
                compare_body(&id, &resp["body"], &a["body"], &mut diffs);
            }
        }
        if skip.contains(id.as_str()) {
            continue;
        }
        checked += 1;
        problems.extend(diffs.into_iter().map(|x| format!("{id}: {x}")));
    }
    (group, checked, problems)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corpus_conformance() {
    let dir = corpus_dir();
    assert!(
        dir.is_dir(),
        "the API server corpus is missing at {}: it lives in tests/standin/corpus (or set REGBRIDGE_APISERVER_CORPUS)",
        dir.display()
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read corpus dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus files in {}", dir.display());
    let tasks: Vec<_> = files.into_iter().map(|f| tokio::spawn(replay(f))).collect();
    let mut report = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (group, checked, problems) = t.await.expect("group task");
        report.push(format!(
            "{group}: {checked} exchanges checked, {} mismatches",
            problems.len()
        ));
        failed += problems.len();
        for p in problems {
            report.push(format!("  {p}"));
        }
    }
    let text = report.join("\n");
    println!("{text}");
    assert_eq!(failed, 0, "corpus mismatches:\n{text}");
}
