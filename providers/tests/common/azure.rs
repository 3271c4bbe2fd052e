//! Loopback stand-ins for Microsoft Entra, Azure's instance metadata service
//! and an Azure Container Registry. There is no Azure here, and a test must
//! not need a cloud account, so these follow the published APIs:
//!
//! - **Entra's token endpoint** (Microsoft identity platform, client
//!   credentials with a federated client assertion): `POST
//!   /{tenant}/oauth2/v2.0/token` with the form `client_assertion`,
//!   `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`,
//!   `client_id`, `grant_type=client_credentials` and `scope`. It checks what
//!   a federated identity credential checks: the tenant, that the client ID
//!   has a federated credential whose subject is the assertion's `sub`, and
//!   that its `aud` is `api://AzureADTokenExchange`; plus the scope and,
//!   when a test sets one, the exact assertion (a projected token file's
//!   content). Refusals are Entra's error JSON (`error`,
//!   `error_description`, `error_codes`).
//! - **IMDS**: `GET /metadata/identity/oauth2/token?api-version=…&resource=…`
//!   (`client_id` for a user-assigned identity) with `Metadata: true`,
//!   answered with `expires_on` as a string of Unix seconds, over plain HTTP
//!   as IMDS is.
//! - **ACR's `/oauth2/exchange`** (Azure/acr, `docs/AAD-OAuth.md`): the form
//!   `grant_type=access_token`, `service` (the login server, which must be
//!   the host the request came to), `tenant`, and an `access_token` this
//!   Entra issued, answered `{"refresh_token": "<JWT>"}` with a real `exp`.
//! - **ACR's `/oauth2/token`**, the realm of Docker's token authentication:
//!   `GET ?service=…&scope=…` with basic auth
//!   `00000000-0000-0000-0000-000000000000:<refresh token>`, answered with a
//!   registry token signed (ES256, `kid` as libtrust derives it) by the key
//!   whose certificate the `docker-registry` behind this front trusts.
//! - **The registry API**: any other path goes to that `docker-registry`
//!   (token auth, started by tests/run.sh: `REGBRIDGE_TOKEN_REGISTRY_*`),
//!   with its challenge rewritten to name this host as realm and service,
//!   as ACR's own challenge does.
//!
//! Every request is logged with its host, path and form, so tests can assert
//! who asked for what. Entra and ACR answer over HTTPS with a certificate
//! from a CA made here, for 127.0.0.1, `myregistry.azurecr.io` and
//! `login.microsoftonline.com`.

#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::Utc;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::PrivateKeyDer;

pub const TENANT: &str = "8d6a1c4e-0000-4000-8000-00000000a2c1";
/// The controller's own identity (Workload Identity or managed identity).
pub const CLIENT_ID: &str = "c0ffee00-0000-4000-8000-000000000001";
pub const SCOPE: &str = "https://containerregistry.azure.net/.default";
pub const RESOURCE: &str = "https://containerregistry.azure.net";
pub const AUDIENCE: &str = "api://AzureADTokenExchange";
pub const ACR_USER: &str = "00000000-0000-0000-0000-000000000000";
pub const REGISTRY_NAME: &str = "myregistry.azurecr.io";
pub const LOGIN_HOST: &str = "login.microsoftonline.com";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// One request as the stub saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub host: String,
    pub path: String,
    /// The form (POST) or the query (GET).
    pub form: BTreeMap<String, String>,
}

/// A docker-registry with token auth behind the front.
pub struct Backend {
    pub url: String,
    pub service: String,
    pub issuer: String,
    key: EcdsaKeyPair,
    kid: String,
}

pub struct Azure {
    pub tenant: String,
    /// Federated identity credentials: (client ID, subject).
    pub federated: Vec<(String, String)>,
    /// When set, the only client assertion Entra accepts.
    pub expected_assertion: Option<String>,
    /// User-assigned identities IMDS knows (the system-assigned one always
    /// answers).
    pub managed_identities: Vec<String>,
    /// Seconds an ACR refresh token lives (ACR's are about 3 h).
    pub refresh_lifetime: i64,
    /// Issue refresh tokens without `exp`.
    pub omit_exp: bool,
    /// Answer the exchange with this status instead (404: as a registry
    /// that is not an ACR does).
    pub exchange_status: Option<StatusCode>,
    pub log: Vec<Seen>,
    /// Entra access tokens issued, with their client ID.
    pub access_tokens: Vec<(String, String)>,
    /// Refresh tokens issued: token, service, exp.
    pub refresh_tokens: Vec<(String, String, i64)>,
    pub backend: Option<Backend>,
    /// Tokens issued so far, of any kind.
    pub issued: u64,
}

impl Default for Azure {
    fn default() -> Self {
        Self {
            tenant: TENANT.into(),
            federated: Vec::new(),
            expected_assertion: None,
            managed_identities: Vec::new(),
            refresh_lifetime: 3 * 3600,
            omit_exp: false,
            exchange_status: None,
            log: Vec::new(),
            access_tokens: Vec::new(),
            refresh_tokens: Vec::new(),
            backend: None,
            issued: 0,
        }
    }
}

impl Azure {
    /// Requests to `path_end`, in order.
    pub fn seen(&self, path_end: &str) -> Vec<Seen> {
        self.log
            .iter()
            .filter(|s| s.path.ends_with(path_end))
            .cloned()
            .collect()
    }
}

pub type Shared = Arc<Mutex<Azure>>;

/// A running stub: Entra and ACR over HTTPS, IMDS over HTTP.
pub struct Stub {
    pub azure: Shared,
    pub https: SocketAddr,
    pub http: SocketAddr,
    /// The CA that signed the HTTPS certificate, PEM.
    pub ca_pem: String,
}

impl Stub {
    /// The login server name under which this stub answers directly.
    pub fn registry(&self) -> String {
        self.https.to_string()
    }

    pub fn authority(&self) -> String {
        format!("https://{}", self.https)
    }

    pub fn imds(&self) -> String {
        format!("http://{}", self.http)
    }

    /// `REGBRIDGE_CONNECT_TO` for the public names.
    pub fn connect_to(&self) -> String {
        format!("{REGISTRY_NAME}={0},{LOGIN_HOST}={0}", self.https)
    }
}

/// An unsigned JWT-shaped token with these claims, as a projected
/// ServiceAccount token looks to anyone who does not check its signature.
pub fn jwt(claims: Value) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"stub"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(b"stub-signature")
    )
}

/// The claims of a JWT, if it is one.
pub fn claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let raw = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&raw).ok()
}

/// A projected ServiceAccount token for `namespace/name`, audience Entra.
pub fn projected_token(namespace: &str, name: &str) -> String {
    let now = Utc::now().timestamp();
    jwt(json!({
        "aud": [AUDIENCE], "exp": now + 3600, "iat": now, "nbf": now,
        "iss": "https://oidc.prod-aks.azure.com/stub/",
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
    }))
}

impl Backend {
    /// The docker-registry that tests/run.sh starts with token auth, or
    /// `None` when it did not.
    pub fn from_env() -> Option<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let url = var("REGBRIDGE_TOKEN_REGISTRY_URL")?;
        let key_path = var("REGBRIDGE_TOKEN_REGISTRY_KEY").expect("the signing key's path");
        let pem = std::fs::read_to_string(&key_path).expect("the signing key");
        let der: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        let der = STANDARD.decode(der).expect("PEM body");
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &der,
            &ring::rand::SystemRandom::new(),
        )
        .expect("a PKCS#8 P-256 key");
        let kid = libtrust_key_id(key.public_key().as_ref());
        Some(Self {
            url: url.trim_end_matches('/').to_owned(),
            service: var("REGBRIDGE_TOKEN_REGISTRY_SERVICE").expect("the service"),
            issuer: var("REGBRIDGE_TOKEN_REGISTRY_ISSUER").expect("the issuer"),
            key,
            kid,
        })
    }

    fn sign(&self, subject: &str, access: Value) -> String {
        let now = Utc::now().timestamp();
        let header = json!({"typ": "JWT", "alg": "ES256", "kid": self.kid});
        let claims = json!({
            "iss": self.issuer, "sub": subject, "aud": self.service,
            "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": format!("stub-{now}-{}", rand_suffix()), "access": access,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
            .expect("signing");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

fn rand_suffix() -> u64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    u64::from_le_bytes(b)
}

/// libtrust's key ID, which docker-registry matches a token's `kid`
/// against: the SHA-256 of the DER SubjectPublicKeyInfo, its first 240
/// bits in base32, in groups of four joined by `:`.
fn libtrust_key_id(uncompressed_p256_point: &[u8]) -> String {
    const SPKI_PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let mut spki = SPKI_PREFIX.to_vec();
    spki.extend_from_slice(uncompressed_p256_point);
    let digest = ring::digest::digest(&ring::digest::SHA256, &spki);
    let encoded = base32(&digest.as_ref()[..30]);
    encoded
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":")
}

fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut out, mut buf, mut bits) = (String::new(), 0u64, 0u32);
    for &b in data {
        buf = (buf << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn host(headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn record(
    azure: &Shared,
    method: &str,
    headers: &HeaderMap,
    path: &str,
    form: &BTreeMap<String, String>,
) {
    azure.lock().unwrap().log.push(Seen {
        method: method.into(),
        host: host(headers),
        path: path.into(),
        form: form.clone(),
    });
}

/// Entra's error document.
fn entra_error(status: StatusCode, error: &str, code: u32, text: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {text} Trace ID: 0 Correlation ID: 0 Timestamp: 2026-01-01 00:00:00Z"),
            "error_codes": [code],
            "timestamp": "2026-01-01 00:00:00Z",
            "trace_id": "0", "correlation_id": "0",
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        })),
    )
        .into_response()
}

fn access_token(azure: &mut Azure, client_id: &str) -> String {
    azure.issued += 1;
    let now = Utc::now().timestamp();
    let token = jwt(json!({
        "aud": RESOURCE, "iss": format!("https://sts.windows.net/{}/", azure.tenant),
        "tid": azure.tenant, "appid": client_id, "oid": format!("oid-{client_id}"),
        "iat": now, "nbf": now, "exp": now + 3600, "n": azure.issued,
    }));
    azure
        .access_tokens
        .push((token.clone(), client_id.to_owned()));
    token
}

async fn entra_token(
    State(azure): State<Shared>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<BTreeMap<String, String>>,
) -> Response {
    record(
        &azure,
        "POST",
        &headers,
        &format!("/{tenant}/oauth2/v2.0/token"),
        &form,
    );
    let mut azure = azure.lock().unwrap();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    if tenant != azure.tenant {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    if field("grant_type") != "client_credentials"
        || field("client_assertion_type") != ASSERTION_TYPE
    {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the client assertion parameters.",
        );
    }
    if field("scope") != SCOPE {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            70011,
            "The provided value for the input parameter 'scope' is not valid.",
        );
    }
    let client = field("client_id").to_owned();
    let subjects: Vec<String> = azure
        .federated
        .iter()
        .filter(|(c, _)| *c == client)
        .map(|(_, s)| s.clone())
        .collect();
    if subjects.is_empty() {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{client}' was not found in the directory."),
        );
    }
    let assertion = field("client_assertion");
    if azure
        .expected_assertion
        .as_deref()
        .is_some_and(|e| e != assertion)
    {
        return entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700213,
            "No matching federated identity record found for presented assertion.",
        );
    }
    let Some(claims) = claims(assertion) else {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50027,
            "JWT token is invalid or malformed.",
        );
    };
    let audiences: Vec<&str> = match &claims["aud"] {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !audiences.contains(&AUDIENCE) {
        return entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700212,
            "No matching federated identity record found for presented assertion audience.",
        );
    }
    let subject = claims["sub"].as_str().unwrap_or_default();
    if !subjects.iter().any(|s| s == subject) {
        return entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700213,
            &format!(
                "No matching federated identity record found for presented assertion subject '{subject}'."
            ),
        );
    }
    let token = access_token(&mut azure, &client);
    axum::Json(json!({
        "token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
        "access_token": token,
    }))
    .into_response()
}

async fn imds_token(
    State(azure): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    record(
        &azure,
        "GET",
        &headers,
        "/metadata/identity/oauth2/token",
        &query,
    );
    let bad = |text: &str| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_request", "error_description": text})),
        )
            .into_response()
    };
    if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return bad("Required metadata header not specified");
    }
    if !query.contains_key("api-version") {
        return bad("Required query variable 'api-version' is missing");
    }
    if query.get("resource").map(String::as_str) != Some(RESOURCE) {
        return bad("Resource not supported");
    }
    let mut azure = azure.lock().unwrap();
    let client = match query.get("client_id") {
        Some(c) if azure.managed_identities.contains(c) => c.clone(),
        Some(_) => return bad("Identity not found"),
        None => "system-assigned".to_owned(),
    };
    let token = access_token(&mut azure, &client);
    let now = Utc::now().timestamp();
    axum::Json(json!({
        "access_token": token, "client_id": client,
        "expires_in": "86399", "expires_on": (now + 86399).to_string(),
        "ext_expires_in": "86399", "not_before": now.to_string(),
        "resource": RESOURCE, "token_type": "Bearer",
    }))
    .into_response()
}

fn acr_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"errors": [{"code": code, "message": message}]})),
    )
        .into_response()
}

async fn exchange(
    State(azure): State<Shared>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<BTreeMap<String, String>>,
) -> Response {
    record(&azure, "POST", &headers, "/oauth2/exchange", &form);
    let mut azure = azure.lock().unwrap();
    match azure.exchange_status {
        // What a registry that is not an ACR answers.
        Some(StatusCode::NOT_FOUND) => {
            return (StatusCode::NOT_FOUND, "404 page not found").into_response();
        }
        Some(status) => return acr_error(status, "UNAUTHORIZED", "injected by the test"),
        None => {}
    }
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let service = field("service").to_owned();
    if field("grant_type") != "access_token" || service != host(&headers) {
        return acr_error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "grant_type or service",
        );
    }
    let token = field("access_token");
    let Some((_, client)) = azure
        .access_tokens
        .iter()
        .find(|(t, _)| t == token)
        .cloned()
    else {
        return acr_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "the access token is not valid",
        );
    };
    let tid = claims(token).and_then(|c| c["tid"].as_str().map(str::to_owned));
    if form.get("tenant").is_some_and(|t| Some(t) != tid.as_ref()) {
        return acr_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "tenant does not match the token",
        );
    }
    azure.issued += 1;
    let now = Utc::now().timestamp();
    let exp = now + azure.refresh_lifetime;
    let mut refresh_claims = json!({
        "jti": format!("refresh-{}", azure.issued), "sub": client, "nbf": now, "iat": now,
        "iss": "Azure Container Registry", "aud": service, "version": "1.0",
        "grant_type": "refresh_token", "tenant": tid, "permissions": {"actions": ["read"]},
    });
    if !azure.omit_exp {
        refresh_claims["exp"] = json!(exp);
    }
    let refresh = jwt(refresh_claims);
    azure.refresh_tokens.push((refresh.clone(), service, exp));
    axum::Json(json!({"refresh_token": refresh})).into_response()
}

/// Docker token auth's realm: a registry token for the scopes asked, for a
/// refresh token this ACR issued for this host.
async fn registry_token(
    State(azure): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let form: BTreeMap<String, String> = query.iter().cloned().collect();
    record(&azure, "GET", &headers, "/oauth2/token", &form);
    let unauthorized = || {
        acr_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "authentication required",
        )
    };
    let Some((user, password)) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())))
    else {
        return unauthorized();
    };
    let azure = azure.lock().unwrap();
    let now = Utc::now().timestamp();
    let service = form.get("service").cloned().unwrap_or_default();
    let valid = user == ACR_USER
        && service == host(&headers)
        && azure
            .refresh_tokens
            .iter()
            .any(|(t, s, exp)| *t == password && *s == service && *exp > now);
    if !valid {
        return unauthorized();
    }
    let Some(backend) = &azure.backend else {
        return acr_error(
            StatusCode::NOT_IMPLEMENTED,
            "UNSUPPORTED",
            "no registry behind this stub",
        );
    };
    let access: Vec<Value> = query
        .iter()
        .filter(|(k, _)| k == "scope")
        .filter_map(|(_, scope)| {
            let mut parts = scope.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let token = backend.sign(ACR_USER, Value::Array(access));
    axum::Json(json!({"access_token": token, "token": token})).into_response()
}

/// Everything else goes to the registry behind the front, whose challenge
/// is rewritten to name this host, as ACR's does.
async fn proxy(State(azure): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_owned();
    record(
        &azure,
        parts.method.as_str(),
        &parts.headers,
        parts.uri.path(),
        &BTreeMap::new(),
    );
    let Some(backend) = azure
        .lock()
        .unwrap()
        .backend
        .as_ref()
        .map(|b| b.url.clone())
    else {
        return (StatusCode::NOT_FOUND, "404 page not found").into_response();
    };
    let url = format!("{backend}{path}");
    let this_host = host(&parts.headers);
    let Ok(body) = axum::body::to_bytes(body, 64 << 20).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut forward = client.request(parts.method.clone(), url);
    for (name, value) in &parts.headers {
        if name != header::HOST
            && name != header::CONTENT_LENGTH
            && name != header::TRANSFER_ENCODING
        {
            forward = forward.header(name, value);
        }
    }
    let Ok(answer) = forward.body(body).send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let mut out = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name == header::WWW_AUTHENTICATE {
            let scope = value
                .to_str()
                .ok()
                .and_then(|v| v.split("scope=\"").nth(1))
                .and_then(|v| v.split('"').next())
                .map(|s| format!(",scope=\"{s}\""))
                .unwrap_or_default();
            out = out.header(
                name,
                format!("Bearer realm=\"https://{this_host}/oauth2/token\",service=\"{this_host}\"{scope}"),
            );
        } else if name == header::LOCATION {
            // Uploads go on at the front, not at the registry behind it.
            let location = value.to_str().unwrap_or_default();
            out = out.header(name, location.strip_prefix(&backend).unwrap_or(location));
        } else if name != header::TRANSFER_ENCODING
            && name != header::CONNECTION
            && name != header::CONTENT_LENGTH
        {
            out = out.header(name, value);
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    out.body(Body::from(bytes)).unwrap()
}

/// A TLS listener for axum: the handshake happens in `accept`.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    tls: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            let handshake = tokio::time::timeout(Duration::from_secs(5), self.tls.accept(stream));
            if let Ok(Ok(tls)) = handshake.await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// A CA and a certificate it signed for the names the stub answers to.
fn tls() -> (TlsAcceptor, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "regbridge Azure stub CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let names = ["127.0.0.1", "localhost", REGISTRY_NAME, LOGIN_HOST].map(String::from);
    let mut params = rcgen::CertificateParams::new(names.to_vec()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, REGISTRY_NAME);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    (TlsAcceptor::from(Arc::new(config)), ca.pem())
}

/// Starts the stub with `azure` as its state.
pub async fn serve(azure: Azure) -> Stub {
    let azure: Shared = Arc::new(Mutex::new(azure));
    let app = Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(entra_token))
        .route("/metadata/identity/oauth2/token", get(imds_token))
        .route("/oauth2/exchange", post(exchange))
        .route("/oauth2/token", get(registry_token))
        .fallback(proxy)
        .with_state(azure.clone());
    let (tls, ca_pem) = tls();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https = tcp.local_addr().unwrap();
    let secure = app.clone();
    tokio::spawn(async move {
        axum::serve(TlsListener { tcp, tls }, secure).await.unwrap();
    });
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = plain.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(plain, app).await.unwrap() });
    Stub {
        azure,
        https,
        http,
        ca_pem,
    }
}
