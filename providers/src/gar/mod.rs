//! The `gar` provider: Google Artifact Registry and GCR, username
//! `oauth2accesstoken` and an OAuth2 access token (cloud-platform scope) as
//! the password, written once per listed host. The expiry is the token's.
//!
//! Where the token comes from:
//! - `identity`: the tenant's ServiceAccount, through Workload Identity
//!   Federation (Google STS, then optionally `generateAccessToken` for
//!   `googleServiceAccount`); see `gar/federation.rs`. Never the controller's
//!   own identity, even when the tenant's path fails.
//! - `keySecretRef`: the service-account key in the Secret's `key.json`,
//!   through `gcp_auth`'s JWT-bearer flow against the key's `token_uri`. A
//!   fresh `gcp_auth` provider per mint, because a kept one hands back its
//!   cached token until 20 s before expiry, which would defeat an early
//!   refresh.
//! - otherwise, when `GOOGLE_APPLICATION_CREDENTIALS` is set: `gcp_auth`'s
//!   chain, which reads that file first (what `mint` on a laptop wants).
//! - otherwise the metadata server (GKE Workload Identity, GCE), asked
//!   directly: `http://$GCE_METADATA_HOST/computeMetadata/v1/instance/service-accounts/default/token`
//!   with `Metadata-Flavor: Google`, the host defaulting to
//!   `metadata.google.internal`, as Google's own libraries do. `gcp_auth`
//!   ignores `GCE_METADATA_HOST`, hence this small client. Only when no
//!   `GCE_METADATA_HOST` is set and the default host cannot be reached at all
//!   (not on Google Cloud) does it fall back to `gcp_auth`'s chain, for
//!   `gcloud` user credentials.

mod federation;
mod token;

use self::token::{AccessToken, NAME, SCOPE, expiry_in};

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::http_errors;
use crate::provider::{BuildContext, deadline};
use crate::spec::{GarSpec, SecretRef};
use crate::{Cluster, Provider, ProviderError, Redacted, RegistryCredential};

/// The registry username for OAuth2 access tokens.
pub(crate) const USERNAME: &str = "oauth2accesstoken";
/// The Secret key holding the service-account key.
pub(crate) const KEY_FILE: &str = "key.json";
const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";
const TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

pub(crate) struct GarProvider {
    spec: GarSpec,
    timeout: Duration,
    http: reqwest::Client,
}

/// The metadata server's token response.
#[derive(Deserialize)]
struct MetadataToken {
    access_token: String,
    expires_in: i64,
}

impl GarProvider {
    pub(crate) fn new(spec: GarSpec, ctx: &BuildContext) -> Result<Self, ProviderError> {
        let timeout = ctx.timeout;
        if spec.registries.is_empty() || spec.registries.iter().any(|r| r.trim().is_empty()) {
            return Err(ProviderError::InvalidSpec(
                "gar: registries must list at least one host, e.g. europe-west1-docker.pkg.dev"
                    .into(),
            ));
        }
        if let Some(identity) = &spec.identity {
            if spec.key_secret_ref.is_some() {
                return Err(ProviderError::InvalidSpec(
                    "gar: set identity or keySecretRef, not both".into(),
                ));
            }
            federation::check(identity)?;
        }
        let http = ctx
            .trust
            .client_builder()
            .timeout(timeout)
            .build()
            .map_err(|e| http_errors::transport(NAME, "building the HTTP client", &e, 0))?;
        Ok(Self {
            spec,
            timeout,
            http,
        })
    }

    async fn mint_now(
        &self,
        cluster: &dyn Cluster,
    ) -> Result<Vec<RegistryCredential>, ProviderError> {
        let token = match (&self.spec.identity, &self.spec.key_secret_ref) {
            (Some(identity), _) => {
                federation::tenant_token(&self.http, self.timeout.as_secs(), cluster, identity)
                    .await?
            }
            (None, Some(r)) => key_token(cluster, r).await?,
            (None, None) => self.ambient_token().await?,
        };
        Ok(self
            .spec
            .registries
            .iter()
            .map(|host| RegistryCredential {
                host: host.trim().to_owned(),
                username: USERNAME.into(),
                password: token.value.clone(),
                expires_at: Some(token.expires_at),
            })
            .collect())
    }

    async fn ambient_token(&self) -> Result<AccessToken, ProviderError> {
        if std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").is_some() {
            return chain_token().await;
        }
        let explicit = std::env::var("GCE_METADATA_HOST")
            .ok()
            .filter(|h| !h.trim().is_empty());
        let host = explicit
            .clone()
            .unwrap_or_else(|| DEFAULT_METADATA_HOST.into());
        match self.metadata_token(host.trim()).await {
            Err(Unreachable) if explicit.is_none() => chain_token().await,
            Err(Unreachable) => Err(ProviderError::Remote {
                provider: NAME,
                reason: format!("metadata server {host} (GCE_METADATA_HOST): cannot connect"),
            }),
            Ok(token) => token,
        }
    }

    /// `Err(Unreachable)` only when nothing answered at all.
    async fn metadata_token(
        &self,
        host: &str,
    ) -> Result<Result<AccessToken, ProviderError>, Unreachable> {
        let what = "metadata server token";
        let resp = match self
            .http
            .get(format!("http://{host}{TOKEN_PATH}"))
            .header("Metadata-Flavor", "Google")
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) if e.is_connect() => return Err(Unreachable),
            Err(e) => {
                return Ok(Err(http_errors::transport(
                    NAME,
                    what,
                    &e,
                    self.timeout.as_secs(),
                )));
            }
        };
        Ok(self.read_metadata_token(resp, what).await)
    }

    async fn read_metadata_token(
        &self,
        resp: reqwest::Response,
        what: &str,
    ) -> Result<AccessToken, ProviderError> {
        if !resp.status().is_success() {
            return Err(http_errors::status(NAME, what, resp.status()));
        }
        let flavor = resp
            .headers()
            .get("Metadata-Flavor")
            .and_then(|v| v.to_str().ok());
        if flavor != Some("Google") {
            return Err(ProviderError::Malformed {
                what: format!("{NAME}: {what}"),
                reason: "the answer lacks `Metadata-Flavor: Google`; is this a metadata server?"
                    .into(),
            });
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| http_errors::transport(NAME, what, &e, self.timeout.as_secs()))?;
        let t: MetadataToken =
            serde_json::from_slice(&bytes).map_err(|e| ProviderError::Malformed {
                what: format!("{NAME}: {what}"),
                reason: format!(
                    "unexpected JSON at line {}, column {}",
                    e.line(),
                    e.column()
                ),
            })?;
        Ok(AccessToken {
            value: Redacted::new(t.access_token),
            expires_at: expiry_in(t.expires_in).ok_or_else(|| ProviderError::Malformed {
                what: format!("{NAME}: {what}"),
                reason: "expires_in is out of range".into(),
            })?,
        })
    }
}

/// Nothing listened at the metadata host.
struct Unreachable;

#[async_trait]
impl Provider for GarProvider {
    async fn mint(&self, cluster: &dyn Cluster) -> Result<Vec<RegistryCredential>, ProviderError> {
        deadline(NAME, self.timeout, self.mint_now(cluster)).await
    }
}

async fn key_token(cluster: &dyn Cluster, r: &SecretRef) -> Result<AccessToken, ProviderError> {
    let what = format!("Secret {}/{}", r.namespace, r.name);
    let secret = cluster
        .secret(r)
        .await?
        .ok_or_else(|| ProviderError::SecretNotFound {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
        })?;
    let bad = |reason: &str| ProviderError::Malformed {
        what: what.clone(),
        reason: reason.into(),
    };
    let raw = secret
        .data
        .get(KEY_FILE)
        .ok_or_else(|| bad("has no `key.json` key"))?;
    let json = std::str::from_utf8(raw).map_err(|_| bad("key.json is not UTF-8"))?;
    let account = gcp_auth::CustomServiceAccount::from_json(json).map_err(|e| {
        bad(&format!(
            "key.json is not a service-account key ({})",
            gcp_category(&e)
        ))
    })?;
    fetch(&account).await
}

/// `gcp_auth`'s own chain (key file from `GOOGLE_APPLICATION_CREDENTIALS`,
/// gcloud's files, the metadata server at its fixed host), fresh per call.
async fn chain_token() -> Result<AccessToken, ProviderError> {
    let provider = gcp_auth::provider()
        .await
        .map_err(|e| ProviderError::Remote {
            provider: NAME,
            reason: format!("no Google credentials found: {}", gcp_category(&e)),
        })?;
    fetch(provider.as_ref()).await
}

async fn fetch(provider: &dyn gcp_auth::TokenProvider) -> Result<AccessToken, ProviderError> {
    let token = provider
        .token(&[SCOPE])
        .await
        .map_err(|e| ProviderError::Remote {
            provider: NAME,
            reason: format!("token request failed: {}", gcp_category(&e)),
        })?;
    Ok(AccessToken {
        value: Redacted::new(token.as_str().to_owned()),
        expires_at: token.expires_at(),
    })
}

/// The fixed description of a `gcp_auth` error, without its source: a JSON
/// source error can quote the response body.
fn gcp_category(e: &gcp_auth::Error) -> &'static str {
    match e {
        gcp_auth::Error::NoAuthMethod(..) => "no available authentication method",
        gcp_auth::Error::Http(what, _)
        | gcp_auth::Error::Io(what, _)
        | gcp_auth::Error::Json(what, _)
        | gcp_auth::Error::Other(what, _) => what,
        gcp_auth::Error::Str(what) => what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_are_required() {
        assert!(GarProvider::new(GarSpec::default(), &BuildContext::new("res")).is_err());
        let blank = GarSpec {
            registries: vec![" ".into()],
            ..GarSpec::default()
        };
        assert!(GarProvider::new(blank, &BuildContext::new("res")).is_err());
    }
}
