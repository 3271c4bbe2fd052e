//! Per-tenant identity for `gar` (`identity`): Workload Identity Federation
//! from a tenant's ServiceAccount, never from the controller's own identity.
//!
//! 1. A TokenRequest token for `identity.serviceAccountRef`, with the token
//!    audience (see [`token_audience`]). A missing ServiceAccount, or one the
//!    chart grants no token for, fails the mint: nothing falls back.
//! 2. Google STS, `POST {sts}/v1/token`, form-encoded as Google's auth
//!    libraries send it (RFC 8693): `grant_type` token-exchange,
//!    `subject_token_type` jwt, `requested_token_type` access_token,
//!    `audience`, `scope` cloud-platform and the `subject_token`. The answer
//!    is a federated access token and its `expires_in`.
//! 3. With `googleServiceAccount`: IAM Service Account Credentials,
//!    `POST {iamcredentials}/v1/projects/-/serviceAccounts/EMAIL:generateAccessToken`
//!    with the federated token as Bearer and `{"scope": [cloud-platform]}`.
//!    The answer is `{accessToken, expireTime}`.
//!
//! The expiry is always the answer's own (`expires_in` or `expireTime`); an
//! answer without one is malformed, never given a guessed lifetime.
//!
//! Why by hand: gcp_auth 0.12 has neither `external_account` nor
//! impersonation. google-cloud-auth 1.x has both, but on reqwest 0.13 with a
//! client of its own (so neither `--ca-file` nor `caSecretRef` would apply),
//! with aws-lc-rs in its default features beside the ring that kube uses (then
//! rustls has no process default), and with a token whose expiry is only a
//! monotonic `Instant`. Two documented calls on the provider's own client
//! avoid all three.
//!
//! Endpoints: `https://sts.googleapis.com` and
//! `https://iamcredentials.googleapis.com`, or the base URLs in
//! `REGBRIDGE_GOOGLE_STS_URL` and `REGBRIDGE_GOOGLE_IAMCREDENTIALS_URL` (a
//! Private Service Connect endpoint; the tests' loopback stubs). Like
//! `GCE_METADATA_HOST`, they are read at each mint.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::token::{AccessToken, NAME, SCOPE, expiry_in};
use crate::http_errors;
use crate::spec::GarIdentitySpec;
use crate::{Cluster, ProviderError, Redacted};

pub(crate) const STS_URL_ENV: &str = "REGBRIDGE_GOOGLE_STS_URL";
pub(crate) const IAM_CREDENTIALS_URL_ENV: &str = "REGBRIDGE_GOOGLE_IAMCREDENTIALS_URL";
const STS_URL: &str = "https://sts.googleapis.com";
const IAM_CREDENTIALS_URL: &str = "https://iamcredentials.googleapis.com";

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The GKE cluster pool's STS audience: `identitynamespace:POOL:PROVIDER`.
const IDENTITY_NAMESPACE: &str = "identitynamespace:";

/// STS's answer (RFC 8693 field names).
#[derive(Deserialize)]
struct StsToken {
    access_token: String,
    expires_in: Option<i64>,
}

/// `generateAccessToken`'s answer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImpersonatedToken {
    access_token: String,
    expire_time: Option<String>,
}

/// What `new` rejects before any call: the CRD says the same, but `mint
/// --config` has no CRD.
pub(super) fn check(identity: &GarIdentitySpec) -> Result<(), ProviderError> {
    let invalid = |m: &str| Err(ProviderError::InvalidSpec(format!("gar: identity: {m}")));
    let sa = &identity.service_account_ref;
    if sa.namespace.trim().is_empty() || sa.name.trim().is_empty() {
        return invalid("serviceAccountRef needs a namespace and a name");
    }
    let audience = identity.audience.trim();
    if !(audience.starts_with("//") || audience.starts_with(IDENTITY_NAMESPACE)) {
        return invalid(
            "audience is a workload identity pool provider, //iam.googleapis.com/projects/PROJECT_NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER, or identitynamespace:POOL:PROVIDER",
        );
    }
    if let Some(email) = &identity.google_service_account {
        let ok = email.split('@').count() == 2
            && !email.starts_with('@')
            && !email.ends_with('@')
            && !email
                .chars()
                .any(|c| c.is_whitespace() || "/?#%".contains(c));
        if !ok {
            return invalid("googleServiceAccount is a Google service account's email");
        }
    }
    Ok(())
}

/// The audience the ServiceAccount token is requested for: `tokenAudience`
/// when set; for `identitynamespace:POOL:PROVIDER` (the GKE cluster's own
/// pool) `POOL`, as GKE's metadata server asks for it; otherwise the STS
/// audience itself, which a provider without allowed audiences accepts
/// ("the full canonical resource name ... with or without the HTTPS
/// prefix").
pub(super) fn token_audience(identity: &GarIdentitySpec) -> &str {
    if let Some(a) = identity
        .token_audience
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        return a;
    }
    let audience = identity.audience.trim();
    audience
        .strip_prefix(IDENTITY_NAMESPACE)
        .and_then(|rest| rest.split_once(':'))
        .map_or(audience, |(pool, _)| pool)
}

/// The tenant's access token: steps 1 to 3 above.
pub(super) async fn tenant_token(
    http: &reqwest::Client,
    timeout_secs: u64,
    cluster: &dyn Cluster,
    identity: &GarIdentitySpec,
) -> Result<AccessToken, ProviderError> {
    let subject = cluster
        .service_account_token(&identity.service_account_ref, token_audience(identity))
        .await?;
    let federated = exchange(http, timeout_secs, identity.audience.trim(), &subject).await?;
    match &identity.google_service_account {
        None => Ok(federated),
        Some(email) => impersonate(http, timeout_secs, email.trim(), &federated.value).await,
    }
}

async fn exchange(
    http: &reqwest::Client,
    timeout_secs: u64,
    audience: &str,
    subject: &Redacted<String>,
) -> Result<AccessToken, ProviderError> {
    let what = "Google STS token exchange";
    let resp = http
        .post(format!("{}/v1/token", base(STS_URL_ENV, STS_URL)))
        .form(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("audience", audience),
            ("scope", SCOPE),
            ("requested_token_type", ACCESS_TOKEN),
            ("subject_token_type", JWT),
            ("subject_token", subject.expose().as_str()),
        ])
        .send()
        .await
        .map_err(|e| http_errors::transport(NAME, what, &e, timeout_secs))?;
    if !resp.status().is_success() {
        return Err(refusal(
            what,
            resp,
            "check audience, tokenAudience and the provider's attribute condition",
        )
        .await);
    }
    let t: StsToken = read_json(what, resp, timeout_secs).await?;
    let seconds = t
        .expires_in
        .ok_or_else(|| malformed(what, "has no expires_in"))?;
    Ok(AccessToken {
        value: Redacted::new(t.access_token),
        expires_at: expiry_in(seconds)
            .ok_or_else(|| malformed(what, "expires_in is out of range"))?,
    })
}

async fn impersonate(
    http: &reqwest::Client,
    timeout_secs: u64,
    email: &str,
    federated: &Redacted<String>,
) -> Result<AccessToken, ProviderError> {
    let what = format!("iamcredentials generateAccessToken for {email}");
    let url = format!(
        "{}/v1/projects/-/serviceAccounts/{email}:generateAccessToken",
        base(IAM_CREDENTIALS_URL_ENV, IAM_CREDENTIALS_URL)
    );
    let resp = http
        .post(url)
        .bearer_auth(federated.expose())
        .json(&serde_json::json!({"scope": [SCOPE]}))
        .send()
        .await
        .map_err(|e| http_errors::transport(NAME, &what, &e, timeout_secs))?;
    if !resp.status().is_success() {
        let hint =
            "the federated identity needs roles/iam.workloadIdentityUser on that service account";
        return Err(refusal(&what, resp, hint).await);
    }
    let t: ImpersonatedToken = read_json(&what, resp, timeout_secs).await?;
    let expires_at = t
        .expire_time
        .as_deref()
        .ok_or_else(|| malformed(&what, "has no expireTime"))
        .and_then(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| malformed(&what, "expireTime is not an RFC 3339 time"))
        })?;
    Ok(AccessToken {
        value: Redacted::new(t.access_token),
        expires_at,
    })
}

/// The endpoint's base URL, without a trailing slash.
fn base(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .map(|v| v.trim().trim_end_matches('/').to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.into())
}

async fn read_json<T: serde::de::DeserializeOwned>(
    what: &str,
    resp: reqwest::Response,
    timeout_secs: u64,
) -> Result<T, ProviderError> {
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| http_errors::transport(NAME, what, &e, timeout_secs))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        malformed(
            what,
            &format!(
                "unexpected JSON at line {}, column {}",
                e.line(),
                e.column()
            ),
        )
    })
}

/// A refusal, by status and Google's error code, plus what to check. The
/// body's free text is left out: it can quote what was sent.
async fn refusal(what: &str, resp: reqwest::Response, hint: &str) -> ProviderError {
    let status = resp.status();
    let code = resp.bytes().await.ok().and_then(|b| error_code(&b));
    let reason = match code {
        Some(code) => format!("{what}: answered {status} ({code}); {hint}"),
        None => format!("{what}: answered {status}; {hint}"),
    };
    ProviderError::Remote {
        provider: NAME,
        reason,
    }
}

/// The error code of an OAuth answer (`{"error": "invalid_grant"}`, STS) or
/// of a Google API answer (`{"error": {"status": "PERMISSION_DENIED"}}`,
/// iamcredentials), when it is a short code and nothing else.
fn error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = v["error"]
        .as_str()
        .or_else(|| v["error"]["status"].as_str())?;
    let short = !code.is_empty()
        && code.len() <= 40
        && code.chars().all(|c| c.is_ascii_alphabetic() || c == '_');
    short.then(|| code.to_owned())
}

fn malformed(what: &str, reason: &str) -> ProviderError {
    ProviderError::Malformed {
        what: format!("{NAME}: {what}"),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ServiceAccountRef;

    fn identity(audience: &str) -> GarIdentitySpec {
        GarIdentitySpec {
            service_account_ref: ServiceAccountRef {
                namespace: "team-a".into(),
                name: "puller".into(),
            },
            audience: audience.into(),
            ..GarIdentitySpec::default()
        }
    }

    #[test]
    fn token_audience_follows_the_pool_kind_unless_set() {
        let wif = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/p/providers/k";
        assert_eq!(token_audience(&identity(wif)), wif);
        let gke = identity(
            "identitynamespace:proj.svc.id.goog:https://container.googleapis.com/v1/projects/proj/locations/europe-west1/clusters/c",
        );
        assert_eq!(token_audience(&gke), "proj.svc.id.goog");
        let custom = GarIdentitySpec {
            token_audience: Some("https://custom.example".into()),
            ..identity(wif)
        };
        assert_eq!(token_audience(&custom), "https://custom.example");
    }

    #[test]
    fn spec_checks_name_the_field() {
        let wif = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/p/providers/k";
        assert!(check(&identity(wif)).is_ok());
        let https = check(&identity(&wif.replace("//", "https://"))).unwrap_err();
        assert!(https.to_string().contains("audience"), "{https}");
        for bad in ["nobody", "a/b@c", "a@b@c", "a@b?x", "@b"] {
            let spec = GarIdentitySpec {
                google_service_account: Some(bad.into()),
                ..identity(wif)
            };
            let err = check(&spec).unwrap_err();
            assert!(
                err.to_string().contains("googleServiceAccount"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn error_codes_are_short_codes_only() {
        assert_eq!(
            error_code(br#"{"error": "invalid_grant", "error_description": "x"}"#).as_deref(),
            Some("invalid_grant")
        );
        assert_eq!(
            error_code(br#"{"error": {"code": 403, "status": "PERMISSION_DENIED"}}"#).as_deref(),
            Some("PERMISSION_DENIED")
        );
        assert_eq!(error_code(br#"{"error": "eyJhbGciOi.eyJzdWIi.sig"}"#), None);
        assert_eq!(error_code(b"<html>"), None);
    }
}
