//! What the ECR and ECR Public providers share: the base config on the
//! rustls+ring client, role assumption, the web identity exchange for a
//! tenant's ServiceAccount, and the shape of an `authorizationToken`.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};

use super::errors::sdk_error;
use crate::spec::ServiceAccountRef;
use crate::trust::Trust;
use crate::{Cluster, ProviderError, Redacted};

/// The audience AWS STS expects on web identity tokens.
pub(crate) const STS_AUDIENCE: &str = "sts.amazonaws.com";
/// Session name for `roleArn` assumed on top of the base identity.
const SESSION_NAME: &str = "regbridge";

/// `aws-config`'s default chain, for one region, on the rustls+ring HTTPS
/// client. Every AWS client here derives from this config, the default
/// chain's own STS and IMDS clients included, so none needs the SDK's default
/// client (which would compile in a second rustls crypto provider).
pub(crate) async fn load_base_config(region: Region, trust: &Trust) -> SdkConfig {
    use aws_smithy_http_client::tls::{Provider as Tls, rustls_provider::CryptoMode};
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(Tls::Rustls(CryptoMode::Ring))
        .tls_context(trust.aws_tls_context())
        .build_https();
    aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .http_client(https)
        .load()
        .await
}

pub(crate) async fn assume_role_provider(
    base: &SdkConfig,
    role: &str,
    external_id: Option<&str>,
) -> aws_config::sts::AssumeRoleProvider {
    let mut builder = aws_config::sts::AssumeRoleProvider::builder(role)
        .session_name(SESSION_NAME)
        .configure(base);
    if let Some(id) = external_id {
        builder = builder.external_id(id);
    }
    builder.build().await
}

/// Exchanges a TokenRequest token of `sa` for temporary credentials of `role`.
pub(crate) async fn web_identity_credentials(
    provider: &'static str,
    base: &SdkConfig,
    cluster: &dyn Cluster,
    sa: &ServiceAccountRef,
    role: &str,
) -> Result<Credentials, ProviderError> {
    let token = cluster.service_account_token(sa, STS_AUDIENCE).await?;
    let sts = aws_sdk_sts::Client::new(base);
    let out = sts
        .assume_role_with_web_identity()
        .role_arn(role)
        .role_session_name(tenant_session_name(sa))
        .web_identity_token(token.expose())
        .send()
        .await
        .map_err(|e| sdk_error(provider, "AssumeRoleWithWebIdentity", &e))?;
    let c = out.credentials().ok_or_else(|| ProviderError::Malformed {
        what: format!("{provider}: AssumeRoleWithWebIdentity response"),
        reason: "has no credentials".into(),
    })?;
    Ok(Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_owned()),
        std::time::SystemTime::try_from(*c.expiration()).ok(),
        "regbridge-web-identity",
    ))
}

/// `regbridge-<namespace>-<name>`, cut to STS's 64 characters and its
/// alphabet (`[\w+=,.@-]`), so CloudTrail names the tenant.
fn tenant_session_name(sa: &ServiceAccountRef) -> String {
    format!("regbridge-{}-{}", sa.namespace, sa.name)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect()
}

/// `AWS:<password>` from the base64 `authorizationToken`. Errors say what is
/// wrong, never what the token holds.
pub(crate) fn decode_token(
    provider: &'static str,
    token: &str,
) -> Result<(String, Redacted<String>), ProviderError> {
    let bad = |reason: &str| ProviderError::Malformed {
        what: format!("{provider}: authorizationToken"),
        reason: reason.into(),
    };
    let raw = STANDARD
        .decode(token.trim())
        .map_err(|_| bad("not base64"))?;
    let text = String::from_utf8(raw).map_err(|_| bad("not UTF-8"))?;
    let (user, pass) = text
        .split_once(':')
        .ok_or_else(|| bad("has no `user:` prefix"))?;
    Ok((user.to_owned(), Redacted::new(pass.to_owned())))
}

/// The SDK's `DateTime` (shared by every aws-sdk crate) as chrono's.
pub(crate) fn to_chrono(t: &aws_sdk_ecr::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_decodes_to_user_and_password_and_errors_do_not_quote_it() {
        let (user, pass) = decode_token("ecr", &STANDARD.encode("AWS:p:w")).unwrap();
        assert_eq!((user.as_str(), pass.expose().as_str()), ("AWS", "p:w"));
        let err = decode_token("ecr", &STANDARD.encode("nocolonsecret")).unwrap_err();
        assert!(!err.to_string().contains("nocolonsecret"), "{err}");
        assert!(decode_token("ecr", "%%%").is_err());
    }

    #[test]
    fn session_name_is_sts_safe_and_bounded() {
        let sa = ServiceAccountRef {
            namespace: "team/a".into(),
            name: "x".repeat(80),
        };
        let name = tenant_session_name(&sa);
        assert!(name.starts_with("regbridge-team-a-"));
        assert_eq!(name.len(), 64);
    }
}
