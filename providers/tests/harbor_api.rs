//! The `harbor` provider against a loopback server that follows Harbor's v2
//! robot API (`/api/v2.0/robots`) as documented in Harbor's swagger and as
//! NOTES.md records its behaviour:
//! - `POST /robots` → 201 with `Location` and `{id, name: "robot$...", secret,
//!   creation_time, expires_at}`; a supplied secret is ignored; 409 when the
//!   name is taken; project robots are stored as `<project>+<name>`;
//! - `GET /robots?q=name=<stored name>` lists matches, without secrets;
//! - `PATCH /robots/{id}` with `{"secret": ""}` generates and returns a new
//!   secret, and the old one stops working;
//! - `DELETE /robots/{id}`; 404 for unknown ids;
//! - 401 without basic auth or with wrong basic auth.
//!
//! A real Harbor needs a dozen containers and a database, which this test
//! environment cannot run; the server here keeps exactly the state the robot
//! API exposes, plus switches to inject 5xx answers and delays.

mod common;

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
use regbridge_providers::spec::{CredentialSpec, HarborSpec};
use regbridge_providers::{BuildContext, Provider, ProviderError, build};
use serde_json::{Value, json};

use common::{TestCluster, secret_ref};

const ADMIN_USER: &str = "admin";
const ADMIN_PASSWORD: &str = "Harbor12345-admin-never-leaks";

#[derive(Clone, Debug)]
struct Robot {
    id: i64,
    /// As stored: `<name>` or `<project>+<name>`.
    stored: String,
    description: String,
    level: String,
    permissions: Value,
    secret: String,
    expires_at: i64,
}

#[derive(Default)]
struct Harbor {
    robots: BTreeMap<i64, Robot>,
    next_id: i64,
    secrets_issued: u64,
    /// Answer the next N requests with 503.
    fail_next: u32,
    /// Sleep this long before answering.
    delay: Option<Duration>,
    /// Method and path of every authenticated request, in order.
    log: Vec<String>,
    last_create_body: Option<Value>,
}

impl Harbor {
    fn new_secret(&mut self) -> String {
        self.secrets_issued += 1;
        format!("Gen{}Secret{}x", self.secrets_issued, self.next_id)
    }

    /// Whether a registry login with these credentials would succeed.
    fn accepts(&self, username: &str, password: &str) -> bool {
        self.robots
            .values()
            .any(|r| format!("robot${}", r.stored) == username && r.secret == password)
    }

    fn seed(&mut self, stored: &str, description: &str) -> i64 {
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

type Shared = Arc<Mutex<Harbor>>;

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
    (
        [("X-Total-Count", items.len().to_string())],
        axum::Json(Value::Array(items)),
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

struct Fixture {
    harbor: Shared,
    url: String,
    cluster: TestCluster,
}

async fn start() -> Fixture {
    let harbor: Shared = Arc::default();
    let app = Router::new()
        .route("/api/v2.0/robots", get(list).post(create))
        .route("/api/v2.0/robots/{id}", patch(refresh).delete(delete))
        .with_state(harbor.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Fixture {
        harbor,
        url: format!("http://{addr}"),
        cluster: admin_cluster(ADMIN_PASSWORD),
    }
}

fn admin_cluster(password: &str) -> TestCluster {
    TestCluster::default().with_secret(
        "regbridge",
        "harbor-admin",
        &[
            ("username", ADMIN_USER.as_bytes()),
            ("password", password.as_bytes()),
        ],
    )
}

impl Fixture {
    fn spec(&self) -> HarborSpec {
        HarborSpec {
            url: self.url.clone(),
            admin_secret_ref: secret_ref("regbridge", "harbor-admin"),
            rotate_every: "24h".into(),
            ..Default::default()
        }
    }

    fn provider(&self, spec: HarborSpec) -> Box<dyn Provider> {
        let mut ctx = BuildContext::new("team-a-pulls");
        ctx.timeout = Duration::from_secs(5);
        build(&CredentialSpec::Harbor(spec), &ctx).expect("valid spec")
    }

    fn log(&self) -> Vec<String> {
        self.harbor.lock().unwrap().log.clone()
    }
}

#[tokio::test]
async fn creates_a_pull_only_system_robot_and_mints_its_secret() {
    let f = start().await;
    let p = f.provider(f.spec());
    let creds = p.mint(&f.cluster).await.expect("mint");
    assert_eq!(creds.len(), 1);
    let c = &creds[0];
    assert_eq!(c.host, f.url.trim_start_matches("http://"));
    assert_eq!(c.username, "robot$regbridge-team-a-pulls");
    assert!(
        f.harbor
            .lock()
            .unwrap()
            .accepts(&c.username, c.password.expose())
    );
    let body = f.harbor.lock().unwrap().last_create_body.clone().unwrap();
    assert_eq!(body["level"], "system");
    assert_eq!(
        body["permissions"],
        json!([{"kind": "project", "namespace": "*", "access": [{"resource": "repository", "action": "pull"}]}])
    );
    // The robot never expires; the credential expires at the next rotation.
    let expires = c.expires_at.expect("an expiry");
    let in_a_day = Utc::now() + chrono::Duration::hours(24);
    assert!((expires - in_a_day).num_seconds().abs() < 30, "{expires}");
    let id = f
        .harbor
        .lock()
        .unwrap()
        .robots
        .keys()
        .copied()
        .next()
        .unwrap();
    assert!(
        p.status_note()
            .expect("a note")
            .contains(&format!("id {id}"))
    );
}

#[tokio::test]
async fn project_robot_is_named_after_its_project_and_limited_to_it() {
    let f = start().await;
    let p = f.provider(HarborSpec {
        project: Some("team-a".into()),
        robot_name: Some("puller".into()),
        ..f.spec()
    });
    let c = &p.mint(&f.cluster).await.expect("mint")[0];
    assert_eq!(c.username, "robot$team-a+puller");
    let body = f.harbor.lock().unwrap().last_create_body.clone().unwrap();
    assert_eq!(body["level"], "project");
    assert_eq!(body["permissions"][0]["namespace"], "team-a");
    assert_eq!(
        body["permissions"][0]["access"],
        json!([{"resource": "repository", "action": "pull"}])
    );
}

#[tokio::test]
async fn a_second_mint_before_rotation_is_due_returns_the_same_secret() {
    let f = start().await;
    let p = f.provider(f.spec());
    let first = p.mint(&f.cluster).await.unwrap();
    let second = p.mint(&f.cluster).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(f.log(), ["POST /robots"], "no further API calls");
}

#[tokio::test]
async fn name_conflict_adopts_our_earlier_robot_by_rotating_its_secret() {
    let f = start().await;
    let id = f.harbor.lock().unwrap().seed(
        "regbridge-team-a-pulls",
        "managed by regbridge for team-a-pulls",
    );
    let old_secret = f.harbor.lock().unwrap().robots[&id].secret.clone();
    let p = f.provider(f.spec());
    let c = &p.mint(&f.cluster).await.expect("adopting mint")[0];
    assert_eq!(
        f.log(),
        [
            "POST /robots".to_owned(),
            "GET /robots?q=name=regbridge-team-a-pulls".to_owned(),
            format!("PATCH /robots/{id}")
        ]
    );
    assert_ne!(c.password.expose(), &old_secret);
    assert!(
        f.harbor
            .lock()
            .unwrap()
            .accepts(&c.username, c.password.expose())
    );
    assert_eq!(f.harbor.lock().unwrap().robots.len(), 1, "no second robot");
    assert!(p.status_note().unwrap().contains(&format!("id {id}")));
}

#[tokio::test]
async fn name_conflict_with_someone_elses_robot_is_refused_and_left_alone() {
    let f = start().await;
    let id = f
        .harbor
        .lock()
        .unwrap()
        .seed("regbridge-team-a-pulls", "CI robot, hands off");
    let before = f.harbor.lock().unwrap().robots[&id].secret.clone();
    let err = f.provider(f.spec()).mint(&f.cluster).await.unwrap_err();
    assert!(
        err.to_string().contains("not created by regbridge"),
        "{err}"
    );
    assert_eq!(f.harbor.lock().unwrap().robots[&id].secret, before);
    assert!(
        !f.log()
            .iter()
            .any(|l| l.starts_with("PATCH") || l.starts_with("DELETE"))
    );
}

#[tokio::test]
async fn secret_is_rotated_once_due_and_the_old_one_stops_working() {
    let f = start().await;
    let p = f.provider(HarborSpec {
        rotate_every: "2s".into(),
        ..f.spec()
    });
    let old = p.mint(&f.cluster).await.unwrap().remove(0);
    let old_expiry = old.expires_at.unwrap();
    assert!(old_expiry <= Utc::now() + chrono::Duration::seconds(2));
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let new = p.mint(&f.cluster).await.unwrap().remove(0);
    assert_eq!(new.username, old.username);
    assert_ne!(new.password, old.password);
    assert!(new.expires_at.unwrap() > old_expiry);
    let h = f.harbor.lock().unwrap();
    assert!(h.accepts(&new.username, new.password.expose()));
    assert!(!h.accepts(&old.username, old.password.expose()));
    assert_eq!(h.log.iter().filter(|l| l.starts_with("PATCH")).count(), 1);
}

#[tokio::test]
async fn robot_deleted_behind_our_back_is_recreated_at_rotation() {
    let f = start().await;
    let p = f.provider(HarborSpec {
        rotate_every: "1s".into(),
        ..f.spec()
    });
    p.mint(&f.cluster).await.unwrap();
    f.harbor.lock().unwrap().robots.clear();
    tokio::time::sleep(Duration::from_millis(900)).await;
    let c = p.mint(&f.cluster).await.expect("recreating mint").remove(0);
    assert!(
        f.harbor
            .lock()
            .unwrap()
            .accepts(&c.username, c.password.expose())
    );
}

#[tokio::test]
async fn cleanup_deletes_the_robot_and_clears_the_note() {
    let f = start().await;
    let p = f.provider(f.spec());
    p.mint(&f.cluster).await.unwrap();
    let id = *f.harbor.lock().unwrap().robots.keys().next().unwrap();
    p.cleanup(&f.cluster).await.expect("cleanup");
    assert!(f.harbor.lock().unwrap().robots.is_empty());
    assert_eq!(f.log().last().unwrap(), &format!("DELETE /robots/{id}"));
    assert_eq!(p.status_note(), None);
    // Cleaning up twice is harmless.
    p.cleanup(&f.cluster).await.expect("second cleanup");
}

#[tokio::test]
async fn cleanup_after_a_restart_finds_our_robot_by_name() {
    let f = start().await;
    f.provider(f.spec()).mint(&f.cluster).await.unwrap();
    // A new instance, as after a controller restart: it never minted.
    f.provider(f.spec())
        .cleanup(&f.cluster)
        .await
        .expect("cleanup");
    assert!(f.harbor.lock().unwrap().robots.is_empty());
}

#[tokio::test]
async fn wrong_admin_password_is_a_401_error_that_does_not_leak_it() {
    let f = start().await;
    let p = f.provider(f.spec());
    let wrong = admin_cluster("not-the-password-either");
    let err = p.mint(&wrong).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("401"), "{text}");
    assert!(!text.contains("not-the-password-either"), "{text}");
    assert!(!text.contains(ADMIN_PASSWORD), "{text}");
    assert!(f.harbor.lock().unwrap().robots.is_empty());
}

#[tokio::test]
async fn missing_admin_secret_is_named() {
    let f = start().await;
    let err = f
        .provider(f.spec())
        .mint(&TestCluster::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProviderError::SecretNotFound { ref name, .. } if name == "harbor-admin"),
        "{err}"
    );
}

#[tokio::test]
async fn server_error_fails_the_mint_and_the_next_mint_recovers() {
    let f = start().await;
    let p = f.provider(f.spec());
    f.harbor.lock().unwrap().fail_next = 1;
    let err = p.mint(&f.cluster).await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    let c = p.mint(&f.cluster).await.expect("recovered").remove(0);
    assert!(
        f.harbor
            .lock()
            .unwrap()
            .accepts(&c.username, c.password.expose())
    );
}

#[tokio::test]
async fn server_error_during_rotation_keeps_the_robot_for_the_next_try() {
    let f = start().await;
    let p = f.provider(HarborSpec {
        rotate_every: "1s".into(),
        ..f.spec()
    });
    p.mint(&f.cluster).await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    f.harbor.lock().unwrap().fail_next = 1;
    assert!(p.mint(&f.cluster).await.is_err());
    let c = p.mint(&f.cluster).await.expect("retry rotates").remove(0);
    let h = f.harbor.lock().unwrap();
    assert_eq!(
        h.robots.len(),
        1,
        "the retry rotated, it did not create another robot"
    );
    assert!(h.accepts(&c.username, c.password.expose()));
}

#[tokio::test]
async fn a_slow_harbor_hits_the_timeout() {
    let f = start().await;
    f.harbor.lock().unwrap().delay = Some(Duration::from_secs(3));
    let mut ctx = BuildContext::new("slow");
    ctx.timeout = Duration::from_secs(1);
    let p = build(&CredentialSpec::Harbor(f.spec()), &ctx).unwrap();
    let err = p.mint(&f.cluster).await.unwrap_err();
    assert!(
        matches!(
            err,
            ProviderError::Timeout {
                provider: "harbor",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn admin_credentials_are_never_the_minted_credential() {
    let f = start().await;
    let creds = f.provider(f.spec()).mint(&f.cluster).await.unwrap();
    for c in &creds {
        assert_ne!(c.username, ADMIN_USER);
        assert_ne!(c.password.expose(), ADMIN_PASSWORD);
        assert!(!format!("{c:?}").contains(c.password.expose().as_str()));
    }
}
