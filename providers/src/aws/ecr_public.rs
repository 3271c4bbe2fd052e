//! The `ecrPublic` provider: a pull token for `public.ecr.aws`.
//!
//! ECR Public's API exists only in us-east-1, whatever region the cluster
//! runs in, and its response has no `proxyEndpoint`: the host is always
//! `public.ecr.aws`. The expiry is reported as the service returned it (see
//! the `ecr` module on why nothing is clamped here).

use std::time::Duration;

use async_trait::async_trait;
use aws_config::{Region, SdkConfig};
use tokio::sync::OnceCell;

use super::common::{assume_role_provider, decode_token, load_base_config, to_chrono};
use super::errors::sdk_error;
use crate::provider::{BuildContext, deadline};
use crate::spec::EcrPublicSpec;
use crate::trust::Trust;
use crate::{Cluster, Provider, ProviderError, RegistryCredential};

const NAME: &str = "ecrPublic";
/// The only region ECR Public's API answers in.
pub(crate) const REGION: &str = "us-east-1";
/// The registry host ECR Public tokens are for.
pub(crate) const HOST: &str = "public.ecr.aws";

pub(crate) struct EcrPublicProvider {
    spec: EcrPublicSpec,
    timeout: Duration,
    trust: Trust,
    client: OnceCell<aws_sdk_ecrpublic::Client>,
}

impl EcrPublicProvider {
    pub(crate) fn new(spec: EcrPublicSpec, ctx: &BuildContext) -> Self {
        Self {
            spec,
            timeout: ctx.timeout,
            trust: ctx.trust.clone(),
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> &aws_sdk_ecrpublic::Client {
        self.client
            .get_or_init(|| async {
                let base: SdkConfig = load_base_config(Region::new(REGION), &self.trust).await;
                let mut conf = aws_sdk_ecrpublic::config::Builder::from(&base);
                if let Some(role) = &self.spec.role_arn {
                    conf = conf.credentials_provider(assume_role_provider(&base, role, None).await);
                }
                aws_sdk_ecrpublic::Client::from_conf(conf.build())
            })
            .await
    }

    async fn mint_now(&self) -> Result<Vec<RegistryCredential>, ProviderError> {
        let out = self
            .client()
            .await
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| sdk_error(NAME, "GetAuthorizationToken", &e))?;
        let malformed = |reason: &str| ProviderError::Malformed {
            what: "ecrPublic: GetAuthorizationToken response".into(),
            reason: reason.into(),
        };
        let data = out
            .authorization_data()
            .ok_or_else(|| malformed("has no authorizationData"))?;
        let token = data
            .authorization_token()
            .ok_or_else(|| malformed("has no authorizationToken"))?;
        let (username, password) = decode_token(NAME, token)?;
        Ok(vec![RegistryCredential {
            host: HOST.into(),
            username,
            password,
            expires_at: data.expires_at().and_then(to_chrono),
        }])
    }
}

#[async_trait]
impl Provider for EcrPublicProvider {
    async fn mint(&self, _cluster: &dyn Cluster) -> Result<Vec<RegistryCredential>, ProviderError> {
        deadline(NAME, self.timeout, self.mint_now()).await
    }
}
