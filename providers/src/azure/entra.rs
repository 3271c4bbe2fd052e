//! The Microsoft Entra access token that ACR exchanges, for the scope
//! `https://containerregistry.azure.net/.default`, through azure_identity's
//! credentials. regbridge writes no OAuth client of its own here.
//!
//! - **The controller's identity**, chosen the way AKS sets up a pod:
//!   - `AZURE_FEDERATED_TOKEN_FILE` set (the Workload Identity webhook sets
//!     it): `WorkloadIdentityCredential`, with `AZURE_CLIENT_ID` and
//!     `AZURE_TENANT_ID`, or the entry's `clientId` and `tenantId`;
//!   - otherwise `ManagedIdentityCredential` (IMDS): user-assigned when the
//!     entry's `clientId` or `AZURE_CLIENT_ID` names one, else the node's
//!     system-assigned identity.
//!
//!   Built on the first mint and kept, so its token cache serves later
//!   mints until five minutes before the Entra token expires; each mint
//!   still gets a new ACR refresh token.
//! - **A tenant's identity** (`identity.serviceAccountRef`):
//!   `ClientAssertionCredential` for the entry's `clientId`, whose client
//!   assertion is a TokenRequest token of the tenant's ServiceAccount with
//!   audience `api://AzureADTokenExchange`. A new one per mint, with a new
//!   ServiceAccount token. A TokenRequest that fails (the ServiceAccount is
//!   missing, or not granted) fails the mint: never a fallback to the
//!   controller's identity.
//!
//! Both honour `AZURE_AUTHORITY_HOST`, which azure_identity requires to be
//! `https://`.
//!
//! **Errors** say which identity asked and why it was refused: the HTTP
//! status and Entra's `AADSTS` codes with a hint, never Entra's
//! description or any token.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::ClientMethodOptions;
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::transport::Transport;
use crate::spec::{AcrSpec, ServiceAccountRef};
use crate::{Cluster, ProviderError, Redacted};

use super::NAME;

/// The scope whose tokens ACR's `/oauth2/exchange` accepts, whatever the
/// registry's "authentication as ARM" setting.
pub(crate) const SCOPE: &str = "https://containerregistry.azure.net/.default";
/// The audience Entra expects on a federated client assertion.
pub(crate) const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

const FEDERATED_TOKEN_FILE: &str = "AZURE_FEDERATED_TOKEN_FILE";
const CLIENT_ID: &str = "AZURE_CLIENT_ID";
const TENANT_ID: &str = "AZURE_TENANT_ID";

/// An Entra access token, and the tenant to name in the exchange.
pub(crate) struct EntraToken {
    pub(crate) value: Redacted<String>,
    pub(crate) tenant: Option<String>,
}

/// The controller's own credential, and what to call it in errors.
pub(crate) struct Own {
    credential: Arc<dyn TokenCredential>,
    tenant: Option<String>,
    what: String,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

impl Own {
    /// Workload Identity when the pod has a federated token file, else a
    /// managed identity.
    pub(crate) fn new(spec: &AcrSpec, transport: &Arc<Transport>) -> Result<Self, ProviderError> {
        let client_id = spec.client_id.clone().or_else(|| env(CLIENT_ID));
        let tenant = spec.tenant_id.clone().or_else(|| env(TENANT_ID));
        let Some(file) = env(FEDERATED_TOKEN_FILE) else {
            let what = match &client_id {
                Some(id) => format!("managed identity {id}"),
                None => "the system-assigned managed identity".into(),
            };
            let credential =
                ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id.map(UserAssignedId::ClientId),
                    client_options: transport.client_options(),
                }))
                .map_err(|e| refused(&what, &e))?;
            return Ok(Self {
                credential,
                tenant,
                what,
            });
        };
        let missing = |var: &str, field: &str| {
            ProviderError::InvalidSpec(format!(
                "acr: Workload Identity ({FEDERATED_TOKEN_FILE} is set) needs {var} or the entry's {field}"
            ))
        };
        let client_id = client_id.ok_or_else(|| missing(CLIENT_ID, "clientId"))?;
        let tenant_id = tenant.ok_or_else(|| missing(TENANT_ID, "tenantId"))?;
        let what = format!("workload identity {client_id} in tenant {tenant_id}");
        let credential = WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
            client_id: Some(client_id),
            tenant_id: Some(tenant_id.clone()),
            token_file_path: Some(file.into()),
            credential_options: ClientAssertionCredentialOptions {
                client_options: transport.client_options(),
            },
        }))
        .map_err(|e| refused(&what, &e))?;
        Ok(Self {
            credential,
            tenant: Some(tenant_id),
            what,
        })
    }

    pub(crate) async fn token(&self) -> Result<EntraToken, ProviderError> {
        let value = fetch(self.credential.as_ref(), &self.what).await?;
        // A managed identity's tenant, when nobody named one, is its token's.
        let tenant = self.tenant.clone().or_else(|| tenant_of(value.expose()));
        Ok(EntraToken { value, tenant })
    }
}

/// A TokenRequest token of the tenant's ServiceAccount, exchanged at Entra
/// as the client assertion of the tenant's `clientId`.
pub(crate) async fn tenant_token(
    spec: &AcrSpec,
    sa: &ServiceAccountRef,
    cluster: &dyn Cluster,
    transport: &Arc<Transport>,
) -> Result<EntraToken, ProviderError> {
    let client_id = spec.client_id.clone().ok_or_else(|| {
        ProviderError::InvalidSpec("acr: identity needs clientId, the tenant's identity".into())
    })?;
    let tenant_id = spec
        .tenant_id
        .clone()
        .or_else(|| env(TENANT_ID))
        .ok_or_else(|| {
            ProviderError::InvalidSpec(format!(
                "acr: identity needs tenantId (or {TENANT_ID} on the controller)"
            ))
        })?;
    let assertion = cluster
        .service_account_token(sa, TOKEN_EXCHANGE_AUDIENCE)
        .await?;
    let what = format!(
        "identity {client_id} in tenant {tenant_id} for ServiceAccount {}/{}",
        sa.namespace, sa.name
    );
    let credential = ClientAssertionCredential::new(
        tenant_id.clone(),
        client_id,
        Assertion(assertion),
        Some(ClientAssertionCredentialOptions {
            client_options: transport.client_options(),
        }),
    )
    .map_err(|e| refused(&what, &e))?;
    Ok(EntraToken {
        value: fetch(credential.as_ref(), &what).await?,
        tenant: Some(tenant_id),
    })
}

/// A client assertion fixed for one credential's life: the ServiceAccount
/// token requested for this mint.
#[derive(Debug)]
struct Assertion(Redacted<String>);

#[async_trait::async_trait]
impl ClientAssertion for Assertion {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        Ok(self.0.expose().clone())
    }
}

async fn fetch(
    credential: &dyn TokenCredential,
    what: &str,
) -> Result<Redacted<String>, ProviderError> {
    let token = credential
        .get_token(&[SCOPE], None)
        .await
        .map_err(|e| refused(what, &e))?;
    Ok(Redacted::new(token.token.secret().to_owned()))
}

/// The `tid` claim of an Entra access token, when it is a readable JWT.
fn tenant_of(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let raw = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    claims["tid"].as_str().map(str::to_owned)
}

fn refused(what: &str, err: &azure_core::Error) -> ProviderError {
    ProviderError::Remote {
        provider: NAME,
        reason: format!("Microsoft Entra token for {what}: {}", describe(err)),
    }
}

/// A secret-free account of an azure_identity failure. An HTTP refusal is
/// told by its status and Entra's error codes only: Entra's description and
/// IMDS's body are left out, as is every token.
fn describe(err: &azure_core::Error) -> String {
    let mut chain = vec![err];
    let mut next = std::error::Error::source(err);
    while let Some(e) = next {
        if let Some(azure) = e.downcast_ref::<azure_core::Error>() {
            chain.push(azure);
        }
        next = e.source();
    }
    let refusal = chain.iter().find_map(|e| match e.kind() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => Some((u16::from(*status), error_code.clone())),
        _ => None,
    });
    if let Some((status, codes)) = refusal {
        return refusal_text(status, codes.as_deref());
    }
    let deepest = chain[chain.len() - 1];
    match deepest.kind() {
        ErrorKind::DataConversion => "the answer is not the expected token JSON".into(),
        _ => {
            let text = deepest.to_string();
            let line = text.lines().next().unwrap_or_default().trim();
            line.chars().take(200).collect()
        }
    }
}

/// `HTTP 400, AADSTS700213 (hint)`: the codes come as Entra's
/// `error_codes`, comma-separated.
fn refusal_text(status: u16, codes: Option<&str>) -> String {
    let codes: Vec<&str> = codes
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    if codes.is_empty() {
        let hint = match status {
            400 => " (a managed identity: is that identity assigned to the node?)",
            401 | 403 => " (refused)",
            _ => "",
        };
        return format!("answered HTTP {status}{hint}");
    }
    let named: Vec<String> = codes
        .iter()
        .map(|c| match hint(c) {
            Some(h) => format!("AADSTS{c} ({h})"),
            None => format!("AADSTS{c}"),
        })
        .collect();
    format!("refused with HTTP {status}, {}", named.join(", "))
}

/// What the Entra errors a misconfigured setup meets most often mean.
fn hint(code: &str) -> Option<&'static str> {
    Some(match code {
        "700211" => {
            "no federated credential of the identity names this token's issuer: the cluster's OIDC issuer URL"
        }
        "700212" => "no federated credential of the identity names this token's audience",
        "700213" | "70021" => {
            "no federated credential of the identity matches this ServiceAccount: subject system:serviceaccount:<namespace>:<name>, audience api://AzureADTokenExchange"
        }
        "700016" => "no application or identity with this client ID in the tenant",
        "90002" => "no such tenant",
        "700024" => "the ServiceAccount token is expired or not yet valid",
        "50027" => "the client assertion is not a valid JWT",
        "7000215" => "invalid client secret",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_the_codes_and_name_the_common_ones() {
        assert_eq!(
            refusal_text(400, Some("700213")),
            "refused with HTTP 400, AADSTS700213 (no federated credential of the identity matches this ServiceAccount: subject system:serviceaccount:<namespace>:<name>, audience api://AzureADTokenExchange)"
        );
        assert_eq!(
            refusal_text(401, Some("7000999, 90002")),
            "refused with HTTP 401, AADSTS7000999, AADSTS90002 (no such tenant)"
        );
        assert_eq!(refusal_text(503, None), "answered HTTP 503");
        // Only digits are codes: nothing else from the answer passes.
        assert_eq!(
            refusal_text(400, Some("eyJhbGciOi")),
            "answered HTTP 400 (a managed identity: is that identity assigned to the node?)"
        );
    }

    #[test]
    fn the_tenant_comes_from_the_tokens_tid_claim() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"tid":"72f988bf-0000","aud":"x"}"#);
        assert_eq!(
            tenant_of(&format!("h.{payload}.s")).as_deref(),
            Some("72f988bf-0000")
        );
        assert_eq!(tenant_of("opaque"), None);
    }
}
