//! The distribution planner: from cached cluster state and one resource's
//! desired Secret, the exact writes that make the cluster match. Pure, so
//! every rule of distribution is tested without a server, and a steady state
//! is provably an empty plan.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use json_patch::Patch;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use crate::api::labels::{MANAGED_BY, MANAGED_BY_VALUE, RESOURCE, ROLE, ROLE_COPY};
use crate::cache::index::{NamespaceView, SecretView, ServiceAccountView, content_digest};
use crate::cache::selection::Selection;
use crate::decide::sa_patch::{add_reference, added_by_us, remove_reference};
use regbridge_providers::registry::dockerconfig::{DATA_KEY, SECRET_TYPE};

/// What another resource claims, for conflicts and shared references.
pub struct Claim<'a> {
    pub secret_name: &'a str,
    pub selection: &'a Selection,
    /// Whether it was created before the resource being planned (by
    /// creation time, then name): the older claim wins a namespace.
    pub older: bool,
}

/// The resource being planned. `payload` is `None` while it is being deleted:
/// then everything it manages is removed.
pub struct Desired<'a> {
    pub resource: &'a str,
    pub secret_name: &'a str,
    pub selection: &'a Selection,
    pub payload: Option<&'a [u8]>,
}

/// The cached cluster state the planner reads.
pub struct World<'a> {
    pub namespaces: &'a [Arc<NamespaceView>],
    pub service_accounts: &'a HashMap<String, Vec<Arc<ServiceAccountView>>>,
    /// Secrets carrying regbridge's managed-by label, by (namespace, name).
    pub managed: &'a HashMap<(String, String), Arc<SecretView>>,
    /// Never distributed to: it holds the source Secrets.
    pub controller_namespace: &'a str,
    /// Namespaces where creating `secret_name` found a Secret regbridge does
    /// not manage (such Secrets are not cached).
    pub foreign: &'a [String],
}

#[derive(Debug, PartialEq)]
pub enum SecretWrite {
    Create {
        namespace: String,
    },
    Update {
        namespace: String,
        resource_version: String,
    },
    Delete {
        namespace: String,
        name: String,
        resource_version: String,
    },
}

impl SecretWrite {
    pub fn verb(&self) -> Verb {
        match self {
            Self::Create { .. } => Verb::Create,
            Self::Update { .. } => Verb::Update,
            Self::Delete { .. } => Verb::Delete,
        }
    }
}

/// What a Secret write does, for the writer's error handling and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Create,
    Update,
    Delete,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }
}

/// Whether a ServiceAccount patch adds regbridge's reference or takes it
/// away. A retry after a conflict recomputes the patch for the same intent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference {
    Add,
    Remove,
}

#[derive(Debug, PartialEq)]
pub struct ServiceAccountWrite {
    pub namespace: String,
    pub name: String,
    /// The Secret the patch adds or removes: a retry recomputes the patch
    /// for it, and it is not always the current `secretName`.
    pub secret: String,
    pub intent: Reference,
    pub patch: Patch,
}

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub secrets: Vec<SecretWrite>,
    pub service_accounts: Vec<ServiceAccountWrite>,
    /// Namespaces that receive the Secret (conflicting ones included).
    pub selected: Vec<String>,
    /// Selected namespaces where a Secret of that name belongs to someone else.
    pub conflicts: Vec<String>,
}

impl Plan {
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty() && self.service_accounts.is_empty()
    }
}

/// The Secret regbridge writes into a namespace: the payload under its own
/// labels, never anything copied from the source's labels or annotations.
pub fn desired_copy(resource: &str, secret_name: &str, namespace: &str, payload: &[u8]) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(secret_name.into()),
            namespace: Some(namespace.into()),
            labels: Some(copy_labels(resource)),
            ..Default::default()
        },
        type_: Some(SECRET_TYPE.into()),
        data: Some([(DATA_KEY.to_string(), ByteString(payload.to_vec()))].into()),
        ..Default::default()
    }
}

pub fn copy_labels(resource: &str) -> BTreeMap<String, String> {
    [
        (MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
        (RESOURCE.to_string(), resource.to_string()),
        (ROLE.to_string(), ROLE_COPY.to_string()),
    ]
    .into()
}

/// The content digest of a copy holding `payload`.
pub fn payload_digest(payload: &[u8]) -> u64 {
    content_digest(Some(SECRET_TYPE), [(DATA_KEY, payload)])
}

fn owner(secret: &SecretView) -> Option<&str> {
    secret.owner.as_deref()
}

fn up_to_date(secret: &SecretView, resource: &str, digest: u64) -> bool {
    secret.content == digest
        && secret.managed
        && secret.owner.as_deref() == Some(resource)
        && secret.role.as_deref() == Some(ROLE_COPY)
}

pub fn plan(desired: &Desired<'_>, claims: &[Claim<'_>], world: &World<'_>) -> Plan {
    let mut out = Plan::default();
    let no_accounts = Vec::new();
    let digest = desired.payload.map(payload_digest);
    for ns in world.namespaces {
        let namespace = ns.name.clone();
        if namespace == world.controller_namespace {
            continue;
        }
        let wanted = desired.payload.is_some() && desired.selection.selects_namespace(ns);
        let existing = world
            .managed
            .get(&(namespace.clone(), desired.secret_name.to_string()));
        let ours = existing.filter(|s| owner(s) == Some(desired.resource));
        let accounts = world
            .service_accounts
            .get(&namespace)
            .unwrap_or(&no_accounts);
        // Nothing to add or take back here: skip the rivals, whose
        // selections would otherwise be evaluated for every namespace. A
        // namespace holding another resource's copy of the same name is that
        // resource's to clean: tenants often share a name like `regcred`, so
        // the references alone would make every namespace look like ours.
        if !wanted
            && ours.is_none()
            && (existing.is_some()
                || !accounts
                    .iter()
                    .any(|sa| added_by_us(sa).contains(&desired.secret_name)))
        {
            continue;
        }
        let rivals: Vec<&Claim<'_>> = claims
            .iter()
            .filter(|c| c.secret_name == desired.secret_name && c.selection.selects_namespace(ns))
            .collect();
        let lost_to_older = rivals.iter().any(|c| c.older);

        let serving = match (wanted, digest) {
            (true, Some(digest)) => {
                out.selected.push(namespace.clone());
                let foreign = (existing.is_some() && ours.is_none())
                    || world.foreign.contains(&namespace)
                    || lost_to_older;
                if foreign {
                    out.conflicts.push(namespace.clone());
                    false
                } else {
                    match ours {
                        None => out.secrets.push(SecretWrite::Create {
                            namespace: namespace.clone(),
                        }),
                        Some(s) if !up_to_date(s, desired.resource, digest) => {
                            out.secrets.push(SecretWrite::Update {
                                namespace: namespace.clone(),
                                resource_version: s.resource_version.clone(),
                            })
                        }
                        Some(_) => {}
                    }
                    true
                }
            }
            _ => false,
        };
        if !serving && let Some(s) = ours {
            out.secrets.push(SecretWrite::Delete {
                namespace: namespace.clone(),
                name: desired.secret_name.into(),
                resource_version: s.resource_version.clone(),
            });
        }
        for sa in accounts {
            let name = sa.name.clone();
            let write = if serving && desired.selection.selects_service_account(&name) {
                add_reference(sa, desired.secret_name).map(|p| (Reference::Add, p))
            } else if added_by_us(sa).contains(&desired.secret_name)
                && !rivals
                    .iter()
                    .any(|c| c.selection.selects_service_account(&name))
            {
                remove_reference(sa, desired.secret_name).map(|p| (Reference::Remove, p))
            } else {
                None
            };
            if let Some((intent, patch)) = write {
                out.service_accounts.push(ServiceAccountWrite {
                    namespace: namespace.clone(),
                    name,
                    secret: desired.secret_name.into(),
                    intent,
                    patch,
                });
            }
        }
    }
    retire_old_names(desired, claims, world, &mut out);
    out
}

/// After a `secretName` change, copies under the old name are orphans, and
/// so are the references regbridge added to them. The references go first
/// and the copy only once none is left: the copy is the only record of the
/// old name, so a pass interrupted between the two still finishes the job.
/// A reference another resource of that name claims stays.
fn retire_old_names(
    desired: &Desired<'_>,
    claims: &[Claim<'_>],
    world: &World<'_>,
    out: &mut Plan,
) {
    let orphans: Vec<_> = world
        .managed
        .iter()
        .filter(|((_, name), s)| {
            name != desired.secret_name
                && owner(s) == Some(desired.resource)
                && s.role.as_deref() == Some(ROLE_COPY)
        })
        .collect();
    if orphans.is_empty() {
        return;
    }
    let namespaces: HashMap<&str, &NamespaceView> = world
        .namespaces
        .iter()
        .map(|n| (n.name.as_str(), n.as_ref()))
        .collect();
    for ((namespace, name), s) in orphans {
        let ns = namespaces.get(namespace.as_str());
        let claimed = |sa: &str| {
            ns.is_some_and(|ns| {
                claims.iter().any(|c| {
                    c.secret_name == name
                        && c.selection.selects_namespace(ns)
                        && c.selection.selects_service_account(sa)
                })
            })
        };
        let mut referenced = false;
        for sa in world.service_accounts.get(namespace).into_iter().flatten() {
            if !added_by_us(sa).contains(&name.as_str()) || claimed(&sa.name) {
                continue;
            }
            if let Some(patch) = remove_reference(sa, name) {
                referenced = true;
                out.service_accounts.push(ServiceAccountWrite {
                    namespace: namespace.clone(),
                    name: sa.name.clone(),
                    secret: name.clone(),
                    intent: Reference::Remove,
                    patch,
                });
            }
        }
        if !referenced {
            out.secrets.push(SecretWrite::Delete {
                namespace: namespace.clone(),
                name: name.clone(),
                resource_version: s.resource_version.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::crd::ClusterPullSecretSpec;
    use crate::api::labels::ADDED_ANNOTATION;
    use crate::fixtures::{ns, sa, secret};
    use k8s_openapi::api::core::v1::Secret;

    const PAYLOAD: &[u8] = br#"{"auths":{}}"#;

    fn selection(sas: &[&str]) -> Selection {
        let spec: ClusterPullSecretSpec = serde_json::from_value(serde_json::json!({
            "credentials": [], "serviceAccounts": sas, "namespaces": {"exclude": ["kube-*"]}
        }))
        .unwrap();
        Selection::compile(&spec).unwrap()
    }

    struct Cluster {
        namespaces: Vec<Arc<NamespaceView>>,
        accounts: HashMap<String, Vec<Arc<ServiceAccountView>>>,
        managed: HashMap<(String, String), Arc<SecretView>>,
        foreign: Vec<String>,
    }

    impl Cluster {
        fn new(names: &[&str]) -> Self {
            Self {
                namespaces: names.iter().map(|n| Arc::new(ns(n).build())).collect(),
                accounts: names
                    .iter()
                    .map(|n| (n.to_string(), vec![Arc::new(sa(n, "default").build())]))
                    .collect(),
                managed: HashMap::new(),
                foreign: vec![],
            }
        }
        fn with_secret(mut self, s: Secret) -> Self {
            let v = SecretView::from(&s);
            self.managed
                .insert((v.namespace.clone(), v.name.clone()), Arc::new(v));
            self
        }
        fn with_sa(mut self, s: ServiceAccountView) -> Self {
            let list = self.accounts.entry(s.namespace.clone()).or_default();
            list.retain(|x| x.name != s.name);
            list.push(Arc::new(s));
            self
        }
        fn world(&self) -> World<'_> {
            World {
                namespaces: &self.namespaces,
                service_accounts: &self.accounts,
                managed: &self.managed,
                controller_namespace: "regbridge",
                foreign: &self.foreign,
            }
        }
    }

    fn ours(namespace: &str, payload: &[u8]) -> Secret {
        secret(
            namespace,
            "regcred",
            &[
                (MANAGED_BY, MANAGED_BY_VALUE),
                (RESOURCE, "company"),
                (ROLE, ROLE_COPY),
            ],
            payload,
        )
    }

    fn desired<'a>(sel: &'a Selection, payload: Option<&'a [u8]>) -> Desired<'a> {
        Desired {
            resource: "company",
            secret_name: "regcred",
            selection: sel,
            payload,
        }
    }

    #[test]
    fn new_namespaces_get_a_secret_and_a_default_sa_reference() {
        let c = Cluster::new(&["a", "b", "kube-system", "regbridge"]);
        let sel = selection(&["default"]);
        let p = plan(&desired(&sel, Some(PAYLOAD)), &[], &c.world());
        assert_eq!(p.selected, ["a", "b"]);
        assert_eq!(
            p.secrets,
            [
                SecretWrite::Create {
                    namespace: "a".into()
                },
                SecretWrite::Create {
                    namespace: "b".into()
                }
            ]
        );
        assert_eq!(p.service_accounts.len(), 2);
    }

    #[test]
    fn steady_state_plans_no_writes() {
        let c = Cluster::new(&["a"])
            .with_secret(ours("a", PAYLOAD))
            .with_sa(
                sa("a", "default")
                    .pull_secrets(&["regcred"])
                    .annotation(ADDED_ANNOTATION, "regcred")
                    .build(),
            );
        let sel = selection(&["default"]);
        let p = plan(&desired(&sel, Some(PAYLOAD)), &[], &c.world());
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(p.selected, ["a"]);
    }

    #[test]
    fn changed_payload_updates_with_the_cached_resource_version() {
        let c = Cluster::new(&["a"]).with_secret(ours("a", b"{}"));
        let sel = selection(&[]);
        let p = plan(&desired(&sel, Some(PAYLOAD)), &[], &c.world());
        assert_eq!(
            p.secrets,
            [SecretWrite::Update {
                namespace: "a".into(),
                resource_version: "7".into()
            }]
        );
    }

    #[test]
    fn secret_of_another_resource_is_a_conflict_and_sas_are_not_pointed_at_it() {
        let theirs = secret(
            "a",
            "regcred",
            &[(MANAGED_BY, MANAGED_BY_VALUE), (RESOURCE, "other")],
            PAYLOAD,
        );
        let c = Cluster::new(&["a"]).with_secret(theirs);
        let sel = selection(&["default"]);
        let p = plan(&desired(&sel, Some(PAYLOAD)), &[], &c.world());
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(p.conflicts, ["a"]);
    }

    #[test]
    fn foreign_unmanaged_secret_is_a_conflict() {
        let mut c = Cluster::new(&["a"]);
        c.foreign = vec!["a".into()];
        let sel = selection(&["default"]);
        let p = plan(&desired(&sel, Some(PAYLOAD)), &[], &c.world());
        assert!(p.is_empty());
        assert_eq!(p.conflicts, ["a"]);
    }

    #[test]
    fn older_claim_wins_and_the_younger_hands_over() {
        let c = Cluster::new(&["a"])
            .with_secret(ours("a", PAYLOAD))
            .with_sa(
                sa("a", "default")
                    .pull_secrets(&["regcred"])
                    .annotation(ADDED_ANNOTATION, "regcred")
                    .build(),
            );
        let sel = selection(&["default"]);
        let rival = Claim {
            secret_name: "regcred",
            selection: &sel,
            older: true,
        };
        let p = plan(&desired(&sel, Some(PAYLOAD)), &[rival], &c.world());
        assert_eq!(p.conflicts, ["a"]);
        assert!(matches!(p.secrets[..], [SecretWrite::Delete { .. }]));
        assert!(
            p.service_accounts.is_empty(),
            "the older resource still wants the reference"
        );
    }

    #[test]
    fn deselected_namespace_loses_secret_and_sa_reference() {
        let c = Cluster::new(&["kube-x"])
            .with_secret(ours("kube-x", PAYLOAD))
            .with_sa(
                sa("kube-x", "default")
                    .pull_secrets(&["mine", "regcred"])
                    .annotation(ADDED_ANNOTATION, "regcred")
                    .build(),
            );
        let sel = selection(&["default"]);
        let p = plan(&desired(&sel, Some(PAYLOAD)), &[], &c.world());
        assert!(
            matches!(&p.secrets[..], [SecretWrite::Delete { namespace, .. }] if namespace == "kube-x")
        );
        assert_eq!(p.service_accounts.len(), 1);
    }

    #[test]
    fn deletion_removes_only_what_was_added() {
        let c = Cluster::new(&["a", "b"])
            .with_secret(ours("a", PAYLOAD))
            .with_sa(
                sa("a", "default")
                    .pull_secrets(&["regcred"])
                    .annotation(ADDED_ANNOTATION, "regcred")
                    .build(),
            )
            .with_sa(sa("b", "default").pull_secrets(&["regcred"]).build());
        let sel = selection(&["default"]);
        let p = plan(&desired(&sel, None), &[], &c.world());
        assert_eq!(p.secrets.len(), 1);
        assert_eq!(p.service_accounts.len(), 1);
        assert_eq!(p.service_accounts[0].namespace, "a");
    }

    #[test]
    fn renamed_secret_leaves_no_orphan_copy() {
        let mut old = ours("a", PAYLOAD);
        old.metadata.name = Some("old-name".into());
        let c = Cluster::new(&["a"])
            .with_secret(old)
            .with_secret(ours("a", PAYLOAD));
        let sel = selection(&[]);
        let p = plan(&desired(&sel, Some(PAYLOAD)), &[], &c.world());
        assert!(matches!(&p.secrets[..], [SecretWrite::Delete { name, .. }] if name == "old-name"));
    }

    fn referencing_both() -> crate::fixtures::SaBuilder {
        sa("a", "default")
            .pull_secrets(&["theirs", "old-name", "regcred"])
            .annotation(ADDED_ANNOTATION, "old-name,regcred")
    }

    #[test]
    fn renamed_secret_takes_its_references_back_before_the_copy() {
        let mut old = ours("a", PAYLOAD);
        old.metadata.name = Some("old-name".into());
        let c = Cluster::new(&["a"])
            .with_secret(old)
            .with_secret(ours("a", PAYLOAD))
            .with_sa(referencing_both().build());
        let sel = selection(&["default"]);
        let p = plan(&desired(&sel, Some(PAYLOAD)), &[], &c.world());
        assert!(p.secrets.is_empty(), "the copy waits for its references");
        assert_eq!(p.service_accounts.len(), 1);
        assert_eq!(p.service_accounts[0].secret, "old-name");
        let mut obj = serde_json::to_value(referencing_both().object()).unwrap();
        json_patch::patch(&mut obj, &p.service_accounts[0].patch).unwrap();
        assert_eq!(
            obj["imagePullSecrets"],
            serde_json::json!([{"name": "theirs"}, {"name": "regcred"}])
        );
        assert_eq!(obj["metadata"]["annotations"][ADDED_ANNOTATION], "regcred");
    }

    #[test]
    fn an_old_name_another_resource_claims_keeps_its_reference() {
        let mut old = ours("a", PAYLOAD);
        old.metadata.name = Some("old-name".into());
        let c = Cluster::new(&["a"]).with_secret(old).with_sa(
            sa("a", "default")
                .pull_secrets(&["old-name"])
                .annotation(ADDED_ANNOTATION, "old-name")
                .build(),
        );
        let sel = selection(&["default"]);
        let theirs = selection(&["default"]);
        let claims = [Claim {
            secret_name: "old-name",
            selection: &theirs,
            older: false,
        }];
        let p = plan(&desired(&sel, Some(PAYLOAD)), &claims, &c.world());
        assert!(p.service_accounts.iter().all(|w| w.secret != "old-name"));
        assert!(
            p.secrets
                .iter()
                .any(|w| matches!(w, SecretWrite::Delete { name, .. } if name == "old-name")),
            "the orphan copy goes, so the other resource can write its own"
        );
    }

    #[test]
    fn a_namespace_holding_another_resources_copy_of_the_name_is_left_to_it() {
        let theirs = secret(
            "b",
            "regcred",
            &[
                (MANAGED_BY, MANAGED_BY_VALUE),
                (RESOURCE, "team-b"),
                (ROLE, ROLE_COPY),
            ],
            PAYLOAD,
        );
        let c = Cluster::new(&["a", "b"]).with_secret(theirs).with_sa(
            sa("b", "default")
                .pull_secrets(&["regcred"])
                .annotation(ADDED_ANNOTATION, "regcred")
                .build(),
        );
        let spec: ClusterPullSecretSpec = serde_json::from_value(serde_json::json!({
            "credentials": [], "serviceAccounts": ["default"], "namespaces": {"include": ["a"]}
        }))
        .unwrap();
        let sel = Selection::compile(&spec).unwrap();
        let p = plan(&desired(&sel, Some(PAYLOAD)), &[], &c.world());
        assert_eq!(p.selected, ["a"]);
        assert!(p.service_accounts.iter().all(|w| w.namespace == "a"));
        assert!(p.secrets.iter().all(|w| match w {
            SecretWrite::Create { namespace }
            | SecretWrite::Update { namespace, .. }
            | SecretWrite::Delete { namespace, .. } => namespace == "a",
        }));
    }

    #[test]
    fn copies_carry_only_regbridge_labels() {
        let s = desired_copy("company", "regcred", "a", PAYLOAD);
        assert_eq!(s.metadata.labels.as_ref(), Some(&copy_labels("company")));
        assert!(s.metadata.annotations.is_none());
        assert_eq!(s.type_.as_deref(), Some(SECRET_TYPE));
    }
}
