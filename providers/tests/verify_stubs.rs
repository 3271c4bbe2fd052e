//! The registry handshake against small registries scripted in this file,
//! for answers a real registry does not give: a token realm aimed at the
//! node's metadata service, and a redirect from HTTPS to plain HTTP.
//!
//! Each stub is a loopback listener that reads one request per connection
//! and records what it saw. The HTTPS stub also answers plain HTTP on the
//! same port (it looks at the first byte), so a downgrade to `http://` on
//! the same host and port reaches it, as it would reach whoever listens on
//! a network path.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use regbridge_providers::{Redacted, RegistryCredential, Trust, Verification, Verifier};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types::PrivateKeyDer};

const PASSWORD: &str = "stub-Secret-Password-7";

fn cred(host: &str) -> RegistryCredential {
    RegistryCredential {
        host: host.into(),
        username: "bob".into(),
        password: Redacted::new(PASSWORD.into()),
        expires_at: None,
    }
}

/// One request as a stub saw it.
#[derive(Clone, Debug)]
struct Seen {
    tls: bool,
    path: String,
    authorization: Option<String>,
}

type Answer = Arc<dyn Fn(&Seen) -> String + Send + Sync>;

/// A stub on 127.0.0.1; `answer` writes the whole HTTP response.
struct Stub {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Stub {
    async fn start(tls: Option<TlsAcceptor>, answer: Answer) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tls, answer, log) = (tls.clone(), answer.clone(), log.clone());
                tokio::spawn(async move {
                    let mut first = [0u8; 1];
                    let handshake = stream.peek(&mut first).await.is_ok() && first[0] == 0x16;
                    match tls.filter(|_| handshake) {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                one_request(s, true, &answer, &log).await;
                            }
                        }
                        None => one_request(stream, false, &answer, &log).await,
                    }
                });
            }
        });
        Self { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn one_request<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    tls: bool,
    answer: &Answer,
    log: &Mutex<Vec<Seen>>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.lines();
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or_default()
        .to_owned();
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_owned());
    let seen = Seen {
        tls,
        path,
        authorization,
    };
    let response = answer(&seen);
    log.lock().unwrap().push(seen);
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn response(status: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    out
}

/// A certificate for 127.0.0.1, the acceptor serving it, and a verifier
/// that trusts it.
fn tls_for_loopback() -> (TlsAcceptor, Verifier) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
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
    let trust = Trust::system()
        .with_pem(cert.pem().as_bytes(), "the stub's certificate")
        .unwrap();
    let verifier = Verifier::new(Duration::from_secs(5))
        .with_trust(trust)
        .unwrap();
    (TlsAcceptor::from(Arc::new(config)), verifier)
}

fn assert_no_secret(v: &Verification) {
    for shown in [format!("{v:?}"), v.to_string()] {
        assert!(!shown.contains(PASSWORD), "{shown}");
    }
}

/// A registry's answer cannot aim the password at the metadata service:
/// the realm is refused before any request leaves, with a reason that
/// says why.
#[tokio::test]
async fn a_token_realm_on_the_metadata_address_is_refused() {
    let registry = Stub::start(
        None,
        Arc::new(|_| {
            response(
                "401 Unauthorized",
                &[(
                    "WWW-Authenticate",
                    r#"Bearer realm="http://169.254.169.254/latest/meta-data/token",service="stub""#,
                )],
                "",
            )
        }),
    )
    .await;
    let started = Instant::now();
    let v = Verifier::new(Duration::from_secs(5))
        .verify(&cred(&format!("http://{}", registry.addr)))
        .await;
    let Verification::Unreachable { reason } = &v else {
        panic!("want Unreachable, got {v}");
    };
    assert!(
        reason.contains("169.254.169.254") && reason.contains("cloud metadata"),
        "{reason}"
    );
    assert!(reason.contains("not sent"), "{reason}");
    assert!(
        !reason.contains("cannot connect") && !reason.contains("no answer"),
        "a request was attempted: {reason}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_no_secret(&v);
    assert_eq!(registry.seen().len(), 1, "only the anonymous /v2/");
}

/// A registry on loopback may keep its realm on loopback, also by name.
#[tokio::test]
async fn a_loopback_registry_may_use_a_loopback_realm() {
    let realm = Stub::start(
        None,
        Arc::new(|_| response("200 OK", &[], r#"{"token":"stub-token-1"}"#)),
    )
    .await;
    let header = format!(
        r#"Bearer realm="http://localhost:{}/token",service="stub""#,
        realm.addr.port()
    );
    let registry = Stub::start(
        None,
        Arc::new(move |seen| match &seen.authorization {
            Some(a) if a == "Bearer stub-token-1" => response("200 OK", &[], "{}"),
            _ => response(
                "401 Unauthorized",
                &[("WWW-Authenticate", header.as_str())],
                "",
            ),
        }),
    )
    .await;
    let v = Verifier::new(Duration::from_secs(5))
        .verify(&cred(&format!("http://{}", registry.addr)))
        .await;
    assert_eq!(v, Verification::Verified);
    let asked = realm.seen();
    assert_eq!(asked.len(), 1);
    assert!(asked[0].path.starts_with("/token?"), "{:?}", asked[0]);
}

/// `https://127.0.0.1:P/v2/` answers the credential with a redirect to
/// `http://127.0.0.1:P/v2/`: same host, same port, so reqwest would keep
/// the `Authorization` header. It is not followed.
#[tokio::test]
async fn a_redirect_from_https_to_plain_http_carries_no_credential() {
    let (acceptor, verifier) = tls_for_loopback();
    let location: Arc<Mutex<String>> = Arc::default();
    let target = location.clone();
    let registry = Stub::start(
        Some(acceptor),
        Arc::new(move |seen| match (seen.tls, &seen.authorization) {
            (true, None) => response(
                "401 Unauthorized",
                &[("WWW-Authenticate", r#"Basic realm="stub""#)],
                "",
            ),
            (true, Some(_)) => response(
                "307 Temporary Redirect",
                &[("Location", target.lock().unwrap().as_str())],
                "",
            ),
            (false, _) => response("200 OK", &[], "{}"),
        }),
    )
    .await;
    *location.lock().unwrap() = format!("http://{}/v2/", registry.addr);
    let v = verifier
        .verify(&cred(&format!("https://{}", registry.addr)))
        .await;
    let in_clear: Vec<Seen> = registry
        .seen()
        .into_iter()
        .filter(|s| !s.tls && s.authorization.is_some())
        .collect();
    assert!(
        in_clear.is_empty(),
        "the credential went out over plain HTTP: {in_clear:?}"
    );
    let Verification::Unreachable { reason } = &v else {
        panic!("want Unreachable, got {v}");
    };
    assert!(reason.contains("plain HTTP"), "{reason}");
    assert_no_secret(&v);
}

/// An upgrade, or a redirect that stays on HTTPS, is still followed.
#[tokio::test]
async fn an_https_redirect_is_followed() {
    let (acceptor, verifier) = tls_for_loopback();
    let registry = Stub::start(
        Some(acceptor),
        Arc::new(
            |seen| match (seen.path.as_str(), seen.authorization.as_deref()) {
                ("/v2/", None) => response(
                    "401 Unauthorized",
                    &[("WWW-Authenticate", r#"Basic realm="stub""#)],
                    "",
                ),
                ("/v2/", Some(_)) => response("307 Temporary Redirect", &[("Location", "/v2")], ""),
                ("/v2", Some(_)) => response("200 OK", &[], "{}"),
                _ => response("404 Not Found", &[], ""),
            },
        ),
    )
    .await;
    let v = verifier
        .verify(&cred(&format!("https://{}", registry.addr)))
        .await;
    assert_eq!(v, Verification::Verified);
}
