//! The registry handshake of `verify` against real `docker-registry`
//! instances, with `skopeo` as the independent client: whatever regbridge
//! calls `Verified`, `skopeo login` accepts with the same credential, and
//! whatever it calls `Rejected`, skopeo refuses.
//!
//! - htpasswd (Basic): the registry tests/run.sh starts
//!   (`REGBRIDGE_REGISTRY_URL`, `_USER`, `_PASSWORD`).
//! - Token auth (Bearer): a registry this test starts, whose
//!   `auth.token.rootcertbundle` holds a certificate made here; a small token
//!   server in this file checks Basic credentials and issues ES256 JWTs
//!   signed with that certificate's key, as the distribution token-auth spec
//!   describes (the signing certificate travels in the JWT header's `x5c`).
//! - TLS with a custom CA: a registry this test starts with a server
//!   certificate from a CA made here.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use regbridge_providers::{Redacted, RegistryCredential, Trust, Verification, Verifier};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

use common::peer;

const TIMEOUT: Duration = Duration::from_secs(10);

fn cred(host: &str, user: &str, password: &str) -> RegistryCredential {
    RegistryCredential {
        host: host.into(),
        username: user.into(),
        password: Redacted::new(password.into()),
        expires_at: None,
    }
}

/// `name` on PATH, or `None` after a loud SKIP; a failure with
/// `REGBRIDGE_REQUIRE_PEERS=1`, as for the peers themselves.
fn tool(name: &str) -> bool {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        if std::env::var("REGBRIDGE_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!("{name} is not installed, and REGBRIDGE_REQUIRE_PEERS=1 makes that a failure");
        }
        eprintln!(
            "\n*** SKIP: {name} is not installed, so this peer test did not run (tests/run.sh installs it) ***\n"
        );
    }
    found
}

fn workdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("regbridge-verify-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn assert_no_secret(v: &Verification, secret: &str) {
    for shown in [format!("{v:?}"), v.to_string(), v.message()] {
        assert!(
            !shown.contains(secret),
            "a result shows the password: {shown}"
        );
    }
}

// ---------------------------------------------------------------- skopeo

/// `skopeo login` with this credential: it runs the same `/v2/` handshake
/// in containers/image, our independent client.
fn skopeo_login(dir: &Path, host: &str, user: &str, password: &str, tls: &[&str]) -> Output {
    let authfile = dir.join("skopeo-auth.json");
    let mut child = Command::new("skopeo")
        .args(["--command-timeout", "60s", "login"])
        .args(tls)
        .args(["--authfile", authfile.to_str().unwrap()])
        .args(["--username", user, "--password-stdin", host])
        .env("HOME", dir)
        .env_remove("REGISTRY_AUTH_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("skopeo runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// skopeo agrees with regbridge's result for this credential.
fn skopeo_agrees(dir: &Path, v: &Verification, host: &str, user: &str, pw: &str, tls: &[&str]) {
    let out = skopeo_login(dir, host, user, pw, tls);
    match v {
        Verification::Verified => assert!(
            out.status.success(),
            "regbridge says Verified, skopeo login fails: {}",
            text(&out)
        ),
        Verification::Rejected { .. } => assert!(
            !out.status.success(),
            "regbridge says Rejected, skopeo login succeeds: {}",
            text(&out)
        ),
        other => panic!("no skopeo check for {other}"),
    }
}

// ------------------------------------------------------- docker-registry

/// A `docker-registry` this test started; killed on drop.
struct Registry {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// Starts `docker-registry serve` with these extra `http:` lines and this
    /// `auth:` body (none when empty), and
    /// waits until its port accepts connections.
    fn start(dir: &Path, http_extra: &str, auth: &str) -> Self {
        let port = free_port();
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let auth_section = if auth.is_empty() {
            String::new()
        } else {
            format!("auth:\n{auth}")
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{http_extra}{auth_section}",
            dir.join("storage").display()
        );
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join("registry.log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("docker-registry runs");
        let registry = Self { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {port}: {}",
                std::fs::read_to_string(&registry.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        registry
    }
}

fn htpasswd(dir: &Path, user: &str, password: &str) -> PathBuf {
    let path = dir.join("htpasswd");
    let out = Command::new("htpasswd")
        .args(["-Bbc", path.to_str().unwrap(), user, password])
        .output()
        .expect("htpasswd runs");
    assert!(out.status.success(), "{}", text(&out));
    path
}

// --------------------------------------------------------- htpasswd peer

#[tokio::test]
async fn basic_auth_registry_verifies_good_rejects_wrong_and_skopeo_agrees() {
    let Some(url) = peer("REGBRIDGE_REGISTRY_URL") else {
        return;
    };
    if !tool("skopeo") {
        return;
    }
    let user = std::env::var("REGBRIDGE_REGISTRY_USER").expect("set with the URL");
    let password = std::env::var("REGBRIDGE_REGISTRY_PASSWORD").expect("set with the URL");
    let host = url.trim_start_matches("http://").to_owned();
    let key = format!("http://{host}");
    let verifier = Verifier::new(TIMEOUT);
    let dir = workdir("basic");
    let plain = ["--tls-verify=false"];

    let good = verifier.verify(&cred(&key, &user, &password)).await;
    assert_eq!(good, Verification::Verified);
    skopeo_agrees(&dir, &good, &host, &user, &password, &plain);

    let wrong_password = format!("{password}-wrong");
    let wrong = verifier.verify(&cred(&key, &user, &wrong_password)).await;
    let Verification::Rejected { code, message } = &wrong else {
        panic!("want Rejected, got {wrong}");
    };
    assert_eq!(code.as_deref(), Some("UNAUTHORIZED"), "{wrong}");
    assert!(!message.is_empty());
    assert_no_secret(&wrong, &wrong_password);
    assert_no_secret(&wrong, &password);
    skopeo_agrees(&dir, &wrong, &host, &user, &wrong_password, &plain);

    let unknown_user = verifier.verify(&cred(&key, "nobody", &password)).await;
    assert!(unknown_user.is_rejected(), "{unknown_user}");
}

#[tokio::test]
async fn a_closed_loopback_port_is_unreachable() {
    let port = free_port(); // bound and released: nothing listens there
    let verifier = Verifier::new(TIMEOUT);
    for key in [
        format!("http://127.0.0.1:{port}"),
        format!("127.0.0.1:{port}"),
    ] {
        let v = verifier
            .verify(&cred(&key, "u", "closed-port-secret"))
            .await;
        let Verification::Unreachable { reason } = &v else {
            panic!("want Unreachable for {key}, got {v}");
        };
        assert!(reason.contains("cannot connect"), "{reason}");
        assert_no_secret(&v, "closed-port-secret");
    }
}

#[tokio::test]
async fn a_registry_without_auth_is_anonymous_not_verified() {
    if !tool("docker-registry") {
        return;
    }
    let dir = workdir("anonymous");
    // No `auth:` section: anyone may read.
    let registry = Registry::start(&dir, "", "");
    let v = Verifier::new(TIMEOUT)
        .verify(&cred(
            &format!("http://127.0.0.1:{}", registry.port),
            "u",
            "p",
        ))
        .await;
    assert_eq!(v, Verification::Anonymous);
    assert!(!v.is_rejected());
}

// ------------------------------------------------------------ token auth

const SERVICE: &str = "regbridge-token-registry";
const ISSUER: &str = "regbridge-test-issuer";

/// A token server after the distribution token-auth spec: `GET /token`
/// with Basic auth, `service`, `scope` and `account`; a JWT whose `aud` is
/// the service, whose `access` grants the requested scopes, signed ES256 by
/// the key whose certificate is in the registry's `rootcertbundle`.
struct TokenServer {
    users: Mutex<HashMap<String, String>>,
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    issued: Mutex<u32>,
}

impl TokenServer {
    fn revoke(&self, user: &str) {
        self.users.lock().unwrap().remove(user);
    }

    fn check(&self, headers: &HeaderMap) -> Option<String> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let encoded = value.strip_prefix("Basic ")?;
        let decoded = String::from_utf8(STANDARD.decode(encoded).ok()?).ok()?;
        let (user, password) = decoded.split_once(':')?;
        let users = self.users.lock().unwrap();
        (users.get(user).map(String::as_str) == Some(password)).then(|| user.to_owned())
    }

    fn jwt(&self, subject: &str, scopes: &[String]) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|scope| {
                // type:name:actions, where a name may itself hold a ':'.
                let (kind, rest) = scope.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(serde_json::json!({
                    "type": kind, "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let mut issued = self.issued.lock().unwrap();
        *issued += 1;
        let header = serde_json::json!({
            "typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&self.cert_der)],
        });
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": subject, "aud": SERVICE,
            "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": format!("regbridge-test-{}", *issued),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .unwrap();
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }
}

async fn token_endpoint(
    State(server): State<Arc<TokenServer>>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let Some(user) = server.check(&headers) else {
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                r#"Basic realm="regbridge-test-token""#,
            )],
            axum::Json(serde_json::json!({
                "errors": [{"code": "UNAUTHORIZED", "message": "invalid username or password"}]
            })),
        )
            .into_response();
    };
    if query.iter().any(|(k, v)| k == "service" && v != SERVICE) {
        return (StatusCode::BAD_REQUEST, "unknown service").into_response();
    }
    let scopes: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned))
        .collect();
    let token = server.jwt(&user, &scopes);
    axum::Json(serde_json::json!({
        "token": token, "access_token": token, "expires_in": 300,
    }))
    .into_response()
}

/// The token server on loopback, on a thread of its own so that a test may
/// block on skopeo meanwhile; it stops when the test process ends.
fn serve_tokens(server: Arc<TokenServer>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let app = axum::Router::new()
                .route("/token", axum::routing::get(token_endpoint))
                .with_state(server);
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr
}

/// The token server, and the registry that trusts its signing certificate.
fn token_setup(dir: &Path, users: &[(&str, &str)]) -> (Arc<TokenServer>, Registry) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["regbridge-token-signer".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let bundle = dir.join("token-signer.crt");
    std::fs::write(&bundle, cert.pem()).unwrap();
    let signing = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &key.serialize_der(),
        &SystemRandom::new(),
    )
    .unwrap();
    let server = Arc::new(TokenServer {
        users: Mutex::new(
            users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
        ),
        key: signing,
        cert_der: cert.der().to_vec(),
        issued: Mutex::new(0),
    });
    let addr = serve_tokens(server.clone());
    let auth = format!(
        "  token:\n    realm: http://{addr}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
        bundle.display()
    );
    let registry = Registry::start(dir, "", &auth);
    (server, registry)
}

#[tokio::test]
async fn token_auth_registry_verifies_good_rejects_wrong_and_revoked_and_skopeo_agrees() {
    if !tool("docker-registry") || !tool("skopeo") {
        return;
    }
    let dir = workdir("token");
    let (user, password) = ("robot", "token-pass-Secret-1");
    let (server, registry) = token_setup(&dir, &[(user, password)]);
    let host = format!("127.0.0.1:{}", registry.port);
    let key = format!("http://{host}");
    let verifier = Verifier::new(TIMEOUT);
    let plain = ["--tls-verify=false"];

    let good = verifier.verify(&cred(&key, user, password)).await;
    assert_eq!(
        good,
        Verification::Verified,
        "registry log: {}",
        std::fs::read_to_string(&registry.log).unwrap_or_default()
    );
    assert!(
        *server.issued.lock().unwrap() >= 1,
        "the Bearer path was taken"
    );
    skopeo_agrees(&dir, &good, &host, user, password, &plain);

    let wrong_password = "token-pass-Wrong-2";
    let wrong = verifier.verify(&cred(&key, user, wrong_password)).await;
    let Verification::Rejected { code, .. } = &wrong else {
        panic!("want Rejected, got {wrong}");
    };
    assert_eq!(code.as_deref(), Some("UNAUTHORIZED"));
    assert_no_secret(&wrong, wrong_password);
    skopeo_agrees(&dir, &wrong, &host, user, wrong_password, &plain);

    // Revoked: the token server stops accepting a password that worked.
    server.revoke(user);
    let revoked = verifier.verify(&cred(&key, user, password)).await;
    assert!(revoked.is_rejected(), "{revoked}");
    assert_no_secret(&revoked, password);
    skopeo_agrees(&dir, &revoked, &host, user, password, &plain);
}

#[tokio::test]
async fn a_token_the_registry_does_not_trust_is_rejected_at_v2() {
    if !tool("docker-registry") {
        return;
    }
    let dir = workdir("untrusted");
    let (user, password) = ("robot", "untrusted-Secret-3");
    let (_server, registry) = token_setup(&dir, &[(user, password)]);
    // Another signer's certificate in the bundle: the registry now refuses
    // every token this server issues, though the token request succeeds.
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let other_cert = rcgen::CertificateParams::new(vec!["someone-else".to_owned()])
        .unwrap()
        .self_signed(&other)
        .unwrap();
    drop(registry);
    std::fs::write(dir.join("token-signer.crt"), other_cert.pem()).unwrap();
    let config = std::fs::read_to_string(dir.join("config.yml")).unwrap();
    let auth = config.split_once("auth:\n").unwrap().1.to_owned();
    let registry = Registry::start(&dir, "", &auth);
    let v = Verifier::new(TIMEOUT)
        .verify(&cred(
            &format!("http://127.0.0.1:{}", registry.port),
            user,
            password,
        ))
        .await;
    let Verification::Rejected { code, .. } = &v else {
        panic!("want Rejected, got {v}");
    };
    assert_eq!(code.as_deref(), Some("UNAUTHORIZED"), "{v}");
}

// ----------------------------------------------------------- custom CA

/// A test CA, and a server certificate for 127.0.0.1 signed by it.
fn tls_files(dir: &Path) -> PathBuf {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "regbridge test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
    std::fs::write(dir.join("server.crt"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    let certs = dir.join("certs.d");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.crt"), ca.pem()).unwrap();
    certs
}

#[tokio::test]
async fn tls_with_a_custom_ca_verifies_only_when_the_ca_is_given() {
    if !tool("docker-registry") || !tool("htpasswd") || !tool("skopeo") {
        return;
    }
    let dir = workdir("tls");
    let (user, password) = ("ci", "tls-pass-Secret-4");
    let ca_dir = tls_files(&dir);
    let ca_pem = std::fs::read(ca_dir.join("ca.crt")).unwrap();
    let htpasswd = htpasswd(&dir, user, password);
    let tls = format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        dir.join("server.crt").display(),
        dir.join("server.key").display()
    );
    let auth = format!(
        "  htpasswd:\n    realm: regbridge-tls\n    path: {}\n",
        htpasswd.display()
    );
    let registry = Registry::start(&dir, &tls, &auth);
    let host = format!("127.0.0.1:{}", registry.port);
    let trust = Trust::system().with_pem(&ca_pem, "the test CA").unwrap();
    let with_ca = Verifier::new(TIMEOUT).with_trust(trust).unwrap();
    let ca_args = ["--cert-dir", ca_dir.to_str().unwrap()];

    for key in [host.clone(), format!("https://{host}/v1/")] {
        let v = with_ca.verify(&cred(&key, user, password)).await;
        assert_eq!(v, Verification::Verified, "{key}");
    }
    skopeo_agrees(
        &dir,
        &Verification::Verified,
        &host,
        user,
        password,
        &ca_args,
    );

    let wrong = with_ca.verify(&cred(&host, user, "tls-Wrong-5")).await;
    assert_eq!(wrong.result(), "Rejected", "{wrong}");
    skopeo_agrees(&dir, &wrong, &host, user, "tls-Wrong-5", &ca_args);

    let without_ca = Verifier::new(TIMEOUT)
        .verify(&cred(&host, user, password))
        .await;
    let Verification::Unreachable { reason } = &without_ca else {
        panic!("want Unreachable without the CA, got {without_ca}");
    };
    assert!(reason.contains("TLS"), "{reason}");
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");
    assert_no_secret(&without_ca, password);
    // skopeo, without the CA, refuses the server too.
    let out = skopeo_login(&dir, &host, user, password, &[]);
    assert!(!out.status.success(), "{}", text(&out));
}
