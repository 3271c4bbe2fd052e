//! Names regbridge writes into the cluster, in one place, so that every write
//! uses the same field manager and every ownership check the same labels.

/// Field manager for every write.
pub const FIELD_MANAGER: &str = "regbridge";
/// Finalizer that lets a deleted `ClusterPullSecret` clean up its copies and
/// ServiceAccount references first.
pub const FINALIZER: &str = "regbridge.dev/cleanup";

/// Set on every Secret regbridge writes. Watches select on it, so the
/// controller never caches foreign Secrets.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "regbridge";
/// Names the `ClusterPullSecret` a managed Secret belongs to.
pub const RESOURCE: &str = "regbridge.dev/cluster-pull-secret";
/// `source` on the composed Secret in the controller's namespace, `copy` on
/// the distributed ones.
pub const ROLE: &str = "regbridge.dev/role";
pub const ROLE_SOURCE: &str = "source";
pub const ROLE_COPY: &str = "copy";

/// A namespace annotated `"true"` is never selected.
pub const EXCLUDE_ANNOTATION: &str = "regbridge.dev/exclude";
/// On a ServiceAccount: the comma-separated pull secret names regbridge added
/// to its `imagePullSecrets`, so that cleanup removes exactly those and never
/// an entry somebody else wrote.
pub const ADDED_ANNOTATION: &str = "regbridge.dev/added-pull-secrets";

/// On the composed Secret: what each credentials entry last distributed
/// ([`crate::decide::entries::MintRecord`]s as JSON), so a new process takes it
/// over instead of minting again.
pub const MINTED: &str = "regbridge.dev/minted";

/// Whether an object with these labels belongs to the resource `resource`:
/// the one ownership test, for a Secret found after a create's 409.
pub fn owned_by(labels: &std::collections::BTreeMap<String, String>, resource: &str) -> bool {
    labels.get(RESOURCE).map(String::as_str) == Some(resource)
}

/// The label selector for everything regbridge manages.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY}={MANAGED_BY_VALUE}")
}
