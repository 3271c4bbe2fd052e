//! Compact in-memory indexes fed by watches: for each Namespace,
//! ServiceAccount and managed Secret, only the few fields a decision reads.
//! Typed objects cost several KiB each (maps, metadata, payload copies);
//! these views keep 10,000 namespaces within a small memory budget.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::ResourceExt;
use kube::runtime::watcher;

use crate::api::labels::{
    ADDED_ANNOTATION, EXCLUDE_ANNOTATION, MANAGED_BY, MANAGED_BY_VALUE, RESOURCE, ROLE,
};

/// What selection reads of a Namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceView {
    pub name: String,
    /// Sorted by key.
    pub labels: Vec<(String, String)>,
    /// Annotated `regbridge.dev/exclude: "true"`.
    pub excluded: bool,
    /// Being deleted: new objects are refused there.
    pub terminating: bool,
}

impl NamespaceView {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.labels[i].1.as_str())
    }
}

impl From<&Namespace> for NamespaceView {
    fn from(ns: &Namespace) -> Self {
        Self {
            name: ns.name_any(),
            labels: ns
                .labels()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            excluded: ns.annotations().get(EXCLUDE_ANNOTATION).map(String::as_str) == Some("true"),
            terminating: ns.metadata.deletion_timestamp.is_some()
                || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating"),
        }
    }
}

/// What the ServiceAccount patches read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccountView {
    pub namespace: String,
    pub name: String,
    /// `None` when the field is absent, which a JSON Patch must treat
    /// differently from an empty list.
    pub pull_secrets: Option<Vec<String>>,
    /// Whether the object has an annotations map at all.
    pub has_annotations: bool,
    /// The value of `regbridge.dev/added-pull-secrets`.
    pub added: Option<String>,
}

impl From<&ServiceAccount> for ServiceAccountView {
    fn from(sa: &ServiceAccount) -> Self {
        Self {
            namespace: sa.namespace().unwrap_or_default(),
            name: sa.name_any(),
            pull_secrets: sa
                .image_pull_secrets
                .as_ref()
                .map(|l| l.iter().map(|r| r.name.clone()).collect()),
            has_annotations: sa.metadata.annotations.is_some(),
            added: sa.annotations().get(ADDED_ANNOTATION).cloned(),
        }
    }
}

/// What the planner reads of a managed Secret. The payload is kept only as
/// a digest: every copy holds the same bytes, and comparing digests is
/// enough to know whether a copy still matches its source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretView {
    pub namespace: String,
    pub name: String,
    pub resource_version: String,
    /// The `regbridge.dev/cluster-pull-secret` label.
    pub owner: Option<String>,
    /// The `regbridge.dev/role` label.
    pub role: Option<String>,
    /// Carries `app.kubernetes.io/managed-by: regbridge`.
    pub managed: bool,
    /// Digest of the Secret's type and data.
    pub content: u64,
}

/// The digest [`SecretView::content`] holds, for a Secret of `type_` whose
/// data is `data` (sorted by key).
pub(crate) fn content_digest<'a>(
    type_: Option<&str>,
    data: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> u64 {
    let mut h = DefaultHasher::new();
    type_.hash(&mut h);
    for (k, v) in data {
        k.hash(&mut h);
        v.hash(&mut h);
    }
    h.finish()
}

impl From<&Secret> for SecretView {
    fn from(s: &Secret) -> Self {
        let labels = s.labels();
        Self {
            namespace: s.namespace().unwrap_or_default(),
            name: s.name_any(),
            resource_version: s.resource_version().unwrap_or_default(),
            owner: labels.get(RESOURCE).cloned(),
            role: labels.get(ROLE).cloned(),
            managed: labels.get(MANAGED_BY).map(String::as_str) == Some(MANAGED_BY_VALUE),
            content: content_digest(
                s.type_.as_deref(),
                s.data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.as_str(), v.0.as_slice())),
            ),
        }
    }
}

type Key = (String, String);

#[derive(Default)]
struct State<V> {
    map: HashMap<Key, Arc<V>>,
    /// The next map while a (re)list is being read; swapped in at `InitDone`
    /// so a relist drops objects deleted while the watch was down.
    relisting: Option<HashMap<Key, Arc<V>>>,
    synced: bool,
}

/// A watch-fed index of views. Cheap to clone; clones share the index.
pub struct Index<V> {
    state: Arc<RwLock<State<V>>>,
}

impl<V> Clone for Index<V> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
        }
    }
}

impl<V> Default for Index<V> {
    fn default() -> Self {
        Self {
            state: Arc::new(RwLock::new(State {
                map: HashMap::new(),
                relisting: None,
                synced: false,
            })),
        }
    }
}

fn key<K: kube::Resource>(obj: &K) -> Key {
    (
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

impl<V> Index<V> {
    /// Applies one watch event, the way a reflector does.
    pub fn apply<K>(&self, event: &watcher::Event<K>)
    where
        K: kube::Resource,
        for<'a> V: From<&'a K>,
    {
        let mut st = self.state.write().expect("index lock");
        match event {
            watcher::Event::Apply(obj) => {
                st.map.insert(key(obj), Arc::new(V::from(obj)));
            }
            watcher::Event::Delete(obj) => {
                st.map.remove(&key(obj));
            }
            watcher::Event::Init => st.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(obj) => {
                st.relisting
                    .get_or_insert_with(HashMap::new)
                    .insert(key(obj), Arc::new(V::from(obj)));
            }
            watcher::Event::InitDone => {
                if let Some(next) = st.relisting.take() {
                    st.map = next;
                }
                st.synced = true;
            }
        }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<V>> {
        self.state
            .read()
            .expect("index lock")
            .map
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    pub fn values(&self) -> Vec<Arc<V>> {
        self.state
            .read()
            .expect("index lock")
            .map
            .values()
            .cloned()
            .collect()
    }

    /// Whether the first list has been read in full.
    pub fn is_synced(&self) -> bool {
        self.state.read().expect("index lock").synced
    }

    pub fn len(&self) -> usize {
        self.state.read().expect("index lock").map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn relist_replaces_the_index_at_init_done() {
        let index: Index<NamespaceView> = Index::default();
        index.apply(&watcher::Event::Apply(fixtures::ns("gone").object()));
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(fixtures::ns("kept").object()));
        assert!(
            index.get("", "gone").is_some(),
            "the old view serves until the relist is complete"
        );
        index.apply(&watcher::Event::<Namespace>::InitDone);
        assert!(index.get("", "gone").is_none());
        assert!(index.get("", "kept").is_some());
    }

    #[test]
    fn delete_removes_and_apply_replaces() {
        let index: Index<NamespaceView> = Index::default();
        index.apply(&watcher::Event::Apply(fixtures::ns("a").object()));
        index.apply(&watcher::Event::Apply(
            fixtures::ns("a").label("x", "1").object(),
        ));
        assert_eq!(index.get("", "a").unwrap().label("x"), Some("1"));
        index.apply(&watcher::Event::Delete(fixtures::ns("a").object()));
        assert!(index.is_empty());
    }

    #[test]
    fn secret_digest_changes_with_data_and_type_only() {
        let a = SecretView::from(&fixtures::secret("n", "s", &[], b"one"));
        let b = SecretView::from(&fixtures::secret("n", "s", &[("l", "v")], b"one"));
        let c = SecretView::from(&fixtures::secret("n", "s", &[], b"two"));
        assert_eq!(a.content, b.content);
        assert_ne!(a.content, c.content);
    }
}
