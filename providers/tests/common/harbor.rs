//! A loopback server that follows Harbor's v2 robot API
//! (`/api/v2.0/robots`) as documented in Harbor's swagger and as NOTES.md
//! records its behaviour:
//! - `POST /robots` → 201 with `Location` and `{id, name: "robot$...", secret,
//!   creation_time, expires_at}`; a supplied secret is ignored; 409 when the
//!   name is taken; project robots are stored as `<project>+<name>`;
//!   `duration` is in days, -1 for never;
//! - `GET /robots?q=name=<stored name>` lists matches, without secrets;
//! - `PATCH /robots/{id}` with `{"secret": ""}` generates and returns a new
//!   secret, and the old one stops working;
//! - `DELETE /robots/{id}`; 404 for unknown ids;
//! - 401 without basic auth or with wrong basic auth.
//!
//! A real Harbor needs a dozen containers and a database, which this test
//! environment cannot run; the server here keeps exactly the state the robot
//! API exposes, plus switches to inject 5xx answers and delays. The provider
//! tests and the controller tests share it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use serde_json::{Value, json};

pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "Harbor12345-admin-never-leaks";

#[derive(Clone, Debug)]
pub struct Robot {
    pub id: i64,
    /// As stored: `<name>` or `<project>+<name>`.
    pub stored: String,
    pub description: String,
    pub level: String,
    pub permissions: Value,
    pub secret: String,
    pub expires_at: i64,
}

#[derive(Default)]
pub struct Harbor {
    pub robots: BTreeMap<i64, Robot>,
    pub next_id: i64,
    pub secrets_issued: u64,
    /// Answer the next N requests with 503.
    pub fail_next: u32,
    /// Sleep this long before answering.
    pub delay: Option<Duration>,
    /// Method and path of every authenticated request, in order.
    pub log: Vec<String>,
    pub last_create_body: Option<Value>,
    /// Pad every list answer with this many bytes of whitespace.
    pub pad_lists: usize,
}

impl Harbor {
    fn new_secret(&mut self) -> String {
        self.secrets_issued += 1;
        format!("Gen{}Secret{}x", self.secrets_issued, self.next_id)
    }

    /// Whether a registry login with these credentials would succeed.
    pub fn accepts(&self, username: &str, password: &str) -> bool {
        self.robots
            .values()
            .any(|r| format!("robot${}", r.stored) == username && r.secret == password)
    }

    pub fn seed(&mut self, stored: &str, description: &str) -> i64 {
        self.next_id += 1;
        let id = self.next_id;
        let secret = self.new_secret();
        self.robots.insert(
            id,
            Robot {
                id,
                stored: stored.into(),
                description: description.into(),
                level: "system".into(),
                permissions: json!([]),
                secret,
                expires_at: -1,
            },
        );
        id
    }
}

pub type Shared = Arc<Mutex<Harbor>>;

fn errors(status: StatusCode, code: &str) -> Response {
    (
        status,
        axum::Json(json!({"errors": [{"code": code, "message": code.to_lowercase()}]})),
    )
        .into_response()
}

/// Auth, fault injection and logging, shared by every handler.
async fn gate(h: &Shared, headers: &HeaderMap, what: String) -> Result<(), Response> {
    let delay = h.lock().unwrap().delay;
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let expected = format!(
        "Basic {}",
        STANDARD.encode(format!("{ADMIN_USER}:{ADMIN_PASSWORD}"))
    );
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if auth != Some(expected.as_str()) {
        return Err(errors(StatusCode::UNAUTHORIZED, "UNAUTHORIZED"));
    }
    let mut g = h.lock().unwrap();
    if g.fail_next > 0 {
        g.fail_next -= 1;
        return Err(errors(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
        ));
    }
    g.log.push(what);
    Ok(())
}

fn listed(r: &Robot) -> Value {
    json!({
        "id": r.id,
        "name": format!("robot${}", r.stored),
        "description": r.description,
        "level": r.level,
        "duration": -1,
        "disable": false,
        "expires_at": r.expires_at,
        "permissions": r.permissions,
        "creation_time": "2026-11-01T00:00:00.000Z",
        "update_time": "2026-11-01T00:00:00.000Z",
    })
}

async fn create(
    State(h): State<Shared>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Err(r) = gate(&h, &headers, "POST /robots".into()).await {
        return r;
    }
    let mut g = h.lock().unwrap();
    g.last_create_body = Some(body.clone());
    let name = body["name"].as_str().unwrap_or_default().to_owned();
    let level = body["level"].as_str().unwrap_or_default().to_owned();
    let stored = if level == "project" {
        format!(
            "{}+{name}",
            body["permissions"][0]["namespace"]
                .as_str()
                .unwrap_or_default()
        )
    } else {
        name
    };
    if g.robots.values().any(|r| r.stored == stored) {
        return errors(StatusCode::CONFLICT, "CONFLICT");
    }
    g.next_id += 1;
    let id = g.next_id;
    // Harbor ignores a supplied secret and always generates one.
    let secret = g.new_secret();
    let duration = body["duration"].as_i64().unwrap_or(-1);
    let expires_at = if duration == -1 {
        -1
    } else {
        Utc::now().timestamp() + duration * 86_400
    };
    let robot = Robot {
        id,
        stored: stored.clone(),
        description: body["description"].as_str().unwrap_or_default().into(),
        level,
        permissions: body["permissions"].clone(),
        secret: secret.clone(),
        expires_at,
    };
    g.robots.insert(id, robot);
    (
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/v2.0/robots/{id}"))],
        axum::Json(json!({
            "id": id,
            "name": format!("robot${stored}"),
            "secret": secret,
            "creation_time": Utc::now().to_rfc3339(),
            "expires_at": expires_at,
        })),
    )
        .into_response()
}

async fn list(
    State(h): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if let Err(r) = gate(
        &h,
        &headers,
        format!("GET /robots?q={}", q.get("q").cloned().unwrap_or_default()),
    )
    .await
    {
        return r;
    }
    let g = h.lock().unwrap();
    let wanted = q
        .get("q")
        .and_then(|q| q.strip_prefix("name="))
        .map(str::to_owned);
    let items: Vec<Value> = g
        .robots
        .values()
        .filter(|r| wanted.as_deref().is_none_or(|w| r.stored == w))
        .map(listed)
        .collect();
    let body = format!("{}{}", Value::Array(items.clone()), " ".repeat(g.pad_lists));
    (
        [
            ("X-Total-Count", items.len().to_string()),
            ("Content-Type", "application/json".into()),
        ],
        body,
    )
        .into_response()
}

async fn refresh(
    State(h): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if let Err(r) = gate(&h, &headers, format!("PATCH /robots/{id}")).await {
        return r;
    }
    let mut g = h.lock().unwrap();
    if !g.robots.contains_key(&id) {
        return errors(StatusCode::NOT_FOUND, "NOT_FOUND");
    }
    let supplied = body["secret"].as_str().unwrap_or_default().to_owned();
    let (secret, echo) = if supplied.is_empty() {
        (g.new_secret(), true)
    } else {
        (supplied, false)
    };
    g.robots.get_mut(&id).expect("checked").secret = secret.clone();
    if echo {
        axum::Json(json!({"secret": secret})).into_response()
    } else {
        axum::Json(json!({})).into_response()
    }
}

async fn delete(State(h): State<Shared>, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    if let Err(r) = gate(&h, &headers, format!("DELETE /robots/{id}")).await {
        return r;
    }
    match h.lock().unwrap().robots.remove(&id) {
        Some(_) => StatusCode::OK.into_response(),
        None => errors(StatusCode::NOT_FOUND, "NOT_FOUND"),
    }
}

/// Serves the robot API on a loopback port; its state, and the base URL.
pub async fn serve() -> (Shared, String) {
    let harbor: Shared = Arc::default();
    let app = Router::new()
        .route("/api/v2.0/robots", get(list).post(create))
        .route("/api/v2.0/robots/{id}", patch(refresh).delete(delete))
        .with_state(harbor.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (harbor, format!("http://{addr}"))
}
