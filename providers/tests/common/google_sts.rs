//! Loopback servers that follow Google's published Workload Identity
//! Federation APIs, for the `gar` provider's per-tenant path:
//! - Security Token Service, `POST /v1/token` (the `token` method of
//!   `sts.googleapis.com/v1`, RFC 8693 token exchange). The request is
//!   form-encoded, as Google's auth libraries send it: `grant_type`
//!   `urn:ietf:params:oauth:grant-type:token-exchange`, `audience` (the
//!   workload identity pool provider), `scope`, `requested_token_type`
//!   `urn:ietf:params:oauth:token-type:access_token`, `subject_token_type`
//!   `urn:ietf:params:oauth:token-type:jwt` and `subject_token`. It answers
//!   `{access_token, issued_token_type, token_type: "Bearer", expires_in}`, and
//!   refuses with 400 and an OAuth error (`{"error": "invalid_grant",
//!   "error_description": ...}`, or `invalid_request` for a missing or wrong
//!   parameter). Like the real service it checks the subject token's `aud`
//!   against what the provider accepts.
//! - IAM Service Account Credentials, `POST
//!   /v1/projects/-/serviceAccounts/EMAIL:generateAccessToken` with
//!   `Authorization: Bearer <federated token>` and `{"scope": [...]}`. It
//!   answers `{accessToken, expireTime}` (RFC 3339), and refuses with Google's
//!   API error shape: 401 `UNAUTHENTICATED` for a bearer token STS did not
//!   issue, 403 `PERMISSION_DENIED` for a service account the federated
//!   identity may not impersonate.
//! - The GKE/GCE metadata server's token path, only to count whether anything
//!   fell back to the controller's own identity (it must not).
//!
//! Google's real endpoints need a Google Cloud project and a cluster
//! registered as an identity provider; neither exists here, and a test must
//! not depend on a cloud account. Each endpoint has its own listener, so a
//! test also shows which base URL a call went to. The provider tests and the
//! controller tests share it.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
pub const AUDIENCE: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/tenants/providers/cluster";
pub const GSA: &str = "team-a-puller@regbridge-test.iam.gserviceaccount.com";

/// One STS request as received.
#[derive(Clone, Debug)]
pub struct StsCall {
    pub form: BTreeMap<String, String>,
    /// The subject token's JWT claims, when it is a JWT.
    pub claims: Option<Value>,
}

/// One `generateAccessToken` request as received.
#[derive(Clone, Debug)]
pub struct IamCall {
    /// The service account named in the path.
    pub email: String,
    /// The `Authorization: Bearer` token.
    pub bearer: Option<String>,
    pub body: Value,
}

pub struct Google {
    /// The STS audience the pool provider has.
    pub audience: String,
    /// What the subject token's `aud` must hold; `None`: not checked (a test
    /// cluster's token is no JWT).
    pub token_audience: Option<String>,
    /// The exact subject token expected; `None`: any.
    pub subject_token: Option<String>,
    /// Service accounts the federated identities may impersonate.
    pub impersonable: BTreeSet<String>,
    /// STS's `expires_in`.
    pub federated_lifetime: i64,
    /// `generateAccessToken`'s lifetime.
    pub impersonated_lifetime: i64,
    /// Answer STS with this status and `invalid_grant` instead.
    pub sts_status: Option<StatusCode>,
    /// Leave `expires_in` out of STS's answer.
    pub omit_expires_in: bool,
    pub issued_federated: BTreeSet<String>,
    pub issued: u32,
    pub sts_log: Vec<StsCall>,
    pub iam_log: Vec<IamCall>,
    pub metadata_requests: u32,
}

impl Default for Google {
    fn default() -> Self {
        Self {
            audience: AUDIENCE.into(),
            token_audience: None,
            subject_token: None,
            impersonable: [GSA.to_owned()].into(),
            federated_lifetime: 2400,
            impersonated_lifetime: 1200,
            sts_status: None,
            omit_expires_in: false,
            issued_federated: BTreeSet::new(),
            issued: 0,
            sts_log: Vec::new(),
            iam_log: Vec::new(),
            metadata_requests: 0,
        }
    }
}

pub type Shared = Arc<Mutex<Google>>;

/// Where each endpoint listens: base URLs for `REGBRIDGE_GOOGLE_STS_URL` and
/// `REGBRIDGE_GOOGLE_IAMCREDENTIALS_URL`, and a host for `GCE_METADATA_HOST`.
pub struct Endpoints {
    pub sts: String,
    pub iamcredentials: String,
    pub metadata_host: String,
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn google_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": status.as_u16(), "message": message, "status": code}})),
    )
        .into_response()
}

fn jwt_claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let raw = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&raw).ok()
}

async fn sts_token(
    State(g): State<Shared>,
    axum::Form(form): axum::Form<BTreeMap<String, String>>,
) -> Response {
    let subject = form.get("subject_token").cloned().unwrap_or_default();
    let claims = jwt_claims(&subject);
    let mut g = g.lock().unwrap();
    g.sts_log.push(StsCall {
        form: form.clone(),
        claims: claims.clone(),
    });
    let field = |k: &str| form.get(k).map(String::as_str);
    let invalid = |what: &str| {
        oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("Invalid value for \"{what}\"."),
        )
    };
    if field("grant_type") != Some("urn:ietf:params:oauth:grant-type:token-exchange") {
        return invalid("grant_type");
    }
    if field("subject_token_type") != Some("urn:ietf:params:oauth:token-type:jwt") {
        return invalid("subject_token_type");
    }
    if field("requested_token_type") != Some("urn:ietf:params:oauth:token-type:access_token") {
        return invalid("requested_token_type");
    }
    if !field("scope").is_some_and(|s| s.split(' ').any(|x| x == SCOPE)) {
        return invalid("scope");
    }
    if subject.is_empty() {
        return invalid("subject_token");
    }
    if let Some(status) = g.sts_status {
        // Real STS quotes claims in its description; the provider must not
        // pass the description on.
        return oauth_error(
            status,
            "invalid_grant",
            &format!("The subject token {subject} was rejected."),
        );
    }
    if field("audience") != Some(g.audience.as_str()) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            "The target service indicated by the \"audience\" parameters is invalid.",
        );
    }
    if g.subject_token.as_ref().is_some_and(|t| *t != subject) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "The subject token is not the one expected.",
        );
    }
    if let Some(aud) = &g.token_audience {
        let matches = claims.as_ref().is_some_and(|c| {
            c["aud"] == aud.as_str() || c["aud"].as_array().is_some_and(|a| a.contains(&json!(aud)))
        });
        if !matches {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "The audience in ID Token does not match the expected audience.",
            );
        }
    }
    g.issued += 1;
    let token = format!("ya29.federated-{}", g.issued);
    g.issued_federated.insert(token.clone());
    let mut answer = json!({
        "access_token": token,
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "token_type": "Bearer",
        "expires_in": g.federated_lifetime,
    });
    if g.omit_expires_in {
        answer.as_object_mut().unwrap().remove("expires_in");
    }
    axum::Json(answer).into_response()
}

async fn generate_access_token(
    State(g): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    let Some(email) = name.strip_suffix(":generateAccessToken") else {
        return google_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Unknown method.");
    };
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(String::from);
    let mut g = g.lock().unwrap();
    g.iam_log.push(IamCall {
        email: email.to_owned(),
        bearer: bearer.clone(),
        body: body.clone(),
    });
    if !bearer.is_some_and(|b| g.issued_federated.contains(&b)) {
        return google_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
        );
    }
    if !g.impersonable.contains(email) {
        return google_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).",
        );
    }
    let scopes_ok = body["scope"]
        .as_array()
        .is_some_and(|s| s.iter().any(|x| x == SCOPE));
    if !scopes_ok {
        return google_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "Scope required.",
        );
    }
    g.issued += 1;
    let expire = chrono::Utc::now() + chrono::Duration::seconds(g.impersonated_lifetime);
    axum::Json(json!({
        "accessToken": format!("ya29.impersonated-{}", g.issued),
        "expireTime": expire.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }))
    .into_response()
}

async fn metadata_token(State(g): State<Shared>) -> Response {
    g.lock().unwrap().metadata_requests += 1;
    (
        [("Metadata-Flavor", "Google")],
        axum::Json(json!({"access_token": "ya29.controller-own", "expires_in": 3599, "token_type": "Bearer"})),
    )
        .into_response()
}

async fn listen(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Starts STS, iamcredentials and the metadata token path, each on its own
/// port, sharing one state.
pub async fn serve() -> (Shared, Endpoints) {
    let google: Shared = Arc::default();
    let sts = listen(
        Router::new()
            .route("/v1/token", post(sts_token))
            .with_state(google.clone()),
    )
    .await;
    let iam = listen(
        Router::new()
            .route(
                "/v1/projects/-/serviceAccounts/{name}",
                post(generate_access_token),
            )
            .with_state(google.clone()),
    )
    .await;
    let metadata = listen(
        Router::new()
            .route(
                "/computeMetadata/v1/instance/service-accounts/default/token",
                get(metadata_token),
            )
            .with_state(google.clone()),
    )
    .await;
    let endpoints = Endpoints {
        sts: format!("http://{sts}"),
        iamcredentials: format!("http://{iam}"),
        metadata_host: metadata,
    };
    (google, endpoints)
}

impl Endpoints {
    /// Points the `gar` provider at these servers.
    ///
    /// # Safety
    /// Nothing else may read or write the environment meanwhile.
    pub unsafe fn install(&self) {
        // SAFETY: the caller's guarantee above.
        unsafe {
            std::env::remove_var("GOOGLE_APPLICATION_CREDENTIALS");
            std::env::set_var("REGBRIDGE_GOOGLE_STS_URL", &self.sts);
            std::env::set_var("REGBRIDGE_GOOGLE_IAMCREDENTIALS_URL", &self.iamcredentials);
            std::env::set_var("GCE_METADATA_HOST", &self.metadata_host);
        }
    }
}
