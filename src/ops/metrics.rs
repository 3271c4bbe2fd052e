//! Prometheus metrics. Labels are bounded: resource names, API kinds, verbs
//! and outcomes. Per-namespace detail goes to status and Events instead.
//!
//! Series labelled with a resource are dropped when the resource is
//! deleted ([`Metrics::forget_resource`]): a deleted resource's last
//! `credential_expiry_timestamp_seconds` would otherwise stay and, once
//! past, fire the expiry alert for a credential nobody serves.
//!
//! The `registry` label comes from hosts an administrator wrote in a
//! resource or its source Secret. It names what a user alerts on, so it
//! stays, but each family takes at most `REGISTRY_LABELS_MAX` distinct
//! values: beyond that, new hosts share `registry="other"`, so a Secret
//! with thousands of keys cannot grow the scrape without bound.

use std::collections::HashSet;
use std::hash::Hash;
use std::ops::Deref;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub resource: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResourceLabels {
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct WriteLabels {
    /// The API kind written: `secrets`, `serviceaccounts`, `clusterpullsecrets`.
    pub kind: &'static str,
    pub verb: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct NamespaceLabels {
    pub resource: String,
    /// `selected`, `synced` or `conflicting`.
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct WatchLabels {
    pub watch: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CredentialLabels {
    pub resource: String,
    pub registry: String,
    pub provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RegistryLabels {
    pub resource: String,
    pub registry: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct VerificationLabels {
    pub resource: String,
    pub registry: String,
    /// `Verified`, `Anonymous`, `Rejected` or `Unreachable`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefreshLabels {
    pub resource: String,
    pub provider: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AdmissionLabels {
    /// `serviceaccount`, `pod` or `other`.
    pub kind: &'static str,
    /// `patched`, `unchanged` or `skipped`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefusalLabels {
    /// `too_large` (over the body limit) or `timeout` (not read in time).
    pub reason: &'static str,
}

/// Distinct `registry` label values one family takes; see the module doc.
pub(crate) const REGISTRY_LABELS_MAX: usize = 100;
/// The `registry` label of every host past [`REGISTRY_LABELS_MAX`].
pub(crate) const OTHER_REGISTRY: &str = "other";

/// A label set that names a resource, and maybe a registry.
pub trait ResourceLabelSet: Clone + Hash + Eq {
    fn resource(&self) -> &str;
    /// The `registry` label, for the cardinality cap.
    fn registry_mut(&mut self) -> Option<&mut String> {
        None
    }
}

macro_rules! resource_labels {
    ($($t:ty),*) => {$(
        impl ResourceLabelSet for $t {
            fn resource(&self) -> &str {
                &self.resource
            }
        }
    )*};
}
resource_labels!(
    ReconcileLabels,
    ResourceLabels,
    NamespaceLabels,
    RefreshLabels
);

macro_rules! resource_registry_labels {
    ($($t:ty),*) => {$(
        impl ResourceLabelSet for $t {
            fn resource(&self) -> &str {
                &self.resource
            }
            fn registry_mut(&mut self) -> Option<&mut String> {
                Some(&mut self.registry)
            }
        }
    )*};
}
resource_registry_labels!(CredentialLabels, RegistryLabels, VerificationLabels);

/// A [`Family`] that remembers its label sets, so that every series of one
/// resource can be removed (the family itself cannot list them), and that
/// caps its `registry` label.
pub struct ResourceFamily<L, M> {
    family: Family<L, M>,
    seen: Mutex<Seen<L>>,
}

struct Seen<L> {
    series: HashSet<L>,
    /// The `registry` values in `series`, `other` aside.
    registries: HashSet<String>,
}

impl<L: ResourceLabelSet, M> ResourceFamily<L, M> {
    fn new(family: Family<L, M>) -> Self {
        Self {
            family,
            seen: Mutex::new(Seen {
                series: HashSet::new(),
                registries: HashSet::new(),
            }),
        }
    }

    /// As [`Family::get_or_create`], with the `registry` label capped.
    pub fn get_or_create(&self, labels: &L) -> impl Deref<Target = M> + '_ {
        let mut labels = labels.clone();
        let mut seen = self.seen.lock().expect("metric series lock");
        if let Some(registry) = labels.registry_mut() {
            if seen.registries.contains(registry.as_str())
                || seen.registries.len() < REGISTRY_LABELS_MAX
            {
                seen.registries.insert(registry.clone());
            } else {
                *registry = OTHER_REGISTRY.to_owned();
            }
        }
        seen.series.insert(labels.clone());
        drop(seen);
        self.family.get_or_create(&labels)
    }

    /// Removes every series labelled with `resource`, and frees the
    /// registry values only it used.
    pub fn forget(&self, resource: &str) {
        let mut seen = self.seen.lock().expect("metric series lock");
        seen.series.retain(|labels| {
            let keep = labels.resource() != resource;
            if !keep {
                self.family.remove(labels);
            }
            keep
        });
        let registries: HashSet<String> = seen
            .series
            .iter()
            .filter_map(|l| l.clone().registry_mut().map(std::mem::take))
            .filter(|r| r != OTHER_REGISTRY)
            .collect();
        seen.registries = registries;
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

pub struct Metrics {
    pub(crate) registry: Registry,
    pub reconciles: ResourceFamily<ReconcileLabels, Counter>,
    pub(crate) reconcile_duration: ResourceFamily<ResourceLabels, Histogram>,
    pub(crate) api_writes: Family<WriteLabels, Counter>,
    pub(crate) namespaces: ResourceFamily<NamespaceLabels, Gauge>,
    pub(crate) watch_errors: Family<WatchLabels, Counter>,
    pub(crate) credential_expiry: ResourceFamily<CredentialLabels, Gauge<f64, AtomicU64>>,
    pub(crate) refreshes: ResourceFamily<RefreshLabels, Counter>,
    pub(crate) refresh_duration: ResourceFamily<RefreshLabels, Histogram>,
    pub(crate) verifications: ResourceFamily<VerificationLabels, Counter>,
    pub(crate) pull_auth_failures: ResourceFamily<RegistryLabels, Counter>,
    pub(crate) admissions: Family<AdmissionLabels, Counter>,
    pub(crate) admission_duration: Histogram,
    pub(crate) webhook_refusals: Family<RefusalLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("regbridge");
        let reconciles: Family<ReconcileLabels, Counter> = Family::default();
        registry.register(
            "reconciles",
            "Reconciles of ClusterPullSecrets by result",
            reconciles.clone(),
        );
        let reconcile_duration: Family<ResourceLabels, Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            reconcile_duration.clone(),
        );
        let api_writes = Family::default();
        registry.register(
            "api_writes",
            "Write requests to the Kubernetes API",
            api_writes.clone(),
        );
        let namespaces: Family<NamespaceLabels, Gauge> = Family::default();
        registry.register(
            "namespaces",
            "Namespaces per ClusterPullSecret by state (selected, synced, conflicting)",
            namespaces.clone(),
        );
        let watch_errors = Family::default();
        registry.register(
            "watch_errors",
            "Errors seen by each watch",
            watch_errors.clone(),
        );
        let credential_expiry: Family<CredentialLabels, Gauge<f64, AtomicU64>> = Family::default();
        registry.register(
            "credential_expiry_timestamp_seconds",
            "When each distributed registry credential expires (Unix time)",
            credential_expiry.clone(),
        );
        let refreshes: Family<RefreshLabels, Counter> = Family::default();
        registry.register(
            "refreshes",
            "Credential refresh attempts by result",
            refreshes.clone(),
        );
        let refresh_duration: Family<RefreshLabels, Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "refresh_duration_seconds",
            "Time one credential refresh took",
            refresh_duration.clone(),
        );
        let verifications: Family<VerificationLabels, Counter> = Family::default();
        registry.register(
            "registry_verifications",
            "Registry handshakes proving a minted credential, by result",
            verifications.clone(),
        );
        let pull_auth_failures: Family<RegistryLabels, Counter> = Family::default();
        registry.register(
            "pull_auth_failures",
            "Image pulls that failed to authenticate against a registry this resource serves",
            pull_auth_failures.clone(),
        );
        let admissions = Family::default();
        registry.register(
            "admissions",
            "Admission webhook requests by kind and result (patched, unchanged, skipped)",
            admissions.clone(),
        );
        let admission_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "admission_duration_seconds",
            "Time the admission webhook took to answer one request",
            admission_duration.clone(),
        );
        let webhook_refusals = Family::default();
        registry.register(
            "webhook_refusals",
            "Admission webhook requests refused unread, by reason (too_large, timeout)",
            webhook_refusals.clone(),
        );
        Self {
            registry,
            reconciles: ResourceFamily::new(reconciles),
            reconcile_duration: ResourceFamily::new(reconcile_duration),
            api_writes,
            namespaces: ResourceFamily::new(namespaces),
            watch_errors,
            credential_expiry: ResourceFamily::new(credential_expiry),
            refreshes: ResourceFamily::new(refreshes),
            refresh_duration: ResourceFamily::new(refresh_duration),
            verifications: ResourceFamily::new(verifications),
            pull_auth_failures: ResourceFamily::new(pull_auth_failures),
            admissions,
            admission_duration,
            webhook_refusals,
        }
    }
}

impl Metrics {
    pub fn write(&self, kind: &'static str, verb: &'static str, ok: bool) {
        self.api_writes
            .get_or_create(&WriteLabels {
                kind,
                verb,
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// Drops every series labelled with this resource: it was deleted.
    pub fn forget_resource(&self, resource: &str) {
        self.reconciles.forget(resource);
        self.reconcile_duration.forget(resource);
        self.namespaces.forget(resource);
        self.credential_expiry.forget(resource);
        self.refreshes.forget(resource);
        self.refresh_duration.forget(resource);
        self.verifications.forget(resource);
        self.pull_auth_failures.forget(resource);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expiry(resource: &str, registry: &str) -> CredentialLabels {
        CredentialLabels {
            resource: resource.into(),
            registry: registry.into(),
            provider: "static",
        }
    }

    #[test]
    fn forgetting_a_resource_removes_all_its_series_and_only_those() {
        let m = Metrics::default();
        for r in ["gone", "kept"] {
            m.credential_expiry
                .get_or_create(&expiry(r, "r.io"))
                .set(1.0);
            m.reconciles
                .get_or_create(&ReconcileLabels {
                    resource: r.into(),
                    result: "ok",
                })
                .inc();
            m.reconcile_duration
                .get_or_create(&ResourceLabels { resource: r.into() })
                .observe(0.1);
        }
        m.forget_resource("gone");
        let text = m.encode();
        assert!(!text.contains("resource=\"gone\""), "{text}");
        assert!(text.contains("resource=\"kept\""), "{text}");
    }

    #[test]
    fn registries_past_the_cap_share_other() {
        let m = Metrics::default();
        for i in 0..REGISTRY_LABELS_MAX + 5 {
            m.credential_expiry
                .get_or_create(&expiry("a", &format!("r{i}.io")))
                .set(1.0);
        }
        // A registry already labelled keeps its label.
        m.credential_expiry
            .get_or_create(&expiry("b", "r0.io"))
            .set(1.0);
        let text = m.encode();
        assert!(text.contains("registry=\"other\""));
        assert!(!text.contains(&format!("registry=\"r{REGISTRY_LABELS_MAX}.io\"")));
        assert!(text.contains("resource=\"b\",registry=\"r0.io\""), "{text}");
        // Values freed by a deleted resource are given out again.
        m.forget_resource("a");
        m.credential_expiry
            .get_or_create(&expiry("c", "new.io"))
            .set(1.0);
        assert!(m.encode().contains("registry=\"new.io\""));
    }
}
