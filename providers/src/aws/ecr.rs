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
use aws_config::{Region, SdkConfig};
use tokio::sync::OnceCell;

use super::common::{
    assume_role_provider, decode_token, load_base_config, to_chrono, web_identity_credentials,
};
use super::errors::sdk_error;
use crate::provider::{BuildContext, deadline};
use crate::spec::{EcrSpec, ServiceAccountRef};
use crate::trust::Trust;
use crate::{Cluster, Provider, ProviderError, RegistryCredential};

const NAME: &str = "ecr";

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

/// `https://123.dkr.ecr.eu-west-1.amazonaws.com/` → `123.dkr.ecr.eu-west-1.amazonaws.com`.
pub(crate) fn host_of(endpoint: &str) -> String {
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .unwrap_or(endpoint);
    rest.trim_end_matches('/').to_owned()
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
}
