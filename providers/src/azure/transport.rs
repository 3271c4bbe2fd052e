//! azure_core's `HttpClient` over regbridge's own reqwest 0.12 client.
//!
//! - **One TLS stack.** azure_core's built-in client is reqwest 0.13, whose
//!   rustls brings aws-lc-rs beside the ring that kube, reqwest 0.12 and the
//!   AWS client use; with two crypto providers compiled in, rustls has no
//!   process default and kube's client panics. So the `azure_*` crates are
//!   built without their `reqwest` feature and get this transport instead.
//! - **One trust.** The client comes from [`Trust::client_builder`]: the
//!   system store, `--ca-file`, and `REGBRIDGE_CONNECT_TO`.
//! - **Bounded answers.** Bodies are read up to [`MAX_BODY`]; redirects are
//!   not followed, so a client assertion never travels to another host.
//! - **IMDS.** azure_identity hard-codes the managed identity endpoint
//!   (`http://169.254.169.254`). As Azure's other SDKs do (through MSAL in
//!   Go, Python, .NET, Java and JavaScript), `AZURE_POD_IDENTITY_AUTHORITY_HOST`
//!   replaces its scheme, host and port; tests point it at a loopback stub,
//!   as GAR's tests use `GCE_METADATA_HOST`.
//!
//! The last transport failure is kept, without its URL's query, so that a
//! mint that runs out of time can say what it was waiting for.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use azure_core::error::{Error, ErrorKind};
use azure_core::http::headers::{HeaderName, HeaderValue, Headers};
use azure_core::http::{
    AsyncRawResponse, Body, ClientOptions, HttpClient, Request, StatusCode,
    Transport as AzTransport, Url,
};

use crate::ProviderError;
use crate::body::read_limited;
use crate::trust::Trust;

/// Entra and IMDS token answers are a few KiB.
pub(crate) const MAX_BODY: usize = 256 * 1024;
/// The managed identity endpoint azure_identity calls.
const IMDS_HOST: &str = "169.254.169.254";
/// Where Azure's SDKs take another IMDS base URL from.
pub(crate) const IMDS_OVERRIDE: &str = "AZURE_POD_IDENTITY_AUTHORITY_HOST";

#[derive(Debug)]
pub(crate) struct Transport {
    client: reqwest::Client,
    /// `AZURE_POD_IDENTITY_AUTHORITY_HOST`, read when the provider was built.
    imds: Option<Url>,
    last_failure: Mutex<Option<String>>,
}

impl Transport {
    pub(crate) fn new(trust: &Trust, timeout: Duration) -> Result<Arc<Self>, ProviderError> {
        let imds = match std::env::var(IMDS_OVERRIDE) {
            Ok(v) if !v.trim().is_empty() => Some(Url::parse(v.trim()).map_err(|_| {
                ProviderError::InvalidSpec(format!("acr: {IMDS_OVERRIDE} is not a URL"))
            })?),
            _ => None,
        };
        let client = trust
            .client_builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| crate::http_errors::transport("acr", "building the HTTP client", &e, 0))?;
        Ok(Arc::new(Self {
            client,
            imds,
            last_failure: Mutex::new(None),
        }))
    }

    /// Client options that send every request of an azure_identity
    /// credential through this transport.
    pub(crate) fn client_options(self: &Arc<Self>) -> ClientOptions {
        ClientOptions {
            transport: Some(AzTransport::new(self.clone() as Arc<dyn HttpClient>)),
            ..ClientOptions::default()
        }
    }

    /// Starts a mint with no failure on record.
    pub(crate) fn forget_failures(&self) {
        if let Ok(mut last) = self.last_failure.lock() {
            *last = None;
        }
    }

    /// What the last request that got no answer was waiting for.
    pub(crate) fn last_failure(&self) -> Option<String> {
        self.last_failure.lock().ok().and_then(|f| f.clone())
    }

    fn target(&self, url: &Url) -> Url {
        let mut url = url.clone();
        if let Some(base) = self
            .imds
            .as_ref()
            .filter(|_| url.host_str() == Some(IMDS_HOST))
        {
            // Both are absolute http(s) URLs, so none of these setters fails.
            let _ = url.set_scheme(base.scheme());
            let _ = url.set_host(base.host_str());
            let _ = url.set_port(base.port());
        }
        url
    }

    fn failed(&self, url: &Url, err: &reqwest::Error) -> Error {
        let (kind, category) = if err.is_timeout() {
            (ErrorKind::Io, "no answer in time")
        } else if err.is_connect() {
            (ErrorKind::Connection, "cannot connect")
        } else {
            (ErrorKind::Io, "request failed")
        };
        let what = format!(
            "{}://{}{}: {category}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.port().map(|p| format!(":{p}")).unwrap_or_default()
        );
        if let Ok(mut last) = self.last_failure.lock() {
            *last = Some(what.clone());
        }
        Error::with_message(kind, what)
    }
}

#[async_trait]
impl HttpClient for Transport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let url = self.target(request.url());
        let method = reqwest::Method::from_bytes(request.method().as_str().as_bytes())
            .map_err(|_| Error::with_message(ErrorKind::Other, "unsupported HTTP method"))?;
        let mut builder = self.client.request(method, url.as_str());
        for (name, value) in request.headers().iter() {
            builder = builder.header(name.as_str(), value.as_str());
        }
        builder = match request.body() {
            Body::Bytes(bytes) => builder.body(bytes.to_vec()),
            Body::SeekableStream(_) => {
                return Err(Error::with_message(
                    ErrorKind::Other,
                    "streaming request bodies are not supported",
                ));
            }
        };
        let response = builder.send().await.map_err(|e| self.failed(&url, &e))?;
        let status = StatusCode::from(response.status().as_u16());
        let mut headers = Headers::new();
        for (name, value) in response.headers() {
            if let Ok(value) = value.to_str() {
                headers.insert(
                    HeaderName::from(name.as_str().to_owned()),
                    HeaderValue::from(value.to_owned()),
                );
            }
        }
        let body = read_limited(response, MAX_BODY)
            .await
            .map_err(|e| self.failed(&url, &e))?;
        Ok(AsyncRawResponse::from_bytes(status, headers, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_imds_host_is_redirected() {
        let transport = Transport {
            client: reqwest::Client::new(),
            imds: Some(Url::parse("http://127.0.0.1:8081").unwrap()),
            last_failure: Mutex::new(None),
        };
        let imds = Url::parse(
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2019-08-01",
        )
        .unwrap();
        assert_eq!(
            transport.target(&imds).as_str(),
            "http://127.0.0.1:8081/metadata/identity/oauth2/token?api-version=2019-08-01"
        );
        let entra = Url::parse("https://login.microsoftonline.com/t/oauth2/v2.0/token").unwrap();
        assert_eq!(transport.target(&entra), entra);
    }
}
