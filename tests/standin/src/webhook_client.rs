//! HTTPS calls to admission webhooks. Each webhook trusts only its configuration's
//! `caBundle`, as kube-apiserver's webhook client does, so a test's self-signed
//! certificate works and a wrong bundle fails the TLS handshake. Clients are cached
//! by bundle, since building one parses certificates.

use std::collections::HashMap;
use std::error::Error as _;
use std::sync::Mutex;

use axum::body::Bytes;
use base64::Engine;
use serde_json::Value;

use crate::webhook_config::Webhook;

/// Why a webhook could not be called: the reasons kube-apiserver counts as
/// `ErrCallingWebhook`, which `failurePolicy` decides about. The texts follow the
/// real server's where a client might show them.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("could not get REST client: unable to load root certificates: {0}")]
    CaBundle(String),
    #[error("failed to call webhook: Post \"{url}\": {detail}")]
    Transport { url: String, detail: String },
    #[error("failed to call webhook: Post \"{url}\": context deadline exceeded")]
    Timeout { url: String },
    #[error("failed to call webhook: Post \"{url}\": the stand-in reaches no Service")]
    Service { url: String },
    #[error("failed to call webhook: the server responded with status {code}: {body}")]
    Status { code: u16, body: String },
}

/// HTTPS clients, one per `caBundle` (`None`: the built-in roots).
#[derive(Debug, Default)]
pub struct Clients(Mutex<HashMap<Option<String>, reqwest::Client>>);

impl Clients {
    fn client(&self, ca_bundle: Option<&str>) -> Result<reqwest::Client, CallError> {
        let key = ca_bundle.map(str::to_string);
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let mut builder = reqwest::Client::builder().use_rustls_tls().no_proxy();
        if let Some(bundle) = ca_bundle {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(bundle)
                .map_err(|e| CallError::CaBundle(e.to_string()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| CallError::CaBundle(e.to_string()))?;
            if certs.is_empty() {
                return Err(CallError::CaBundle(
                    "unable to parse bytes as PEM block".into(),
                ));
            }
            builder = certs
                .into_iter()
                .fold(builder.tls_built_in_root_certs(false), |b, c| {
                    b.add_root_certificate(c)
                });
        }
        let client = builder
            .build()
            .map_err(|e| CallError::CaBundle(chain(&e)))?;
        cache.insert(key, client.clone());
        Ok(client)
    }

    /// POSTs `review` to the webhook and returns the body of a 2xx answer. Like the
    /// real client, the URL carries the webhook's timeout as `?timeout=Ns`.
    pub async fn post(&self, hook: &Webhook, review: &Value) -> Result<Bytes, CallError> {
        let secs = hook.timeout.as_secs();
        if let Some(svc) = &hook.client.service {
            let url = format!(
                "https://{}.{}.svc:{}{}?timeout={secs}s",
                svc.name,
                svc.namespace,
                svc.port.unwrap_or(443),
                svc.path.as_deref().unwrap_or_default()
            );
            return Err(CallError::Service { url });
        }
        let url = format!(
            "{}?timeout={secs}s",
            hook.client.url.as_deref().unwrap_or_default()
        );
        let client = self.client(hook.client.ca_bundle.as_deref())?;
        let sent = client
            .post(&url)
            .header(reqwest::header::ACCEPT, "application/json, */*")
            .json(review)
            .timeout(hook.timeout)
            .send()
            .await;
        let transport = |e: reqwest::Error, url: String| {
            if e.is_timeout() {
                CallError::Timeout { url }
            } else {
                CallError::Transport {
                    url,
                    detail: chain(&e),
                }
            }
        };
        let resp = sent.map_err(|e| transport(e, url.clone()))?;
        let code = resp.status();
        let body = resp.bytes().await.map_err(|e| transport(e, url.clone()))?;
        if !code.is_success() {
            return Err(CallError::Status {
                code: code.as_u16(),
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(body)
    }
}

/// An error with its causes, which is where reqwest keeps the useful part
/// ("connection refused", "invalid peer certificate: UnknownIssuer").
fn chain(e: &reqwest::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}
