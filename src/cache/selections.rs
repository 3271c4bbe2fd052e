//! Compiled selections, kept while a resource stays the same. Compiling a
//! resource's globs and label selector is the costliest part of reading it,
//! and every reconcile (for its rivals), every admission and every
//! pull-failure Event reads every resource: with hundreds of resources,
//! compiling them each time would dominate.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use kube::ResourceExt;

use crate::api::crd::{ClusterPullSecret, ClusterPullSecretSpec};
use crate::cache::selection::Selection;

struct Entry {
    resource_version: Option<String>,
    spec: ClusterPullSecretSpec,
    /// `None` when the spec does not compile.
    selection: Option<Arc<Selection>>,
}

#[derive(Default)]
pub struct SelectionCache {
    by_name: Mutex<HashMap<String, Entry>>,
}

impl SelectionCache {
    /// Each resource's selection, in order (`None` where the spec does not
    /// compile), compiling only what changed; forgets resources no longer
    /// among `resources`, which is always every cached resource.
    /// Each resource with its compiled selection (`None`: its spec does not
    /// compile), compiling only what changed since the last call.
    pub fn each(
        &self,
        resources: Vec<Arc<ClusterPullSecret>>,
    ) -> Vec<(Arc<ClusterPullSecret>, Option<Arc<Selection>>)> {
        let selections = self.selections(&resources);
        resources.into_iter().zip(selections).collect()
    }

    fn selections(&self, resources: &[Arc<ClusterPullSecret>]) -> Vec<Option<Arc<Selection>>> {
        let mut by_name = self.by_name.lock().expect("selection cache lock");
        let out = resources
            .iter()
            .map(|r| {
                let name = r.name_any();
                let resource_version = r.resource_version();
                if let Some(e) = by_name.get(&name)
                    && e.resource_version == resource_version
                    && e.spec == r.spec
                {
                    return e.selection.clone();
                }
                let selection = Selection::compile(&r.spec).ok().map(Arc::new);
                by_name.insert(
                    name,
                    Entry {
                        resource_version,
                        spec: r.spec.clone(),
                        selection: selection.clone(),
                    },
                );
                selection
            })
            .collect();
        if by_name.len() > resources.len() {
            let live: HashSet<String> = resources.iter().map(|r| r.name_any()).collect();
            by_name.retain(|name, _| live.contains(name));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(name: &str, rv: &str, service_accounts: &[&str]) -> Arc<ClusterPullSecret> {
        let spec: ClusterPullSecretSpec = serde_json::from_value(serde_json::json!({
            "credentials": [], "serviceAccounts": service_accounts,
        }))
        .unwrap();
        let mut r = ClusterPullSecret::new(name, spec);
        r.metadata.resource_version = Some(rv.into());
        Arc::new(r)
    }

    #[test]
    fn an_unchanged_resource_is_compiled_once() {
        let cache = SelectionCache::default();
        let rs = [resource("a", "1", &["default"])];
        let first = cache.selections(&rs)[0].clone().unwrap();
        let again = cache.selections(&rs)[0].clone().unwrap();
        assert!(Arc::ptr_eq(&first, &again));
    }

    #[test]
    fn a_changed_resource_is_compiled_again() {
        let cache = SelectionCache::default();
        let before = cache.selections(&[resource("a", "1", &["default"])])[0]
            .clone()
            .unwrap();
        assert!(before.selects_service_account("default"));
        let after = cache.selections(&[resource("a", "2", &["builder"])])[0]
            .clone()
            .unwrap();
        assert!(!after.selects_service_account("default"));
        assert!(after.selects_service_account("builder"));
    }

    #[test]
    fn an_invalid_spec_has_no_selection_and_deleted_resources_are_forgotten() {
        let cache = SelectionCache::default();
        let out = cache.selections(&[resource("a", "1", &["["]), resource("b", "1", &["*"])]);
        assert!(out[0].is_none());
        assert!(out[1].is_some());
        cache.selections(&[resource("b", "1", &["*"])]);
        assert_eq!(cache.by_name.lock().unwrap().len(), 1);
    }
}
