//! Proof that a credential works before it is distributed: the Docker
//! Registry HTTP API v2 handshake, as `docker login` and containerd do it.
//!
//! 1. `GET <scheme>://<host>/v2/` without credentials.
//! 2. A `401` names the scheme in `WWW-Authenticate`:
//!    - `Basic`: the same request again with Basic auth;
//!    - `Bearer realm=...,service=...[,scope=...]`: a `GET` of the realm with
//!      `service` (and `scope`, and `account` = the username) and Basic auth;
//!      the JSON answer's `token` (or `access_token`) then goes to `/v2/` as
//!      `Authorization: Bearer`.
//!      Bearer wins when a registry offers both, as it does in docker.
//!      A `401` with no challenge at all gets the Basic attempt.
//! 3. A `2xx` from `/v2/` with the credential is [`Verification::Verified`].
//!
//! Every handshake ends in one [`Verification`]:
//! - `Rejected`: a `401` or `403` answered the credential, at `/v2/` or at
//!   the token realm. It carries the registry's error `code` and `message`
//!   (from `{"errors":[{"code","message"}]}`, or Docker Hub's
//!   `{"details": ...}`).
//! - `Unreachable`: DNS, TCP, TLS, a timeout, a `5xx`, or an answer that is
//!   not the v2 API (a `404` at `/v2/`, an unknown auth scheme, a token
//!   response without a token). Nodes may reach a registry that the
//!   controller cannot, so callers should not block on it.
//! - `Anonymous`: the anonymous `GET /v2/` already answered `200`. The
//!   registry never asked for credentials there, so the credential was not
//!   exercised. That is neither proof nor disproof: repositories may still
//!   need auth. It is its own result so that status can say so, and it
//!   never blocks distribution.
//!
//! **Host keys** are read the way kubelet normalises them: the scheme and any
//! path are dropped, so `https://index.docker.io/v1/` is `index.docker.io`.
//! Docker Hub's keys (`index.docker.io`, `docker.io`) are verified at
//! `registry-1.docker.io`. A wildcard key (`*.gcr.io`) names no single host
//! and comes back `Unreachable`.
//!
//! **Plain HTTP** is used only when the key itself says `http://` (kubelet
//! ignores the scheme when matching, so such a key still serves pulls);
//! everything else is HTTPS. Credentials are never sent to a plain-HTTP token
//! realm on behalf of an HTTPS registry.
//!
//! **No secrets in results.** The password, the `auth` value and any token
//! are replaced by `<redacted>` wherever they appear, and only then are
//! registry messages cut to a short length (a cut first could leave a
//! secret's head behind), so a result can go to status, Events and logs as
//! it is.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};
use reqwest::{StatusCode, Url};

use super::key::Key;
use crate::RegistryCredential;
use crate::trust::Trust;

/// The outcome of one handshake. `Display` gives a one-line, secret-free
/// message; [`Verification::result`] the short name for status and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    /// `/v2/` answered `2xx` to the credential.
    Verified,
    /// `/v2/` answered `2xx` without any credential: nothing was checked.
    Anonymous,
    /// The registry (or its token realm) answered the credential with `401`
    /// or `403`.
    Rejected {
        /// The registry's error code, e.g. `UNAUTHORIZED`, `DENIED`.
        code: Option<String>,
        message: String,
    },
    /// The registry could not be asked: DNS, TCP, TLS, timeout, `5xx`, or an
    /// answer outside the v2 API.
    Unreachable { reason: String },
}

impl Verification {
    /// `Verified`, `Anonymous`, `Rejected` or `Unreachable`: a bounded set,
    /// fit for a status field and a metric label.
    pub fn result(&self) -> &'static str {
        match self {
            Self::Verified => "Verified",
            Self::Anonymous => "Anonymous",
            Self::Rejected { .. } => "Rejected",
            Self::Unreachable { .. } => "Unreachable",
        }
    }

    /// The human part: empty for `Verified`.
    pub fn message(&self) -> String {
        match self {
            Self::Verified => String::new(),
            Self::Anonymous => {
                "the registry allows anonymous access to /v2/; the credential was not exercised"
                    .into()
            }
            Self::Rejected {
                code: Some(code),
                message,
            } => format!("{code}: {message}"),
            Self::Rejected {
                code: None,
                message,
            } => message.clone(),
            Self::Unreachable { reason } => reason.clone(),
        }
    }

    /// Whether the registry said no to this credential. Only this result
    /// should stop a credential from being distributed.
    pub fn is_rejected(&self) -> bool {
        matches!(self, Self::Rejected { .. })
    }

    /// Replaces every secret with `<redacted>`, then cuts the registry's
    /// words to one short line. In that order: a cut first could split a
    /// secret and leave its head behind, where no whole secret matches.
    fn scrub(self, secrets: &[String]) -> Self {
        match self {
            Self::Rejected { code, message } => Self::Rejected {
                code: code
                    .map(|c| short(&scrub(&c, secrets)))
                    .filter(|c| !c.is_empty()),
                message: short(&scrub(&message, secrets)),
            },
            Self::Unreachable { reason } => Self::Unreachable {
                reason: scrub(&reason, secrets),
            },
            other => other,
        }
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Verified => f.write_str("Verified"),
            other => write!(f, "{}: {}", other.result(), other.message()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the CA bundle could not be loaded: {0}")]
    Ca(String),
}

/// Runs handshakes. Cheap to clone (the HTTP client is shared); build one
/// per distinct set of roots and keep it.
#[derive(Clone, Debug)]
pub struct Verifier {
    client: reqwest::Client,
    timeout: Duration,
    trust: Trust,
}

/// Registry answers are short; anything longer is cut before parsing.
const MAX_BODY: usize = 64 * 1024;
/// Registry messages are cut to this many characters.
const MAX_MESSAGE: usize = 200;
/// Hosts verified at once by [`Verifier::verify_all`].
const CONCURRENCY: usize = 8;
const DOCKER_HUB_API: &str = "registry-1.docker.io";

impl Verifier {
    /// The default bound on one whole handshake.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// A verifier trusting the system store (see [`Trust`]). `timeout`
    /// bounds one whole handshake, token request included.
    pub fn new(timeout: Duration) -> Self {
        Self::build(timeout, Trust::system())
            .expect("the system store holds only certificates rustls accepts")
    }

    /// The same verifier, trusting `trust` instead: `--ca-file`, or an
    /// entry's `caSecretRef` on top of it.
    pub fn with_trust(&self, trust: Trust) -> Result<Self, VerifyError> {
        Self::build(self.timeout, trust)
    }

    /// What this verifier trusts.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    fn build(timeout: Duration, trust: Trust) -> Result<Self, VerifyError> {
        let client = client_builder(timeout, &trust)
            .build()
            .map_err(|e| VerifyError::Ca(category(&e)))?;
        Ok(Self {
            client,
            timeout,
            trust,
        })
    }

    /// A client configured as this verifier's, for a one-off variant.
    fn builder(&self) -> reqwest::ClientBuilder {
        client_builder(self.timeout, &self.trust)
    }

    /// One handshake for this credential's host.
    pub async fn verify(&self, cred: &RegistryCredential) -> Verification {
        let password = cred.password.expose();
        let mut secrets = vec![
            password.clone(),
            STANDARD.encode(format!("{}:{}", cred.username, password)),
        ];
        let target = match Target::parse(&cred.host) {
            Ok(t) => t,
            Err(reason) => return Verification::Unreachable { reason }.scrub(&secrets),
        };
        let handshake = Handshake {
            verifier: self,
            target: &target,
            username: &cred.username,
            password,
            token: None,
        };
        let outcome = tokio::time::timeout(self.timeout, handshake.run()).await;
        let result = match outcome {
            Ok((result, token)) => {
                secrets.extend(token);
                result
            }
            Err(_) => Verification::Unreachable {
                reason: format!(
                    "{}: no answer within {} s",
                    target.base,
                    self.timeout.as_secs_f32()
                ),
            },
        };
        result.scrub(&secrets)
    }

    /// One handshake per credential, a few at a time, in input order.
    pub async fn verify_all(&self, creds: &[RegistryCredential]) -> Vec<Verification> {
        let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for (index, cred) in creds.iter().enumerate() {
            let (verifier, cred, limit) = (self.clone(), cred.clone(), limit.clone());
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                (index, verifier.verify(&cred).await)
            });
        }
        let mut results = vec![None; creds.len()];
        while let Some(joined) = tasks.join_next().await {
            if let Ok((index, v)) = joined {
                results[index] = Some(v);
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or(Verification::Unreachable {
                    reason: "the verification task failed".into(),
                })
            })
            .collect()
    }
}

fn client_builder(timeout: Duration, trust: &Trust) -> reqwest::ClientBuilder {
    trust
        .client_builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("regbridge/", env!("CARGO_PKG_VERSION")))
        .redirect(redirect_policy())
}

/// Redirects a handshake follows.
const MAX_REDIRECTS: usize = 5;

/// Follows up to [`MAX_REDIRECTS`] redirects, never from HTTPS to plain
/// HTTP. reqwest drops `Authorization` on a redirect to another host or
/// port, but keeps it when only the scheme changes, so `https://reg/v2/`
/// answering `Location: http://reg:443/v2/` would send the credential in
/// clear. A redirect policy cannot edit headers, so such a redirect is not
/// followed at all: the handshake ends `Unreachable`, and the credential
/// never leaves over plain HTTP.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.url().scheme() != "https"
            && attempt.previous().iter().any(|u| u.scheme() == "https");
        if downgrade {
            attempt.error(RedirectRefused::Downgrade)
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(RedirectRefused::TooMany)
        } else {
            attempt.follow()
        }
    })
}

#[derive(Debug, thiserror::Error)]
enum RedirectRefused {
    #[error(
        "redirected from HTTPS to plain HTTP; not followed, so no credential goes out in clear"
    )]
    Downgrade,
    #[error("more than {} redirects", MAX_REDIRECTS)]
    TooMany,
}

/// Where a token realm must not be, unless the registry is there too: the
/// node's own services and the cloud metadata service, which answers with
/// the node's cloud credentials. A registry's `WWW-Authenticate` names the
/// realm, and the realm receives the password (as with `docker login`);
/// this keeps a registry answer from aiming it at those.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sensitive {
    /// `127.0.0.0/8`, `::1`, and the unspecified `0.0.0.0` / `::`, which
    /// Linux connects to the local host.
    Loopback,
    /// `169.254.0.0/16` and `fe80::/10`, less the metadata addresses.
    LinkLocal,
    /// `169.254.169.254` (AWS, GCP, Azure and others) and `fd00:ec2::254`
    /// (AWS over IPv6).
    Metadata,
}

impl fmt::Display for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Loopback => "loopback",
            Self::LinkLocal => "link-local",
            Self::Metadata => "cloud metadata",
        })
    }
}

fn sensitive(ip: IpAddr) -> Option<Sensitive> {
    const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    match ip.to_canonical() {
        IpAddr::V4(v4) if v4 == Ipv4Addr::new(169, 254, 169, 254) => Some(Sensitive::Metadata),
        IpAddr::V4(v4) if v4.is_loopback() || v4.is_unspecified() => Some(Sensitive::Loopback),
        IpAddr::V4(v4) if v4.is_link_local() => Some(Sensitive::LinkLocal),
        IpAddr::V6(v6) if v6 == METADATA_V6 => Some(Sensitive::Metadata),
        IpAddr::V6(v6) if v6.is_loopback() || v6.is_unspecified() => Some(Sensitive::Loopback),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some(Sensitive::LinkLocal),
        _ => None,
    }
}

/// Why the realm's addresses are refused, or `None`: any address in a
/// [`Sensitive`] class that none of the registry's own addresses is in. A
/// registry on loopback (a test, a node-local mirror) may keep its realm
/// there too.
fn realm_refusal(realm: &[SocketAddr], registry: &[SocketAddr]) -> Option<String> {
    let registry: Vec<Sensitive> = registry.iter().filter_map(|a| sensitive(a.ip())).collect();
    realm
        .iter()
        .find_map(|a| {
            sensitive(a.ip())
                .filter(|class| !registry.contains(class))
                .map(|class| (a.ip(), class))
        })
        .map(|(ip, class)| format!("resolves to {ip}, a {class} address, and the registry is not"))
}

/// The addresses the HTTP client would connect to for `url`: an IP literal
/// as it is; a name that `REGBRIDGE_CONNECT_TO` lists at its address there;
/// any other name through the system resolver (`getaddrinfo`), which is
/// what reqwest's default resolver calls too.
async fn resolve(url: &Url) -> Result<Vec<SocketAddr>, String> {
    let port = url.port_or_known_default().unwrap_or(443);
    match host_of(url) {
        Host::Ip(ip) => Ok(vec![SocketAddr::new(ip, port)]),
        Host::Name(name) => match crate::connect_to::lookup(name, url.port()) {
            Some(addr) => Ok(vec![addr]),
            None => tokio::net::lookup_host((name, port))
                .await
                .map(Iterator::collect)
                .map_err(|e| format!("cannot resolve {name}: {e}")),
        },
        Host::None => Err("the URL names no host".into()),
    }
}

enum Host<'a> {
    Ip(IpAddr),
    Name(&'a str),
    None,
}

/// A URL's host as an address or a name (`url::Host`, which reqwest does
/// not re-export).
fn host_of(url: &Url) -> Host<'_> {
    match url.host_str() {
        None => Host::None,
        Some(host) => match host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => Host::Ip(ip),
            Err(_) => Host::Name(host),
        },
    }
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new(Self::DEFAULT_TIMEOUT)
    }
}

/// Where a key's `/v2/` lives.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    base: Url,
    plain_http: bool,
}

impl Target {
    /// kubelet's reading of a key, plus Docker Hub's API host. The error is a
    /// reason for `Unreachable`.
    fn parse(key: &str) -> Result<Self, String> {
        let key = Key::parse(key).ok_or("the key names no host")?;
        if key.userinfo {
            return Err("the key carries user information; it names no plain host".into());
        }
        let authority = key.host.to_ascii_lowercase();
        if authority.contains('*') {
            return Err(format!(
                "{authority} is a wildcard key, which names no single host to ask"
            ));
        }
        let plain_http = key.plain_http;
        let authority = match authority.as_str() {
            "index.docker.io" | "docker.io" => DOCKER_HUB_API.to_owned(),
            _ => authority,
        };
        let scheme = if plain_http { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{authority}/v2/"))
            .map_err(|_| format!("{authority} is not a valid host[:port]"))?;
        Ok(Self { base, plain_http })
    }
}

/// One run of the handshake. `token` keeps the bearer token, so the caller
/// can scrub it from the result.
struct Handshake<'a> {
    verifier: &'a Verifier,
    target: &'a Target,
    username: &'a str,
    password: &'a str,
    token: Option<String>,
}

/// What a request produced: an answer, or the result it already decided.
type Step<T> = Result<T, Verification>;

impl Handshake<'_> {
    async fn run(mut self) -> (Verification, Option<String>) {
        let result = match self.steps().await {
            Ok(v) | Err(v) => v,
        };
        (result, self.token)
    }

    async fn steps(&mut self) -> Step<Verification> {
        let base = self.target.base.clone();
        let verifier = self.verifier;
        let client = &verifier.client;
        let anonymous = self.send(client.get(base.clone()), "/v2/").await?;
        let status = anonymous.status();
        if status.is_success() {
            return Ok(Verification::Anonymous);
        }
        if status != StatusCode::UNAUTHORIZED {
            return Err(unexpected(&base, status));
        }
        let challenge =
            Challenge::pick(anonymous.headers()).map_err(|reason| Verification::Unreachable {
                reason: format!("{base}: {reason}"),
            })?;
        let request = client.get(base.clone());
        let authed = match challenge {
            Challenge::Basic => request.basic_auth(self.username, Some(self.password)),
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let token = self.token(&realm, service, scope).await?;
                self.token = Some(token.clone());
                request.bearer_auth(token)
            }
        };
        let answer = self.send(authed, "/v2/").await?;
        let status = answer.status();
        if status.is_success() {
            Ok(Verification::Verified)
        } else if is_refusal(status) {
            Ok(rejected(status, &read_body(answer).await))
        } else {
            Err(unexpected(&base, status))
        }
    }

    /// The bearer token from the realm, or the result that ends the
    /// handshake there.
    async fn token(
        &self,
        realm: &str,
        service: Option<String>,
        scope: Option<String>,
    ) -> Step<String> {
        let mut url = Url::parse(realm).map_err(|_| Verification::Unreachable {
            reason: format!(
                "{}: the Bearer challenge's realm is not a URL",
                self.target.base
            ),
        })?;
        if url.scheme() == "http" && !self.target.plain_http {
            return Err(Verification::Unreachable {
                reason: format!(
                    "{}: the token realm {} is plain HTTP; credentials are not sent there",
                    self.target.base,
                    without_query(&url)
                ),
            });
        }
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(Verification::Unreachable {
                reason: format!("{}: the token realm is not an HTTP URL", self.target.base),
            });
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = &service {
                query.append_pair("service", service);
            }
            if let Some(scope) = &scope {
                query.append_pair("scope", scope);
            }
            query.append_pair("account", self.username);
        }
        let shown = without_query(&url);
        let realm_client = self.realm_client(&url).await?;
        let request = realm_client
            .get(url)
            .basic_auth(self.username, Some(self.password));
        let answer = self.send(request, "token realm").await?;
        let status = answer.status();
        if is_refusal(status) {
            return Err(rejected(status, &read_body(answer).await));
        }
        if !status.is_success() {
            return Err(unexpected(&shown, status));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = read_body(answer).await;
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|_| Verification::Unreachable {
                reason: format!("{shown}: the token response is not the expected JSON"),
            })?;
        parsed
            .token
            .filter(|t| !t.is_empty())
            .or(parsed.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| Verification::Unreachable {
                reason: format!("{shown}: the token response carries no token"),
            })
    }

    /// The client for the token request, after the realm's addresses
    /// passed [`realm_refusal`]. A realm named by a host name is pinned to
    /// the addresses that were checked, so a second DNS answer (rebinding)
    /// cannot move the request elsewhere.
    async fn realm_client(&self, realm: &Url) -> Step<reqwest::Client> {
        let base = &self.target.base;
        let unreachable = |reason: String| Verification::Unreachable {
            reason: format!("{base}: {reason}"),
        };
        let realm_addrs = resolve(realm).await.map_err(unreachable)?;
        // The registry already answered, so its name resolves.
        let registry_addrs = resolve(base).await.unwrap_or_default();
        if let Some(reason) = realm_refusal(&realm_addrs, &registry_addrs) {
            return Err(unreachable(format!(
                "the token realm {} {reason}; the credential is not sent there",
                realm.host_str().unwrap_or_default()
            )));
        }
        match host_of(realm) {
            Host::Name(name) => self
                .verifier
                .builder()
                .resolve_to_addrs(name, &realm_addrs)
                .build()
                .map_err(|e| unreachable(format!("token realm client: {}", category(&e)))),
            Host::Ip(_) | Host::None => Ok(self.verifier.client.clone()),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder, what: &str) -> Step<reqwest::Response> {
        request.send().await.map_err(|e| {
            let shown = e
                .url()
                .map(without_query)
                .unwrap_or_else(|| what.to_owned());
            Verification::Unreachable {
                reason: format!("{shown}: {}", transport(&e)),
            }
        })
    }
}

fn is_refusal(status: StatusCode) -> bool {
    status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN
}

/// A status that is neither success nor refusal: the registry is broken
/// (`5xx`) or this is not the v2 API.
fn unexpected(url: &impl fmt::Display, status: StatusCode) -> Verification {
    let reason = if status.is_server_error() {
        format!("{url}: the registry answered {status}")
    } else {
        format!("{url}: unexpected {status} (not the registry v2 API?)")
    };
    Verification::Unreachable { reason }
}

fn without_query(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// The challenge to answer, from every `WWW-Authenticate` header of a `401`.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    fn pick(headers: &HeaderMap) -> Result<Self, String> {
        let values: Vec<&str> = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        Self::pick_from(&values)
    }

    /// Bearer if offered, else Basic; no header at all also means Basic.
    fn pick_from(values: &[&str]) -> Result<Self, String> {
        if values.iter().all(|v| v.trim().is_empty()) {
            return Ok(Self::Basic);
        }
        let mut schemes = Vec::new();
        let mut basic = false;
        for value in values {
            // Challenges before a syntax error still count.
            for challenge in http_auth::ChallengeParser::new(value).map_while(Result::ok) {
                if challenge.scheme.eq_ignore_ascii_case("bearer") {
                    let param = |name: &str| {
                        challenge
                            .params
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v.to_unescaped())
                    };
                    let Some(realm) = param("realm").filter(|r| !r.is_empty()) else {
                        return Err("the Bearer challenge has no realm".into());
                    };
                    return Ok(Self::Bearer {
                        realm,
                        service: param("service"),
                        scope: param("scope").filter(|s| !s.is_empty()),
                    });
                }
                if challenge.scheme.eq_ignore_ascii_case("basic") {
                    basic = true;
                }
                schemes.push(challenge.scheme.to_owned());
            }
        }
        if basic {
            Ok(Self::Basic)
        } else if schemes.is_empty() {
            Err("unreadable WWW-Authenticate challenge".into())
        } else {
            Err(format!(
                "unsupported auth scheme {} (only Basic and Bearer)",
                schemes.join(", ")
            ))
        }
    }
}

/// The first `MAX_BODY` bytes of the body; nothing on a read error.
async fn read_body(response: reqwest::Response) -> Vec<u8> {
    crate::body::read_limited(response, MAX_BODY)
        .await
        .unwrap_or_default()
}

/// `Rejected` with the registry's own words: `errors[0]` of the v2 error
/// body, Docker Hub's `details`, or an OAuth `error`/`error_description`.
fn rejected(status: StatusCode, body: &[u8]) -> Verification {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        errors: Vec<Entry>,
        details: Option<String>,
        error: Option<String>,
        error_description: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: Option<String>,
        message: Option<String>,
    }
    let parsed: Option<Body> = serde_json::from_slice(body).ok();
    let (code, message) = match parsed {
        Some(mut b) if !b.errors.is_empty() => {
            let first = b.errors.swap_remove(0);
            (first.code, first.message)
        }
        Some(b) if b.details.is_some() => (None, b.details),
        Some(b) if b.error.is_some() => (b.error, b.error_description),
        _ => (None, None),
    };
    let message = message
        .filter(|m| !m.trim().is_empty())
        .unwrap_or_else(|| format!("the registry answered {status}"));
    // Cut to length only after the secrets are scrubbed (`scrub`).
    Verification::Rejected { code, message }
}

/// Printable, on one line, at most `MAX_MESSAGE` characters.
fn short(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let clean = clean.trim();
    match clean.char_indices().nth(MAX_MESSAGE) {
        Some((cut, _)) => format!("{}...", &clean[..cut]),
        None => clean.to_owned(),
    }
}

fn scrub(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_owned(), |t, s| t.replace(s.as_str(), "<redacted>"))
}

/// A transport failure, by category, with the innermost cause (an OS or TLS
/// message; reqwest's own `Display` would add the URL with its query).
fn transport(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return "timed out".into();
    }
    if let Some(tls) = tls_cause(err) {
        return format!("TLS: {tls}");
    }
    let cause = innermost(err);
    if err.is_connect() {
        format!("cannot connect: {cause}")
    } else {
        format!("request failed: {cause}")
    }
}

fn tls_cause(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(tls) = err.downcast_ref::<rustls::Error>() {
        return Some(tls.to_string());
    }
    // An io::Error that wraps another error reports that error's source as
    // its own, skipping the wrapped error itself; so look inside it. The
    // connector nests them: io::Error(Other, io::Error(InvalidData, rustls)).
    if let Some(inner) = err
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        return tls_cause(inner);
    }
    err.source().and_then(tls_cause)
}

fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut last = err;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

fn category(err: &reqwest::Error) -> String {
    innermost(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(key: &str) -> (String, bool) {
        let t = Target::parse(key).unwrap();
        (t.base.to_string(), t.plain_http)
    }

    #[test]
    fn keys_are_read_as_kubelet_reads_them() {
        assert_eq!(
            target("registry.example.com"),
            ("https://registry.example.com/v2/".into(), false)
        );
        assert_eq!(
            target("https://Registry.Example.com:5000/v1/"),
            ("https://registry.example.com:5000/v2/".into(), false)
        );
        assert_eq!(
            target("ghcr.io/my-org/team"),
            ("https://ghcr.io/v2/".into(), false)
        );
        assert_eq!(
            target("http://127.0.0.1:5000"),
            ("http://127.0.0.1:5000/v2/".into(), true)
        );
        assert_eq!(
            target("HTTP://localhost:5000/"),
            ("http://localhost:5000/v2/".into(), true)
        );
    }

    #[test]
    fn docker_hub_keys_are_verified_at_registry_1() {
        for key in [
            "https://index.docker.io/v1/",
            "index.docker.io",
            "docker.io",
            "registry-1.docker.io",
        ] {
            assert_eq!(
                target(key),
                ("https://registry-1.docker.io/v2/".into(), false),
                "{key}"
            );
        }
    }

    #[test]
    fn wildcard_empty_and_userinfo_keys_name_no_host() {
        assert!(
            Target::parse("*.dkr.ecr.eu-west-1.amazonaws.com")
                .unwrap_err()
                .contains("wildcard")
        );
        assert!(Target::parse("https://").is_err());
        let err = Target::parse("https://bob:hunter2@r.example").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    fn bearer(realm: &str, service: Option<&str>, scope: Option<&str>) -> Challenge {
        Challenge::Bearer {
            realm: realm.into(),
            service: service.map(Into::into),
            scope: scope.map(Into::into),
        }
    }

    #[test]
    fn bearer_challenge_params_are_read_with_quoted_commas() {
        let header = r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:team/app:pull,push""#;
        assert_eq!(
            Challenge::pick_from(&[header]).unwrap(),
            bearer(
                "https://auth.example/token",
                Some("registry.example"),
                Some("repository:team/app:pull,push")
            )
        );
    }

    #[test]
    fn bearer_challenge_with_escapes_and_odd_case() {
        let header = r#"bearer Realm="https://a.example/t?x=\"1\"", SERVICE=reg"#;
        assert_eq!(
            Challenge::pick_from(&[header]).unwrap(),
            bearer("https://a.example/t?x=\"1\"", Some("reg"), None)
        );
    }

    #[test]
    fn bearer_wins_over_basic_in_one_header_or_several() {
        let both = r#"Basic realm="x", Bearer realm="https://a.example/token",service="s""#;
        assert_eq!(
            Challenge::pick_from(&[both]).unwrap(),
            bearer("https://a.example/token", Some("s"), None)
        );
        assert_eq!(
            Challenge::pick_from(&[r#"Basic realm="x""#, r#"Bearer realm="https://a/t""#]).unwrap(),
            bearer("https://a/t", None, None)
        );
    }

    #[test]
    fn basic_challenge_and_missing_header_mean_basic() {
        assert_eq!(
            Challenge::pick_from(&[r#"Basic realm="regbridge-e2e""#]).unwrap(),
            Challenge::Basic
        );
        assert_eq!(Challenge::pick_from(&[]).unwrap(), Challenge::Basic);
    }

    #[test]
    fn unsupported_or_broken_challenges_are_explained() {
        let err = Challenge::pick_from(&["Negotiate"]).unwrap_err();
        assert!(err.contains("Negotiate"), "{err}");
        let err = Challenge::pick_from(&[r#"Bearer service="s""#]).unwrap_err();
        assert!(err.contains("realm"), "{err}");
        assert!(Challenge::pick_from(&["=,="]).is_err());
    }

    #[test]
    fn rejection_carries_the_registry_code_and_message() {
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#;
        assert_eq!(
            rejected(StatusCode::UNAUTHORIZED, body),
            Verification::Rejected {
                code: Some("UNAUTHORIZED".into()),
                message: "authentication required".into()
            }
        );
        let hub = br#"{"details":"incorrect username or password"}"#;
        assert_eq!(
            rejected(StatusCode::UNAUTHORIZED, hub).message(),
            "incorrect username or password"
        );
        let empty = rejected(StatusCode::FORBIDDEN, b"<html>nope</html>");
        assert_eq!(empty.message(), "the registry answered 403 Forbidden");
    }

    #[test]
    fn long_or_multiline_messages_are_cut_to_one_short_line() {
        let long = format!(
            r#"{{"errors":[{{"code":"DENIED","message":"{}\nsecond line"}}]}}"#,
            "x".repeat(500)
        );
        let v = rejected(StatusCode::FORBIDDEN, long.as_bytes()).scrub(&[]);
        let msg = v.message();
        assert!(!msg.contains('\n'));
        assert!(msg.len() < MAX_MESSAGE + 20, "{}", msg.len());
    }

    #[test]
    fn no_result_carries_the_password_the_auth_value_or_the_token() {
        let password = "hunter2-Very-Secret";
        let auth = STANDARD.encode(format!("bob:{password}"));
        let token = "eyJhbGciOi.token-value.sig";
        let secrets = vec![password.to_owned(), auth.clone(), token.to_owned()];
        let echo = format!("bad {password} / {auth} / {token}");
        let results = [
            Verification::Verified,
            Verification::Anonymous,
            Verification::Rejected {
                code: Some(format!("CODE-{password}")),
                message: echo.clone(),
            },
            Verification::Unreachable {
                reason: echo.clone(),
            },
        ];
        for v in results {
            let v = v.scrub(&secrets);
            for shown in [format!("{v:?}"), v.to_string(), v.message()] {
                for secret in &secrets {
                    assert!(!shown.contains(secret.as_str()), "{shown}");
                }
            }
        }
    }

    #[test]
    fn a_password_across_the_cut_leaves_no_part_behind() {
        let password = "hunter2-Very-Secret-Password";
        // The password starts 10 characters before the cut.
        let body = format!(
            r#"{{"errors":[{{"code":"DENIED","message":"{}{password} is wrong"}}]}}"#,
            "x".repeat(MAX_MESSAGE - 10)
        );
        let v = rejected(StatusCode::UNAUTHORIZED, body.as_bytes()).scrub(&[password.to_owned()]);
        let shown = v.message();
        assert!(!shown.contains(&password[..10]), "{shown}");
        assert!(shown.len() < MAX_MESSAGE + 20, "{}", shown.len());
    }

    fn addrs(ips: &[&str]) -> Vec<SocketAddr> {
        ips.iter()
            .map(|ip| SocketAddr::new(ip.parse().unwrap(), 443))
            .collect()
    }

    #[test]
    fn node_local_and_metadata_addresses_are_classed() {
        use Sensitive::*;
        for (ip, class) in [
            ("127.0.0.1", Some(Loopback)),
            ("127.8.9.10", Some(Loopback)),
            ("::1", Some(Loopback)),
            ("0.0.0.0", Some(Loopback)),
            ("::", Some(Loopback)),
            ("169.254.169.254", Some(Metadata)),
            ("::ffff:169.254.169.254", Some(Metadata)),
            ("fd00:ec2::254", Some(Metadata)),
            ("169.254.170.2", Some(LinkLocal)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("10.0.0.1", None),
            ("192.0.2.7", None),
            ("fd00:ec2::253", None),
            ("2001:db8::1", None),
        ] {
            assert_eq!(sensitive(ip.parse().unwrap()), class, "{ip}");
        }
    }

    #[test]
    fn a_realm_may_share_the_registry_class_and_no_other() {
        let public = addrs(&["192.0.2.7"]);
        let loopback = addrs(&["127.0.0.1"]);
        assert_eq!(realm_refusal(&public, &loopback), None);
        assert_eq!(realm_refusal(&addrs(&["127.0.0.2"]), &loopback), None);
        let refused = realm_refusal(&addrs(&["169.254.169.254"]), &loopback).unwrap();
        assert!(refused.contains("cloud metadata"), "{refused}");
        assert!(realm_refusal(&addrs(&["::1"]), &public).is_some());
        assert!(
            realm_refusal(&addrs(&["169.254.169.254"]), &addrs(&["169.254.10.1"])).is_some(),
            "link-local is not metadata"
        );
        assert!(
            realm_refusal(&addrs(&["192.0.2.8", "169.254.169.254"]), &public).is_some(),
            "one address of a name is enough"
        );
    }

    #[tokio::test]
    async fn localhost_resolves_to_loopback() {
        let url = Url::parse("https://localhost:5000/token").unwrap();
        let found = resolve(&url).await.unwrap();
        assert!(!found.is_empty());
        assert!(
            found
                .iter()
                .all(|a| sensitive(a.ip()) == Some(Sensitive::Loopback))
        );
    }

    #[test]
    fn result_names_are_stable() {
        assert_eq!(Verification::Verified.to_string(), "Verified");
        let r = Verification::Rejected {
            code: Some("UNAUTHORIZED".into()),
            message: "authentication required".into(),
        };
        assert_eq!(r.result(), "Rejected");
        assert!(r.is_rejected());
        assert_eq!(
            r.to_string(),
            "Rejected: UNAUTHORIZED: authentication required"
        );
        assert!(!Verification::Anonymous.is_rejected());
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_without_the_password() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let cred = RegistryCredential {
            host: format!("http://127.0.0.1:{port}"),
            username: "bob".into(),
            password: crate::Redacted::new("hunter2-Very-Secret".into()),
            expires_at: None,
        };
        let v = Verifier::new(Duration::from_secs(5)).verify(&cred).await;
        assert_eq!(v.result(), "Unreachable", "{v}");
        assert!(v.message().contains("cannot connect"), "{v}");
        assert!(!format!("{v:?}").contains("hunter2"));
    }
}
