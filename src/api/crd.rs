//! The `ClusterPullSecret` resource. Doc comments here become the CRD's
//! OpenAPI descriptions (`kubectl explain clusterpullsecret.spec`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use regbridge_providers::spec::CredentialSpec;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Composes registry credentials into one pull secret and distributes it to
/// the selected namespaces and ServiceAccounts.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "regbridge.dev",
    version = "v1alpha1",
    kind = "ClusterPullSecret",
    shortname = "cps",
    status = "ClusterPullSecretStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Registries","type":"string","jsonPath":".status.registries[*].host"}"#,
    printcolumn = r#"{"name":"Synced","type":"string","jsonPath":".status.namespaces.summary"}"#,
    printcolumn = r#"{"name":"Expires","type":"date","jsonPath":".status.earliestExpiry"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPullSecretSpec {
    /// Name of the Secret written into each selected namespace. Default: the
    /// resource's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub secret_name: Option<String>,
    /// Credential sources, composed into one dockerconfigjson. When two
    /// entries yield the same registry host, the first wins.
    #[schemars(length(min = 1))]
    pub credentials: Vec<CredentialSpec>,
    /// Which namespaces receive the Secret. Default: all of them.
    #[serde(default)]
    pub namespaces: NamespaceSelector,
    /// ServiceAccount names or globs whose `imagePullSecrets` get the Secret.
    /// `["*"]` is every ServiceAccount; `[]` patches none.
    #[serde(default = "default_service_accounts")]
    pub service_accounts: Vec<String>,
    /// Refresh a credential this long before it expires (e.g. `30m`): whole
    /// hours, minutes and seconds, at most `8760h`. Default: at half its
    /// remaining lifetime, with ±10 % jitter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"), length(max = 32))]
    pub refresh_before: Option<String>,
    /// Prove each newly minted credential against its registry (the Docker
    /// Registry v2 handshake) before it replaces the last good one.
    /// `Enforce`: a credential the registry rejects is never distributed.
    /// `Warn`: verify and report, distribute anyway. `Off`: no verification.
    /// An unreachable registry never blocks distribution.
    #[serde(default)]
    pub verify: VerifyPolicy,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum VerifyPolicy {
    #[default]
    Enforce,
    Warn,
    Off,
}

fn default_service_accounts() -> Vec<String> {
    vec!["default".into()]
}

/// A namespace is selected when it is active, matches `selector` and
/// `include`, matches no `exclude` glob, and is not annotated
/// `regbridge.dev/exclude: "true"`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSelector {
    /// Label selector on the namespace. Empty selects all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Name globs (`*`, `?`, `[a-z]`). Empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Name globs that are never selected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// Observed state. Never holds credential material.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPullSecretStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `CredentialsReady` and `Distributed`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// One entry per registry host in the composed Secret.
    #[serde(default)]
    pub registries: Vec<RegistryStatus>,
    /// The soonest expiry among the registries, if any expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earliest_expiry: Option<String>,
    #[serde(default)]
    pub namespaces: NamespaceCounts,
    /// Up to 20 namespaces where a Secret of `secretName` exists that this
    /// resource does not manage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
    /// Non-fatal problems, such as a host yielded by two entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Image pulls from this resource's registries that failed to
    /// authenticate, seen in the kubelet's Events, since the controller
    /// started.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pull_failure_count: u64,
    /// The newest of them, one per pod and image, newest first (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull_failures: Vec<PullFailureStatus>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A failed pull, as the kubelet reported it. Never holds credentials.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PullFailureStatus {
    pub namespace: String,
    pub pod: String,
    pub image: String,
    /// The registry key in the Secret that kubelet would have used.
    pub host: String,
    pub time: String,
    /// A short category, such as `Unauthorized` or `NoCredentials`.
    pub reason: String,
    /// The runtime's error, shortened and sanitised.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The likeliest cause, such as a pod that does not reference the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryStatus {
    pub host: String,
    /// The provider that minted it (`static`, `ecr`, ...).
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_time: Option<String>,
    /// The last refresh failure, without any credential material.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What the provider keeps outside the cluster, such as the Harbor robot
    /// account and its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The registry's answer to the last credential minted for this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerificationStatus {
    /// `Verified`, `Anonymous` (the registry allows anonymous access, so the
    /// credential was not exercised), `Rejected` or `Unreachable`.
    pub result: String,
    pub checked_at: String,
    /// The registry's error code and message; never credential material.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceCounts {
    pub selected: u32,
    pub synced: u32,
    pub conflicting: u32,
    /// `synced/selected`, for `kubectl get`.
    #[serde(default)]
    pub summary: String,
}

impl ClusterPullSecret {
    /// The Secret name in each namespace.
    pub fn secret_name(&self) -> String {
        use kube::ResourceExt;
        self.spec
            .secret_name
            .clone()
            .unwrap_or_else(|| self.name_any())
    }
}

/// The CRD as YAML, exactly as `regbridge crd` prints it and
/// `deploy/crds/clusterpullsecret.yaml` holds it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(ClusterPullSecret::crd()).expect("the CRD always serializes");
    crate::api::yaml::to_string(&crd).expect("a JSON value always emits")
}

/// Times on status, as the API server writes its own: RFC 3339, whole
/// seconds, `Z`.
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
