//! The `acr` provider: Azure Container Registry, through the OAuth2
//! endpoints Azure documents for it (Azure/acr, `docs/AAD-OAuth.md`):
//!
//! 1. a Microsoft Entra access token for ACR's scope ([`super::entra`]);
//! 2. `POST https://<registry>/oauth2/exchange` with the form
//!    `grant_type=access_token`, `service=<registry>`, `tenant` and
//!    `access_token`, answered `{"refresh_token": "<JWT>"}`;
//! 3. the entry: username `00000000-0000-0000-0000-000000000000` and the
//!    refresh token as the password, which is what `az acr login
//!    --expose-token` hands to docker;
//! 4. the expiry: the refresh token's own `exp` claim, never an assumed
//!    lifetime. A refresh token without `exp` is malformed.
//!
//! One Entra token serves every listed registry. Each registry gets its own
//! exchange, because a refresh token is bound to its registry.
//!
//! The exchange is always HTTPS and trusts the system store, `--ca-file`
//! and the entry's `caSecretRef`. Redirects are not followed, because the
//! form carries the Entra token. Answers are read up to [`MAX_BODY`].
//! A `401` (the identity may not pull from the registry), a `404` (no ACR at
//! that name) and a name that does not resolve each give an error that
//! names the registry and quotes no token.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio::sync::OnceCell;

use super::NAME;
use super::entra::{self, EntraToken, Own};
use super::transport::Transport;
use crate::body::read_limited;
use crate::http_errors;
use crate::provider::{BuildContext, deadline};
use crate::spec::AcrSpec;
use crate::trust::Trust;
use crate::{Cluster, Provider, ProviderError, Redacted, RegistryCredential};

/// The username ACR expects with a refresh token.
pub(crate) const USERNAME: &str = "00000000-0000-0000-0000-000000000000";
/// An exchange answer is one token of a few KiB.
const MAX_BODY: usize = 64 * 1024;
/// Registry error messages are cut to this many characters.
const MAX_MESSAGE: usize = 160;

pub(crate) struct AcrProvider {
    spec: AcrSpec,
    /// The login servers, trimmed and checked.
    registries: Vec<String>,
    timeout: Duration,
    trust: Trust,
    transport: Arc<Transport>,
    /// The controller's own Entra credential, built on the first mint that
    /// needs it and kept for its token cache.
    own: OnceCell<Own>,
}

/// An ACR refresh token and its `exp`.
struct RefreshToken {
    value: Redacted<String>,
    expires_at: DateTime<Utc>,
}

impl AcrProvider {
    pub(crate) fn new(spec: AcrSpec, ctx: &BuildContext) -> Result<Self, ProviderError> {
        let invalid = |reason: String| ProviderError::InvalidSpec(format!("acr: {reason}"));
        if spec.registry.is_some() && !spec.registries.is_empty() {
            return Err(invalid(
                "set registry (one login server) or registries (several), not both".into(),
            ));
        }
        let registries: Vec<String> = spec
            .login_servers()
            .into_iter()
            .map(str::to_owned)
            .collect();
        if registries.is_empty() {
            return Err(invalid(
                "registry is required, e.g. myregistry.azurecr.io".into(),
            ));
        }
        for r in &registries {
            check_login_server(r).map_err(&invalid)?;
        }
        if spec.identity.is_some() && spec.client_id.is_none() {
            return Err(invalid(
                "identity needs clientId: the tenant's identity that trusts the ServiceAccount's token"
                    .into(),
            ));
        }
        Ok(Self {
            transport: Transport::new(&ctx.trust, ctx.timeout)?,
            spec,
            registries,
            timeout: ctx.timeout,
            trust: ctx.trust.clone(),
            own: OnceCell::new(),
        })
    }

    async fn entra_token(&self, cluster: &dyn Cluster) -> Result<EntraToken, ProviderError> {
        match &self.spec.identity {
            Some(identity) => {
                entra::tenant_token(
                    &self.spec,
                    &identity.service_account_ref,
                    cluster,
                    &self.transport,
                )
                .await
            }
            None => {
                let own = self
                    .own
                    .get_or_try_init(|| async { Own::new(&self.spec, &self.transport) })
                    .await?;
                own.token().await
            }
        }
    }

    async fn mint_now(
        &self,
        cluster: &dyn Cluster,
    ) -> Result<Vec<RegistryCredential>, ProviderError> {
        let token = self.entra_token(cluster).await?;
        let ca = self.spec.ca_secret_ref.as_ref();
        let http = crate::api_client::build(NAME, &self.trust, ca, self.timeout, cluster).await?;
        let mut creds = Vec::with_capacity(self.registries.len());
        for registry in &self.registries {
            let refresh = exchange(&http, registry, &token, self.timeout.as_secs()).await?;
            creds.push(RegistryCredential {
                host: registry.clone(),
                username: USERNAME.into(),
                password: refresh.value,
                expires_at: Some(refresh.expires_at),
            });
        }
        Ok(creds)
    }
}

#[async_trait]
impl Provider for AcrProvider {
    async fn mint(&self, cluster: &dyn Cluster) -> Result<Vec<RegistryCredential>, ProviderError> {
        self.transport.forget_failures();
        deadline(NAME, self.timeout, self.mint_now(cluster))
            .await
            .map_err(|e| match (e, self.transport.last_failure()) {
                // Say what it was waiting for: an IMDS that is not there
                // (not on Azure) is the usual case.
                (ProviderError::Timeout { seconds, .. }, Some(last)) => ProviderError::Remote {
                    provider: NAME,
                    reason: format!(
                        "no Microsoft Entra token within {seconds} s; the last attempt: {last}"
                    ),
                },
                (e, _) => e,
            })
    }
}

/// A login server is a host with an optional port: no scheme, path or
/// user information.
fn check_login_server(registry: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "registry {registry:?} is not a login server host such as myregistry.azurecr.io (no scheme, no path)"
        )
    };
    if registry.is_empty()
        || registry.contains("://")
        || registry.contains(['/', '@', '?', '#'])
        || registry.chars().any(char::is_whitespace)
    {
        return Err(bad());
    }
    let url = reqwest::Url::parse(&format!("https://{registry}/")).map_err(|_| bad())?;
    if url.host_str().is_none() {
        return Err(bad());
    }
    Ok(())
}

#[derive(Deserialize)]
struct ExchangeAnswer {
    refresh_token: Option<String>,
}

/// ACR's error document.
#[derive(Deserialize)]
struct Errors {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

async fn exchange(
    http: &reqwest::Client,
    registry: &str,
    token: &EntraToken,
    secs: u64,
) -> Result<RefreshToken, ProviderError> {
    let what = format!("token exchange at {registry}");
    let mut form = vec![("grant_type", "access_token"), ("service", registry)];
    if let Some(tenant) = &token.tenant {
        form.push(("tenant", tenant));
    }
    form.push(("access_token", token.value.expose()));
    let response = http
        .post(format!("https://{registry}/oauth2/exchange"))
        .form(&form)
        .send()
        .await
        .map_err(|e| unreachable(registry, &what, &e, secs))?;
    let status = response.status();
    let body = read_limited(response, MAX_BODY)
        .await
        .map_err(|e| http_errors::transport(NAME, &what, &e, secs))?;
    if !status.is_success() {
        return Err(refused(registry, status, &body, token));
    }
    let malformed = |reason: &str| ProviderError::Malformed {
        what: format!("{NAME}: the answer of the {what}"),
        reason: reason.into(),
    };
    let answer: ExchangeAnswer =
        serde_json::from_slice(&body).map_err(|_| malformed("not the expected JSON"))?;
    let value = answer
        .refresh_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| malformed("carries no refresh_token"))?;
    let expires_at = expiry(&value).map_err(|reason| ProviderError::Malformed {
        what: format!("{NAME}: the refresh token from {registry}"),
        reason: reason.into(),
    })?;
    Ok(RefreshToken {
        value: Redacted::new(value),
        expires_at,
    })
}

/// The `exp` claim of a JWT, read without checking its signature (the
/// registry checks it; regbridge only schedules by it).
fn expiry(jwt: &str) -> Result<DateTime<Utc>, &'static str> {
    let mut parts = jwt.split('.');
    let (Some(_header), Some(payload), Some(_signature)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err("is not a JWT");
    };
    let raw = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| "its payload is not base64url")?;
    let claims: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|_| "its payload is not JSON")?;
    let exp = &claims["exp"];
    let secs = exp
        .as_i64()
        .or_else(|| exp.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
        .ok_or("has no `exp` claim")?;
    DateTime::from_timestamp(secs, 0).ok_or("its `exp` is out of range")
}

/// A failure to reach the registry at all. A name that does not resolve
/// says so: it is usually a misspelt or deleted registry.
fn unreachable(registry: &str, what: &str, err: &reqwest::Error, secs: u64) -> ProviderError {
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if e.to_string().contains("dns error") {
            return ProviderError::Remote {
                provider: NAME,
                reason: format!(
                    "{registry} does not resolve: no registry of that name? (login servers look like myregistry.azurecr.io)"
                ),
            };
        }
        source = e.source();
    }
    http_errors::transport(NAME, what, err, secs)
}

/// A refused exchange: the status, what it usually means, and ACR's own
/// error code and message with any token taken out.
fn refused(
    registry: &str,
    status: reqwest::StatusCode,
    body: &[u8],
    token: &EntraToken,
) -> ProviderError {
    let hint = match status.as_u16() {
        401 => "; may this identity pull from it (AcrPull), and is it in the registry's tenant?",
        403 => "; is the registry's network or token access restricted?",
        404 => "; is this an Azure Container Registry login server (myregistry.azurecr.io)?",
        _ => "",
    };
    let detail = serde_json::from_slice::<Errors>(body)
        .ok()
        .and_then(|e| e.errors.into_iter().next())
        .map(|e| {
            let code = e
                .code
                .filter(|c| c.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or_default();
            let message = scrub(&e.message.unwrap_or_default(), token.value.expose());
            match (code.is_empty(), message.is_empty()) {
                (true, true) => String::new(),
                (false, true) => format!(" ({code})"),
                (true, false) => format!(" ({message})"),
                (false, false) => format!(" ({code}: {message})"),
            }
        })
        .unwrap_or_default();
    ProviderError::Remote {
        provider: NAME,
        reason: format!("{registry} refused the token exchange: answered {status}{detail}{hint}"),
    }
}

/// `message` without the access token or anything shaped like a JWT, cut
/// to [`MAX_MESSAGE`] characters, in that order.
fn scrub(message: &str, access_token: &str) -> String {
    let without = if access_token.is_empty() {
        message.to_owned()
    } else {
        message.replace(access_token, "<redacted>")
    };
    let words: Vec<&str> = without
        .split(' ')
        .map(|w| if w.contains("eyJ") { "<redacted>" } else { w })
        .collect();
    words.join(" ").trim().chars().take(MAX_MESSAGE).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    #[test]
    fn the_expiry_is_the_tokens_exp_and_a_token_without_one_is_malformed() {
        let at = expiry(&jwt(serde_json::json!({"exp": 1_900_000_000, "aud": "r"}))).unwrap();
        assert_eq!(at.timestamp(), 1_900_000_000);
        assert_eq!(
            expiry(&jwt(serde_json::json!({"aud": "r"}))),
            Err("has no `exp` claim")
        );
        assert_eq!(expiry("opaque-token"), Err("is not a JWT"));
        assert_eq!(expiry("a.%%%.c"), Err("its payload is not base64url"));
    }

    #[test]
    fn login_servers_are_bare_hosts() {
        for good in ["myregistry.azurecr.io", "127.0.0.1:8443", "r.azurecr.cn"] {
            assert!(check_login_server(good).is_ok(), "{good}");
        }
        for bad in [
            "https://myregistry.azurecr.io",
            "myregistry.azurecr.io/team",
            "user@myregistry.azurecr.io",
            "my registry",
            "",
        ] {
            assert!(check_login_server(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refusals_quote_no_token() {
        let token = EntraToken {
            value: Redacted::new("eyJ0eXAi.secret-entra-token.sig".into()),
            tenant: None,
        };
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad token eyJ0eXAi.secret-entra-token.sig and eyJother.jwt.x"}]}"#;
        let err = refused(
            "r.azurecr.io",
            reqwest::StatusCode::UNAUTHORIZED,
            body,
            &token,
        )
        .to_string();
        assert!(err.contains("401"), "{err}");
        assert!(err.contains("UNAUTHORIZED"), "{err}");
        assert!(err.contains("AcrPull"), "{err}");
        assert!(!err.contains("secret-entra-token"), "{err}");
        assert!(!err.contains("eyJ"), "{err}");
    }

    #[test]
    fn identity_needs_a_client_id_and_registries_are_required() {
        let ctx = BuildContext::new("res");
        let no_client = AcrSpec {
            registry: Some("r.azurecr.io".into()),
            identity: Some(crate::spec::IdentitySpec::default()),
            ..Default::default()
        };
        assert!(matches!(
            AcrProvider::new(no_client, &ctx),
            Err(ProviderError::InvalidSpec(_))
        ));
        assert!(AcrProvider::new(AcrSpec::default(), &ctx).is_err());
        let both = AcrSpec {
            registry: Some("a.azurecr.io".into()),
            registries: vec!["b.azurecr.io".into()],
            ..Default::default()
        };
        assert!(AcrProvider::new(both, &ctx).is_err());
    }
}
