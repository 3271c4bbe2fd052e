//! Prometheus metrics. Labels are bounded: resource names, API kinds, verbs
//! and outcomes. Per-namespace detail goes to status and Events instead.

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
pub struct ResourceLabels {
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// The API kind written: `secrets`, `serviceaccounts`, `clusterpullsecrets`.
    pub kind: &'static str,
    pub verb: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    pub resource: String,
    /// `selected`, `synced` or `conflicting`.
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    pub watch: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    pub resource: String,
    pub registry: String,
    pub provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabels {
    pub resource: String,
    pub registry: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerificationLabels {
    pub resource: String,
    pub registry: String,
    /// `Verified`, `Anonymous`, `Rejected` or `Unreachable`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefreshLabels {
    pub resource: String,
    pub provider: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// `serviceaccount`, `pod` or `other`.
    pub kind: &'static str,
    /// `patched`, `unchanged` or `skipped`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `too_large` (over the body limit) or `timeout` (not read in time).
    pub reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_duration: HistogramFamily<ResourceLabels>,
    pub api_writes: Family<WriteLabels, Counter>,
    pub namespaces: Family<NamespaceLabels, Gauge>,
    pub watch_errors: Family<WatchLabels, Counter>,
    pub credential_expiry: Family<CredentialLabels, Gauge<f64, AtomicU64>>,
    pub refreshes: Family<RefreshLabels, Counter>,
    pub refresh_duration: HistogramFamily<RefreshLabels>,
    pub verifications: Family<VerificationLabels, Counter>,
    pub pull_auth_failures: Family<RegistryLabels, Counter>,
    pub admissions: Family<AdmissionLabels, Counter>,
    pub admission_duration: Histogram,
    pub webhook_refusals: Family<RefusalLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("regbridge");
        let reconciles = Family::default();
        registry.register(
            "reconciles",
            "Reconciles of ClusterPullSecrets by result",
            reconciles.clone(),
        );
        let reconcile_duration =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
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
        let namespaces = Family::default();
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
        let credential_expiry = Family::default();
        registry.register(
            "credential_expiry_timestamp_seconds",
            "When each distributed registry credential expires (Unix time)",
            credential_expiry.clone(),
        );
        let refreshes = Family::default();
        registry.register(
            "refreshes",
            "Credential refresh attempts by result",
            refreshes.clone(),
        );
        let refresh_duration = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "refresh_duration_seconds",
            "Time one credential refresh took",
            refresh_duration.clone(),
        );
        let verifications = Family::default();
        registry.register(
            "registry_verifications",
            "Registry handshakes proving a minted credential, by result",
            verifications.clone(),
        );
        let pull_auth_failures = Family::default();
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
            reconciles,
            reconcile_duration,
            api_writes,
            namespaces,
            watch_errors,
            credential_expiry,
            refreshes,
            refresh_duration,
            verifications,
            pull_auth_failures,
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

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
