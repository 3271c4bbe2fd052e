//! The `gar` provider against a loopback server that follows Google's
//! published token contracts:
//! - the GCE/GKE metadata server: `GET
//!   /computeMetadata/v1/instance/service-accounts/default/token` with
//!   `Metadata-Flavor: Google` (refused without it), answering
//!   `{"access_token", "expires_in", "token_type": "Bearer"}` with the same
//!   header; reached through `GCE_METADATA_HOST`, as Google's libraries do;
//! - the OAuth2 token endpoint of a service-account key (`token_uri`): a form
//!   POST with `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and a
//!   signed JWT `assertion` whose claims name the key's `client_email`, the
//!   scope and `aud` = `token_uri`.
//!
//! Google's real endpoints need a Google Cloud project and a VM or GKE node;
//! neither exists here, and a test must not depend on a cloud account. The
//! server below checks what the real ones check that matters to us (the
//! metadata header, the grant type, the JWT claims) and issues a new token
//! per request, so the tests also show that nothing caches tokens in between.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use regbridge_providers::spec::{CredentialSpec, GarSpec};
use regbridge_providers::{BuildContext, NoCluster, ProviderError, RegistryCredential, build};
use serde_json::{Value, json};

use common::{TestCluster, secret_ref};

const REGISTRIES: [&str; 2] = ["europe-west1-docker.pkg.dev", "gcr.io"];
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const CLIENT_EMAIL: &str = "puller@regbridge-test.iam.gserviceaccount.com";

/// `GCE_METADATA_HOST` is process-global: tests that set it take turns.
static ENV: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Default)]
struct Google {
    issued: u32,
    metadata_requests: u32,
    token_requests: u32,
    /// Answer the metadata request with this status instead.
    metadata_status: Option<StatusCode>,
    /// Leave `Metadata-Flavor` off the answer (not a metadata server).
    omit_flavor: bool,
    last_claims: Option<Value>,
    token_uri: String,
}

type Shared = Arc<Mutex<Google>>;

async fn metadata_token(State(g): State<Shared>, headers: HeaderMap) -> Response {
    if headers.get("Metadata-Flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        return (
            StatusCode::FORBIDDEN,
            "Missing Metadata-Flavor:Google header.",
        )
            .into_response();
    }
    let mut g = g.lock().unwrap();
    g.metadata_requests += 1;
    if let Some(s) = g.metadata_status {
        return (s, "metadata server trouble").into_response();
    }
    g.issued += 1;
    let body = axum::Json(json!({
        "access_token": format!("ya29.metadata-{}", g.issued),
        "expires_in": 3599,
        "token_type": "Bearer",
    }));
    if g.omit_flavor {
        body.into_response()
    } else {
        ([("Metadata-Flavor", "Google")], body).into_response()
    }
}

async fn oauth_token(
    State(g): State<Shared>,
    axum::Form(form): axum::Form<BTreeMap<String, String>>,
) -> Response {
    let bad = |msg: &str| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "error_description": msg})),
        )
            .into_response()
    };
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return bad("grant_type");
    }
    let Some(claims) = form
        .get("assertion")
        .and_then(|jwt| jwt.split('.').nth(1))
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok())
        .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok())
    else {
        return bad("assertion is not a JWT");
    };
    let mut g = g.lock().unwrap();
    g.token_requests += 1;
    let now = Utc::now().timestamp();
    let ok = claims["iss"] == CLIENT_EMAIL
        && claims["aud"] == g.token_uri.as_str()
        && claims["scope"]
            .as_str()
            .is_some_and(|s| s.split(' ').any(|x| x == SCOPE))
        && claims["exp"].as_i64().is_some_and(|e| e > now)
        && claims["iat"].as_i64().is_some_and(|i| i <= now + 5);
    g.last_claims = Some(claims);
    if !ok {
        return bad("claims");
    }
    g.issued += 1;
    axum::Json(json!({
        "access_token": format!("ya29.key-{}", g.issued),
        "expires_in": 3599,
        "token_type": "Bearer",
    }))
    .into_response()
}

async fn start() -> (Shared, String) {
    let google: Shared = Arc::default();
    let app = Router::new()
        .route(
            "/computeMetadata/v1/instance/service-accounts/default/token",
            get(metadata_token),
        )
        .route("/token", post(oauth_token))
        .with_state(google.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    google.lock().unwrap().token_uri = format!("http://{addr}/token");
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (google, addr)
}

async fn env_lock() -> tokio::sync::MutexGuard<'static, ()> {
    ENV.lock().await
}

/// Callers hold `ENV`.
fn set_metadata_host(host: &str) {
    // SAFETY: every test that touches the environment holds `ENV`.
    unsafe {
        std::env::remove_var("GOOGLE_APPLICATION_CREDENTIALS");
        std::env::set_var("GCE_METADATA_HOST", host);
    }
}

fn spec(key: bool) -> GarSpec {
    GarSpec {
        registries: REGISTRIES.iter().map(|r| r.to_string()).collect(),
        key_secret_ref: key.then(|| secret_ref("regbridge", "gcp-key")),
        ..GarSpec::default()
    }
}

async fn mint(
    spec: GarSpec,
    cluster: &dyn regbridge_providers::Cluster,
) -> Result<Vec<RegistryCredential>, ProviderError> {
    let mut ctx = BuildContext::new("gar-test");
    ctx.timeout = Duration::from_secs(10);
    build(&CredentialSpec::Gar(spec), &ctx)?.mint(cluster).await
}

fn assert_one_token_for_every_registry(creds: &[RegistryCredential]) {
    let hosts: Vec<_> = creds.iter().map(|c| c.host.as_str()).collect();
    assert_eq!(hosts, REGISTRIES);
    for c in creds {
        assert_eq!(c.username, "oauth2accesstoken");
        assert_eq!(c.password, creds[0].password);
        let expires = c.expires_at.expect("tokens expire");
        let expected = Utc::now() + chrono::Duration::seconds(3599);
        assert!((expires - expected).num_seconds().abs() < 30, "{expires}");
    }
}

#[tokio::test]
async fn metadata_server_token_is_written_for_every_listed_registry() {
    let (google, addr) = start().await;
    let _env = env_lock().await;
    set_metadata_host(&addr);
    let creds = mint(spec(false), &NoCluster).await.expect("mint");
    assert_one_token_for_every_registry(&creds);
    assert_eq!(creds[0].password.expose(), "ya29.metadata-1");
    assert_eq!(
        google.lock().unwrap().metadata_requests,
        1,
        "one token for all hosts"
    );
}

#[tokio::test]
async fn every_mint_asks_the_metadata_server_anew() {
    let (google, addr) = start().await;
    let _env = env_lock().await;
    set_metadata_host(&addr);
    let first = mint(spec(false), &NoCluster).await.unwrap();
    let second = mint(spec(false), &NoCluster).await.unwrap();
    assert_ne!(first[0].password, second[0].password);
    assert_eq!(google.lock().unwrap().metadata_requests, 2);
}

#[tokio::test]
async fn an_answer_without_the_metadata_flavor_header_is_not_trusted() {
    let (google, addr) = start().await;
    google.lock().unwrap().omit_flavor = true;
    let _env = env_lock().await;
    set_metadata_host(&addr);
    let err = mint(spec(false), &NoCluster).await.unwrap_err();
    assert!(err.to_string().contains("Metadata-Flavor"), "{err}");
    assert!(!err.to_string().contains("ya29"), "{err}");
}

#[tokio::test]
async fn metadata_server_error_is_reported_by_status() {
    let (google, addr) = start().await;
    google.lock().unwrap().metadata_status = Some(StatusCode::SERVICE_UNAVAILABLE);
    let _env = env_lock().await;
    set_metadata_host(&addr);
    let err = mint(spec(false), &NoCluster).await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
}

#[tokio::test]
async fn explicit_metadata_host_that_does_not_answer_fails_without_fallback() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _env = env_lock().await;
    set_metadata_host(&format!("127.0.0.1:{port}"));
    let err = mint(spec(false), &NoCluster).await.unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");
}

/// A service-account key whose `token_uri` is the loopback server, with a
/// fresh RSA key from openssl.
fn key_json(token_uri: &str) -> String {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("openssl is installed");
    assert!(out.status.success());
    json!({
        "type": "service_account",
        "project_id": "regbridge-test",
        "private_key_id": "0123456789abcdef",
        "private_key": String::from_utf8(out.stdout).unwrap(),
        "client_email": CLIENT_EMAIL,
        "client_id": "1234567890",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    })
    .to_string()
}

#[tokio::test]
async fn service_account_key_is_exchanged_at_its_token_uri_with_a_fresh_token_per_mint() {
    let (google, _) = start().await;
    let token_uri = google.lock().unwrap().token_uri.clone();
    let key = key_json(&token_uri);
    let cluster =
        TestCluster::default().with_secret("regbridge", "gcp-key", &[("key.json", key.as_bytes())]);
    let first = mint(spec(true), &cluster).await.expect("mint with key");
    assert_one_token_for_every_registry(&first);
    assert!(first[0].password.expose().starts_with("ya29.key-"));
    let claims = google.lock().unwrap().last_claims.clone().unwrap();
    assert_eq!(claims["aud"], token_uri.as_str());
    // A refresh long before expiry must still get a new token.
    let second = mint(spec(true), &cluster).await.expect("second mint");
    assert_ne!(first[0].password, second[0].password);
    assert_eq!(google.lock().unwrap().token_requests, 2);
}

#[tokio::test]
async fn key_secret_without_key_json_or_with_garbage_is_malformed_and_not_quoted() {
    let no_key = TestCluster::default().with_secret("regbridge", "gcp-key", &[("other", b"x")]);
    let err = mint(spec(true), &no_key).await.unwrap_err();
    assert!(err.to_string().contains("key.json"), "{err}");
    let garbage = TestCluster::default().with_secret(
        "regbridge",
        "gcp-key",
        &[(
            "key.json",
            br#"{"private_key": "-----BEGIN sekrit-material"}"#,
        )],
    );
    let err = mint(spec(true), &garbage).await.unwrap_err();
    assert!(matches!(err, ProviderError::Malformed { .. }), "{err}");
    assert!(!format!("{err} {err:?}").contains("sekrit"), "{err}");
}

#[tokio::test]
async fn missing_key_secret_is_named() {
    let err = mint(spec(true), &TestCluster::default()).await.unwrap_err();
    assert!(
        matches!(err, ProviderError::SecretNotFound { ref name, .. } if name == "gcp-key"),
        "{err}"
    );
}
