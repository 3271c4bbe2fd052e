//! The `credentials:` entries, shared by the `ClusterPullSecret` CRD and by
//! `regbridge mint --config`. Doc comments become the CRD's OpenAPI
//! descriptions, so they are written for `kubectl explain`.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A reference to a Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Namespace of the Secret. The controller reads source Secrets only from
    /// its own namespace (`--namespace`, default `regbridge`).
    pub namespace: String,
    /// Name of the Secret.
    pub name: String,
}

/// A reference to a ServiceAccount.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    pub namespace: String,
    pub name: String,
}

/// One source of registry credentials. Exactly one provider key is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum CredentialSpec {
    /// Credentials kept in a Secret (or, for `regbridge mint`, a file).
    Static(StaticSpec),
    /// AWS ECR, through the controller's AWS identity (IRSA, EKS Pod Identity,
    /// env, profile or IMDS), optionally an assumed role.
    Ecr(EcrSpec),
    /// AWS ECR Public (`public.ecr.aws`), through the us-east-1 API.
    EcrPublic(EcrPublicSpec),
    /// Google Artifact Registry and GCR, through Workload Identity / ADC, a
    /// service-account key, or a tenant's ServiceAccount (`identity`).
    Gar(GarSpec),
    /// A Harbor robot account that regbridge creates and rotates itself.
    Harbor(HarborSpec),
    /// Azure Container Registry, through the controller's Microsoft Entra
    /// identity (AKS Workload Identity or a managed identity), or a tenant's
    /// own identity.
    Acr(AcrSpec),
}

impl CredentialSpec {
    /// The Secrets this entry reads, so a change to one of them reaches the
    /// resources that use it and no others.
    pub fn secret_refs(&self) -> Vec<&SecretRef> {
        let own = match self {
            Self::Static(s) => s.secret_ref.as_ref(),
            Self::Gar(g) => g.key_secret_ref.as_ref(),
            Self::Harbor(h) => Some(&h.admin_secret_ref),
            Self::Ecr(_) | Self::EcrPublic(_) | Self::Acr(_) => None,
        };
        own.into_iter().chain(self.ca_secret_ref()).collect()
    }

    /// The entry's `caSecretRef`: a CA trusted for its hosts.
    pub fn ca_secret_ref(&self) -> Option<&SecretRef> {
        match self {
            Self::Static(s) => s.ca_secret_ref.as_ref(),
            Self::Ecr(e) => e.ca_secret_ref.as_ref(),
            Self::EcrPublic(e) => e.ca_secret_ref.as_ref(),
            Self::Gar(g) => g.ca_secret_ref.as_ref(),
            Self::Harbor(h) => h.ca_secret_ref.as_ref(),
            Self::Acr(a) => a.ca_secret_ref.as_ref(),
        }
    }

    /// The provider's name as it appears in status and metrics.
    /// The tenant's ServiceAccount whose identity the entry mints with
    /// (`identity.serviceAccountRef`), if it names one.
    pub fn tenant_service_account(&self) -> Option<&ServiceAccountRef> {
        match self {
            Self::Ecr(e) => e.identity.as_ref().map(|i| &i.service_account_ref),
            Self::Gar(g) => g.identity.as_ref().map(|i| &i.service_account_ref),
            Self::Acr(a) => a.identity.as_ref().map(|i| &i.service_account_ref),
            Self::Static(_) | Self::EcrPublic(_) | Self::Harbor(_) => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Static(_) => "static",
            Self::Ecr(_) => "ecr",
            Self::EcrPublic(_) => "ecrPublic",
            Self::Gar(_) => "gar",
            Self::Harbor(_) => "harbor",
            Self::Acr(_) => "acr",
        }
    }
}

/// Static credentials: either a `kubernetes.io/dockerconfigjson` Secret (all
/// its hosts are taken) or a Secret with `username` and `password` keys plus
/// an optional `server` (default `https://index.docker.io/v1/`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.secretRef) != has(self.file)",
    "message": "set exactly one of secretRef or file"
}]))]
pub struct StaticSpec {
    /// The Secret holding the credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// A docker `config.json` file. Only `regbridge mint` reads files; the
    /// controller rejects this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// A Secret with `ca.crt`, trusted besides the system store when this
    /// entry's registries are verified. For registries behind a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretRef>,
}

/// Per-tenant cloud identity: the controller requests a short-lived token for
/// this ServiceAccount (TokenRequest API) and exchanges it for the tenant's
/// own cloud identity, never falling back to the controller's: on `ecr`, for
/// `roleArn` with `AssumeRoleWithWebIdentity` (audience `sts.amazonaws.com`);
/// on `acr`, as the client assertion of `clientId` (audience
/// `api://AzureADTokenExchange`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IdentitySpec {
    pub service_account_ref: ServiceAccountRef,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.identity) || has(self.roleArn)", "message": "identity needs roleArn: the role the ServiceAccount's token is exchanged for"},
    {"rule": "!has(self.externalId) || has(self.roleArn)", "message": "externalId goes with roleArn"}
]))]
pub struct EcrSpec {
    /// AWS region of the registries, e.g. `eu-west-1`. One entry per region.
    pub region: String,
    /// Registry (account) IDs whose endpoints to write. Default: the caller's
    /// account. The token itself is valid for every registry the principal
    /// can read in the region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registry_ids: Vec<String>,
    /// A role assumed on top of the base identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// External ID for `roleArn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// Use this ServiceAccount's identity instead of the controller's
    /// (requires `roleArn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentitySpec>,
    /// A Secret with `ca.crt`, trusted besides the system store when this
    /// entry's registries are verified. For registries behind a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EcrPublicSpec {
    /// A role assumed on top of the base identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// A Secret with `ca.crt`, trusted besides the system store when this
    /// entry's registries are verified. For registries behind a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.identity) || !has(self.keySecretRef)", "message": "set identity or keySecretRef, not both: the token comes from the tenant's ServiceAccount or from the key"}
]))]
pub struct GarSpec {
    /// Hosts the token is written for, e.g. `europe-west1-docker.pkg.dev`,
    /// `gcr.io`. The token is not bound to a host, so they must be listed.
    pub registries: Vec<String>,
    /// A Secret with a service-account key (`key.json`). Default: Workload
    /// Identity / Application Default Credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_ref: Option<SecretRef>,
    /// Use this ServiceAccount's identity instead of the controller's,
    /// through Workload Identity Federation (excludes `keySecretRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<GarIdentitySpec>,
    /// A Secret with `ca.crt`, trusted besides the system store when this
    /// entry's registries are verified. For registries behind a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretRef>,
}

/// Per-tenant Google identity: the controller requests a short-lived token
/// for this ServiceAccount (TokenRequest API), exchanges it at Google STS for
/// a federated access token of the workload identity pool, and, with
/// `googleServiceAccount`, exchanges that for the Google service account's
/// token (`generateAccessToken`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.audience.startsWith('//') || self.audience.startsWith('identitynamespace:')", "message": "audience is a workload identity pool provider, //iam.googleapis.com/projects/PROJECT_NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER, or on GKE identitynamespace:PROJECT_ID.svc.id.goog:https://container.googleapis.com/v1/projects/PROJECT_ID/locations/LOCATION/clusters/CLUSTER"}
]))]
pub struct GarIdentitySpec {
    /// The tenant's ServiceAccount.
    pub service_account_ref: ServiceAccountRef,
    /// The audience of the token exchange at Google STS: the workload
    /// identity pool provider,
    /// `//iam.googleapis.com/projects/PROJECT_NUMBER/locations/global/workloadIdentityPools/POOL/providers/PROVIDER`.
    /// With the GKE cluster's own pool:
    /// `identitynamespace:PROJECT_ID.svc.id.goog:https://container.googleapis.com/v1/projects/PROJECT_ID/locations/LOCATION/clusters/CLUSTER`.
    #[schemars(length(min = 1, max = 512))]
    pub audience: String,
    /// The audience of the ServiceAccount token. Default: for
    /// `identitynamespace:POOL:PROVIDER`, `POOL` (`PROJECT_ID.svc.id.goog`);
    /// otherwise `audience` itself, which a provider without allowed
    /// audiences accepts. Set it when the provider lists its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub token_audience: Option<String>,
    /// Email of a Google service account to impersonate, e.g.
    /// `team-a-puller@PROJECT_ID.iam.gserviceaccount.com`. The federated
    /// identity needs `roles/iam.workloadIdentityUser` on it. Without it the
    /// federated token itself is the password, so the registry roles must be
    /// granted to the federated principal directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[^@/?#%\s]+@[^@/?#%\s]+$"), length(max = 254))]
    pub google_service_account: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.project) != (has(self.projects) && size(self.projects) > 0)",
    "message": "set project (a project robot) or projects (a system robot), not both"
}]))]
pub struct HarborSpec {
    /// Base URL of Harbor, e.g. `https://harbor.example.com`. `http://`
    /// sends the admin password in clear and is refused unless `insecure`.
    pub url: String,
    /// Allow an `http://` url. Status warns while it is in use.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// A Secret with `username` and `password` of an account allowed to
    /// manage robots. Never distributed.
    pub admin_secret_ref: SecretRef,
    /// Project for a project-level robot, limited to that project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Projects for a system-level robot (instead of `project`): pull on
    /// each. `["*"]` is every project, and only that says so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projects: Vec<String>,
    /// Robot name. Default: derived from the resource name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robot_name: Option<String>,
    /// How often the robot's secret is rotated, e.g. `24h`: whole hours,
    /// minutes and seconds, at most `8760h`. The robot itself lives two such
    /// periods (in whole days) unless regbridge replaces or deletes it.
    #[serde(default = "default_rotate_every")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"), length(max = 32))]
    pub rotate_every: String,
    /// A Secret with `ca.crt`, trusted besides the system store for Harbor's
    /// API and when its registry is verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretRef>,
}

/// Azure Container Registry. One Microsoft Entra token (scope
/// `https://containerregistry.azure.net/.default`) is exchanged at each
/// registry's `/oauth2/exchange` for an ACR refresh token, written with the
/// username `00000000-0000-0000-0000-000000000000`; its expiry is the
/// token's own `exp`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.registry) != (has(self.registries) && size(self.registries) > 0)", "message": "set registry (one login server) or registries (several), not both"},
    {"rule": "!has(self.identity) || has(self.clientId)", "message": "identity needs clientId: the tenant's identity that trusts the ServiceAccount's token"}
]))]
pub struct AcrSpec {
    /// The registry's login server, e.g. `myregistry.azurecr.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// Several login servers (instead of `registry`), each with its own
    /// exchange and its own host in the Secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registries: Vec<String>,
    /// The Microsoft Entra tenant (directory) ID. Default: `AZURE_TENANT_ID`,
    /// which the AKS Workload Identity webhook sets; for a managed identity
    /// without either, the tenant its token names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// The client ID of the identity to use. Default: `AZURE_CLIENT_ID`,
    /// which the webhook sets from the ServiceAccount's
    /// `azure.workload.identity/client-id` annotation; without Workload
    /// Identity and without either, the node's system-assigned managed
    /// identity. With `identity`: the tenant's identity, required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Use this ServiceAccount's token as the client assertion of `clientId`
    /// (a federated credential on the tenant's identity) instead of the
    /// controller's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentitySpec>,
    /// A Secret with `ca.crt`, trusted besides the system store for the
    /// registries' token exchange and when they are verified. For a
    /// registry behind a private CA or a TLS-inspecting proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretRef>,
}

impl AcrSpec {
    /// `registry` or `registries`, as written.
    pub fn login_servers(&self) -> Vec<&str> {
        self.registry
            .iter()
            .chain(&self.registries)
            .map(|r| r.trim())
            .collect()
    }
}

fn default_rotate_every() -> String {
    "24h".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names of the Secrets the entry `json` reads.
    fn secret_names(json: serde_json::Value) -> Vec<String> {
        let spec: CredentialSpec = serde_json::from_value(json).unwrap();
        spec.secret_refs().iter().map(|r| r.name.clone()).collect()
    }

    #[test]
    fn secret_refs_name_every_secret_an_entry_reads() {
        let harbor = serde_json::json!({"harbor": {
            "url": "https://harbor.example", "adminSecretRef": {"namespace": "rb", "name": "admin"},
            "caSecretRef": {"namespace": "rb", "name": "ca"}}});
        assert_eq!(secret_names(harbor), ["admin", "ca"]);
        let ecr = serde_json::json!({"ecr": {"region": "eu-west-1"}});
        assert!(secret_names(ecr).is_empty());
        let with_ca = serde_json::json!({"static": {
            "secretRef": {"namespace": "rb", "name": "hub"},
            "caSecretRef": {"namespace": "rb", "name": "corp-ca"}}});
        assert_eq!(secret_names(with_ca), ["hub", "corp-ca"]);
        let acr = serde_json::json!({"acr": {
            "registry": "myregistry.azurecr.io",
            "caSecretRef": {"namespace": "rb", "name": "corp-ca"}}});
        assert_eq!(secret_names(acr), ["corp-ca"]);
    }

    #[test]
    fn acr_takes_one_registry_or_a_list() {
        let one: AcrSpec =
            serde_json::from_value(serde_json::json!({"registry": " a.azurecr.io "})).unwrap();
        assert_eq!(one.login_servers(), ["a.azurecr.io"]);
        let list: AcrSpec = serde_json::from_value(
            serde_json::json!({"registries": ["a.azurecr.io", "b.azurecr.io"]}),
        )
        .unwrap();
        assert_eq!(list.login_servers(), ["a.azurecr.io", "b.azurecr.io"]);
    }
}
