//! The `ecr` provider: AWS ECR pull tokens through `GetAuthorizationToken`.
//!
//! Identity, in order of precedence:
//! - `identity.serviceAccountRef` (with `roleArn`): a TokenRequest token for
//!   that ServiceAccount, exchanged for `roleArn` with
//!   `AssumeRoleWithWebIdentity`. The controller's own identity is not used.
//! - `roleArn` alone: `AssumeRole` on top of the base identity, installed as
//!   the ECR client's credentials provider so the SDK's identity cache keeps
//!   the session between mints.
//! - otherwise the base identity: `aws-config`'s default chain (env, profile,
//!   IRSA web identity, EKS Pod Identity, IMDS).
//!
//! Each entry of the response becomes one credential:
//! - host: `proxyEndpoint` without its scheme and trailing slash
//!   (`123456789012.dkr.ecr.eu-west-1.amazonaws.com`), which is how image
//!   references and kubelet keys spell it; kubelet drops the scheme anyway;
//! - username and password: the decoded `authorizationToken` (`AWS:<password>`);
//! - expiry: `expiresAt` as ECR reported it. It is not clamped here, even when
//!   it is already in the past (moto says 2015-01-01): the refresh scheduler
//!   owns the policy for bad expiry data, and hiding it here would hide it
//!   from the scheduler's warning too.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use tokio::sync::OnceCell;

use crate::aws_errors::sdk_error;
use crate::factory::{BuildContext, deadline};
use crate::spec::{EcrSpec, ServiceAccountRef};
use crate::trust::Trust;
use crate::{Cluster, Provider, ProviderError, Redacted, RegistryCredential};

const NAME: &str = "ecr";
/// The audience AWS STS expects on web identity tokens.
pub(crate) const STS_AUDIENCE: &str = "sts.amazonaws.com";
/// Session name for `roleArn` assumed on top of the base identity.
pub(crate) const SESSION_NAME: &str = "regbridge";

pub(crate) struct EcrProvider {
    spec: EcrSpec,
    timeout: Duration,
    trust: Trust,
    /// The base config (and with it the default chain's credential cache),
    /// loaded on first use.
    base: OnceCell<SdkConfig>,
    /// The ECR client for the base identity or `roleArn`, kept so its
    /// identity cache survives between mints.
    client: OnceCell<aws_sdk_ecr::Client>,
}

impl EcrProvider {
    pub(crate) fn new(spec: EcrSpec, ctx: &BuildContext) -> Result<Self, ProviderError> {
        if spec.region.trim().is_empty() {
            return Err(ProviderError::InvalidSpec("ecr: region is required".into()));
        }
        if spec.identity.is_some() && spec.role_arn.is_none() {
            return Err(ProviderError::InvalidSpec(
                "ecr: identity.serviceAccountRef needs roleArn, the role that ServiceAccount's token is exchanged for"
                    .into(),
            ));
        }
        if spec.external_id.is_some() && spec.role_arn.is_none() {
            return Err(ProviderError::InvalidSpec(
                "ecr: externalId needs roleArn".into(),
            ));
        }
        Ok(Self {
            spec,
            timeout: ctx.timeout,
            trust: ctx.trust.clone(),
            base: OnceCell::new(),
            client: OnceCell::new(),
        })
    }

    async fn base(&self) -> &SdkConfig {
        self.base
            .get_or_init(|| load_base_config(Region::new(self.spec.region.clone()), &self.trust))
            .await
    }

    /// The client for the base identity, or for `roleArn` assumed on top of it.
    async fn shared_client(&self) -> &aws_sdk_ecr::Client {
        let base = self.base().await;
        self.client
            .get_or_init(|| async {
                let mut conf = aws_sdk_ecr::config::Builder::from(base);
                if let Some(role) = &self.spec.role_arn {
                    conf = conf.credentials_provider(
                        assume_role_provider(base, role, self.spec.external_id.as_deref()).await,
                    );
                }
                aws_sdk_ecr::Client::from_conf(conf.build())
            })
            .await
    }

    /// A client that acts as the tenant's ServiceAccount, through
    /// `AssumeRoleWithWebIdentity`.
    async fn tenant_client(
        &self,
        cluster: &dyn Cluster,
        sa: &ServiceAccountRef,
        role: &str,
    ) -> Result<aws_sdk_ecr::Client, ProviderError> {
        let base = self.base().await;
        let creds = web_identity_credentials(NAME, base, cluster, sa, role).await?;
        let conf = aws_sdk_ecr::config::Builder::from(base)
            .credentials_provider(creds)
            .build();
        Ok(aws_sdk_ecr::Client::from_conf(conf))
    }

    async fn mint_now(
        &self,
        cluster: &dyn Cluster,
    ) -> Result<Vec<RegistryCredential>, ProviderError> {
        let tenant;
        let client = match (&self.spec.identity, &self.spec.role_arn) {
            (Some(identity), Some(role)) => {
                tenant = self
                    .tenant_client(cluster, &identity.service_account_ref, role)
                    .await?;
                &tenant
            }
            _ => self.shared_client().await,
        };
        let ids = (!self.spec.registry_ids.is_empty()).then(|| self.spec.registry_ids.clone());
        // AWS marks `registryIds` deprecated because it does not change what the
        // token may read; it still decides which `proxyEndpoint` hosts come
        // back, and those are the keys we write.
        #[allow(deprecated)]
        let out = client
            .get_authorization_token()
            .set_registry_ids(ids)
            .send()
            .await
            .map_err(|e| sdk_error(NAME, "GetAuthorizationToken", &e))?;
        if out.authorization_data().is_empty() {
            return Err(malformed("the response has no authorizationData"));
        }
        out.authorization_data()
            .iter()
            .map(|data| {
                let endpoint = data
                    .proxy_endpoint()
                    .ok_or_else(|| malformed("an entry has no proxyEndpoint"))?;
                let token = data
                    .authorization_token()
                    .ok_or_else(|| malformed("an entry has no authorizationToken"))?;
                let (username, password) = decode_token(NAME, token)?;
                Ok(RegistryCredential {
                    host: host_of(endpoint),
                    username,
                    password,
                    expires_at: data.expires_at().and_then(to_chrono),
                })
            })
            .collect()
    }
}

#[async_trait]
impl Provider for EcrProvider {
    async fn mint(&self, cluster: &dyn Cluster) -> Result<Vec<RegistryCredential>, ProviderError> {
        deadline(NAME, self.timeout, self.mint_now(cluster)).await
    }
}

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

/// `https://123.dkr.ecr.eu-west-1.amazonaws.com/` → `123.dkr.ecr.eu-west-1.amazonaws.com`.
pub(crate) fn host_of(endpoint: &str) -> String {
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .unwrap_or(endpoint);
    rest.trim_end_matches('/').to_owned()
}

/// The SDK's `DateTime` (shared by every aws-sdk crate) as chrono's.
pub(crate) fn to_chrono(t: &aws_sdk_ecr::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

fn malformed(reason: &str) -> ProviderError {
    ProviderError::Malformed {
        what: "ecr: GetAuthorizationToken response".into(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::IdentitySpec;

    #[test]
    fn proxy_endpoint_loses_its_scheme_and_trailing_slash() {
        assert_eq!(
            host_of("https://123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
        );
        assert_eq!(host_of("https://r.example:5000/"), "r.example:5000");
        assert_eq!(host_of("plain.example"), "plain.example");
    }

    #[test]
    fn token_decodes_to_user_and_password_and_errors_do_not_quote_it() {
        let (user, pass) = decode_token(NAME, &STANDARD.encode("AWS:p:w")).unwrap();
        assert_eq!((user.as_str(), pass.expose().as_str()), ("AWS", "p:w"));
        let err = decode_token(NAME, &STANDARD.encode("nocolonsecret")).unwrap_err();
        assert!(!err.to_string().contains("nocolonsecret"), "{err}");
        assert!(decode_token(NAME, "%%%").is_err());
    }

    #[test]
    fn identity_without_role_is_an_invalid_spec() {
        let spec = EcrSpec {
            region: "eu-west-1".into(),
            identity: Some(IdentitySpec::default()),
            ..Default::default()
        };
        assert!(matches!(
            EcrProvider::new(spec, &BuildContext::new("res")),
            Err(ProviderError::InvalidSpec(_))
        ));
        let no_region = EcrSpec::default();
        assert!(EcrProvider::new(no_region, &BuildContext::new("res")).is_err());
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
