//! What the controller knows about the cluster: the watches, the compact
//! views they keep of namespaces, ServiceAccounts and managed Secrets, and
//! which namespaces each resource selects. Decisions read these; nothing here
//! writes to the API server.

pub mod index;
pub mod selection;
pub(crate) mod selections;
pub(crate) mod watches;

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::Store;

use crate::api::crd::ClusterPullSecret;
use crate::cache::index::{Index, NamespaceView, SecretView, ServiceAccountView};
use crate::cache::selection::Selection;
use crate::cache::selections::SelectionCache;

/// Every cache the controller reads, cheap to clone into watch closures.
#[derive(Clone)]
pub(crate) struct Stores {
    pub resources: Store<ClusterPullSecret>,
    pub namespaces: Index<NamespaceView>,
    pub service_accounts: Index<ServiceAccountView>,
    pub managed: Index<SecretView>,
    /// Secrets of the controller's namespace: sources and composed Secrets.
    pub sources: Store<Secret>,
    /// Every resource's compiled selection.
    pub selections: Arc<SelectionCache>,
}

/// One reconcile's frozen view of namespaces, ServiceAccounts and managed
/// Secrets, in the shapes the planner reads.
pub(crate) struct Snapshot {
    pub namespaces: Vec<Arc<NamespaceView>>,
    pub service_accounts: HashMap<String, Vec<Arc<ServiceAccountView>>>,
    pub managed: HashMap<(String, String), Arc<SecretView>>,
}

impl Stores {
    /// Every cached resource with its compiled selection (`None`: its spec
    /// does not compile). The one way to walk resources with selections.
    pub fn with_selections(&self) -> Vec<(Arc<ClusterPullSecret>, Option<Arc<Selection>>)> {
        self.selections.each(self.resources.state())
    }

    pub fn namespace(&self, name: &str) -> Option<Arc<NamespaceView>> {
        self.namespaces.get("", name)
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut service_accounts: HashMap<String, Vec<Arc<ServiceAccountView>>> = HashMap::new();
        for sa in self.service_accounts.values() {
            service_accounts
                .entry(sa.namespace.clone())
                .or_default()
                .push(sa);
        }
        let mut namespaces = self.namespaces.values();
        namespaces.sort_by(|a, b| a.name.cmp(&b.name));
        Snapshot {
            namespaces,
            service_accounts,
            managed: self
                .managed
                .values()
                .into_iter()
                .map(|s| ((s.namespace.clone(), s.name.clone()), s))
                .collect(),
        }
    }
}
