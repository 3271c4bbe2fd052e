//! Building status from what a reconcile saw and did. Pure, and careful to
//! produce an equal value for an unchanged world, because a status write is
//! itself a watch event: writing on every reconcile would loop.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::crd::{
    ClusterPullSecretStatus, NamespaceCounts, PullFailureStatus, RegistryStatus,
    VerificationStatus, rfc3339,
};
use crate::decide::compose::ComposedHost;
use crate::decide::entries::EntryReport;

/// At most this many conflicting namespaces are listed.
pub const MAX_LISTED_CONFLICTS: usize = 20;

pub const READY: &str = "Ready";
pub const CREDENTIALS_READY: &str = "CredentialsReady";
pub const DISTRIBUTED: &str = "Distributed";
pub const VERIFIED: &str = "Verified";

/// One condition's wanted state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    pub reason: String,
    pub message: String,
}

impl Verdict {
    fn new(status: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
    pub fn ok(reason: &str, message: impl Into<String>) -> Self {
        Self::new("True", reason, message)
    }
    pub fn fail(reason: &str, message: impl Into<String>) -> Self {
        Self::new("False", reason, message)
    }
    pub fn unknown(reason: &str, message: impl Into<String>) -> Self {
        Self::new("Unknown", reason, message)
    }
    pub fn is_ok(&self) -> bool {
        self.status == "True"
    }
}

/// `CredentialsReady`'s reason when a served credential has expired.
pub const EXPIRED: &str = "CredentialExpired";

/// `CredentialsReady`: False while any host's credential has expired (it is
/// no longer distributed) or any entry's last refresh failed.
pub fn credentials_verdict(entries: &[EntryReport], hosts: usize) -> Verdict {
    let expired: Vec<String> = entries
        .iter()
        .flat_map(|e| {
            e.expired.iter().map(move |(host, at)| {
                format!(
                    "registry {host} expired at {} and is no longer distributed: credentials[{}] ({}): {}",
                    rfc3339(*at),
                    e.index,
                    e.provider,
                    e.last_error
                        .as_deref()
                        .unwrap_or("the provider has not returned a fresh credential")
                )
            })
        })
        .collect();
    if !expired.is_empty() {
        return Verdict::fail(EXPIRED, expired.join("; "));
    }
    let failing: Vec<String> = entries
        .iter()
        .filter_map(|e| {
            let error = e.last_error.as_ref()?;
            Some(format!(
                "credentials[{}] ({}): {error}",
                e.index, e.provider
            ))
        })
        .collect();
    if failing.is_empty() {
        Verdict::ok("Minted", format!("{hosts} registries"))
    } else {
        Verdict::fail("RefreshFailing", failing.join("; "))
    }
}

/// A condition that keeps its `lastTransitionTime` unless its status flips.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    v: &Verdict,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = v.status;
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: v.reason.clone(),
        message: v.message.clone(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// Everything a reconcile decided, for status.
pub struct Observation<'a> {
    pub generation: Option<i64>,
    pub credentials: Verdict,
    pub distributed: Verdict,
    /// `None` with `verify: Off`.
    pub verified: Option<Verdict>,
    pub hosts: &'a [ComposedHost],
    pub entries: &'a [EntryReport],
    pub selected: u32,
    pub synced: u32,
    pub conflicts: &'a [String],
    pub warnings: Vec<String>,
    /// The composed Secret was already as composed: nothing new was
    /// distributed.
    pub source_unchanged: bool,
    /// The total and the newest pull failures.
    pub pull_failures: (u64, Vec<PullFailureStatus>),
}

pub fn build(
    previous: Option<&ClusterPullSecretStatus>,
    obs: &Observation<'_>,
    now: Timestamp,
) -> ClusterPullSecretStatus {
    let prev_conditions = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    let ready = if !obs.credentials.is_ok() {
        obs.credentials.clone()
    } else if !obs.distributed.is_ok() {
        obs.distributed.clone()
    } else {
        Verdict::ok("Ready", "credentials are current and distributed")
    };
    let mut conditions = vec![
        condition(prev_conditions, READY, &ready, obs.generation, now),
        condition(
            prev_conditions,
            CREDENTIALS_READY,
            &obs.credentials,
            obs.generation,
            now,
        ),
        condition(
            prev_conditions,
            DISTRIBUTED,
            &obs.distributed,
            obs.generation,
            now,
        ),
    ];
    if let Some(v) = &obs.verified {
        conditions.push(condition(prev_conditions, VERIFIED, v, obs.generation, now));
    }
    let registries: Vec<RegistryStatus> = obs
        .hosts
        .iter()
        .map(|h| {
            let entry = obs.entries.iter().find(|e| e.index == h.entry);
            RegistryStatus {
                host: h.host.clone(),
                provider: h.provider.into(),
                expires_at: h.expires_at.map(rfc3339),
                last_refresh_time: last_refresh_time(previous, obs, &h.host, entry),
                last_error: entry.and_then(|e| e.last_error.clone()),
                note: entry.and_then(|e| e.note.clone()),
                verification: entry.and_then(|e| e.verified.get(&h.host)).map(|c| {
                    VerificationStatus {
                        result: c.verification.result().into(),
                        checked_at: rfc3339(c.at),
                        message: c.verification.message(),
                    }
                }),
            }
        })
        .chain(obs.entries.iter().flat_map(|e| {
            e.expired.iter().map(move |(host, at)| RegistryStatus {
                host: host.clone(),
                provider: e.provider.into(),
                expires_at: Some(rfc3339(*at)),
                last_refresh_time: e.refreshed_at.map(rfc3339),
                last_error: Some(e.last_error.clone().unwrap_or_else(|| {
                    "expired; the provider has not returned a fresh credential".into()
                })),
                note: e.note.clone(),
                verification: None,
            })
        }))
        .collect();
    let earliest_expiry = obs
        .hosts
        .iter()
        .filter_map(|h| h.expires_at)
        .min()
        .map(rfc3339);
    let mut conflicts: Vec<String> = obs.conflicts.to_vec();
    conflicts.sort();
    conflicts.truncate(MAX_LISTED_CONFLICTS);
    ClusterPullSecretStatus {
        observed_generation: obs.generation,
        conditions,
        registries,
        earliest_expiry,
        namespaces: NamespaceCounts {
            selected: obs.selected,
            synced: obs.synced,
            conflicting: obs.conflicts.len() as u32,
            summary: format!("{}/{}", obs.synced, obs.selected),
        },
        conflicts,
        warnings: obs.warnings.clone(),
        pull_failure_count: obs.pull_failures.0,
        pull_failures: obs.pull_failures.1.clone(),
    }
}

/// When the host's credential was last minted. A restarted controller mints
/// again; if that changed nothing distributed, the recorded time still holds
/// (and an unchanged restart writes no status).
fn last_refresh_time(
    previous: Option<&ClusterPullSecretStatus>,
    obs: &Observation<'_>,
    host: &str,
    entry: Option<&EntryReport>,
) -> Option<String> {
    let entry = entry?;
    let recorded = || {
        previous?
            .registries
            .iter()
            .find(|r| r.host == host)?
            .last_refresh_time
            .clone()
    };
    match (entry.first_refresh && obs.source_unchanged)
        .then(recorded)
        .flatten()
    {
        Some(recorded) => Some(recorded),
        None => entry.refreshed_at.map(rfc3339),
    }
}

/// A condition that is True while what the providers created outside the
/// cluster (a Harbor robot) could not be deleted; the finalizer stays.
pub const CLEANUP_FAILED: &str = "CleanupFailed";

/// The status of a deleted resource whose remote cleanup failed: every
/// other condition kept, `CleanupFailed` set.
pub fn cleanup_failed(
    previous: Option<&ClusterPullSecretStatus>,
    message: String,
    now: Timestamp,
) -> ClusterPullSecretStatus {
    let mut status = previous.cloned().unwrap_or_default();
    let verdict = Verdict::new("True", "RemoteDeleteFailed", message);
    let failed = condition(
        &status.conditions,
        CLEANUP_FAILED,
        &verdict,
        status.observed_generation,
        now,
    );
    status.conditions.retain(|c| c.type_ != CLEANUP_FAILED);
    status.conditions.push(failed);
    status
}

/// A status for a resource whose spec cannot be acted on: the previous
/// distribution facts are kept, the conditions say why.
pub fn invalid(
    previous: Option<&ClusterPullSecretStatus>,
    generation: Option<i64>,
    reason: &str,
    message: String,
    now: Timestamp,
) -> ClusterPullSecretStatus {
    let mut status = previous.cloned().unwrap_or_default();
    let verdict = Verdict::fail(reason, message);
    let prev = status.conditions.clone();
    status.observed_generation = generation;
    status.conditions = vec![
        condition(&prev, READY, &verdict, generation, now),
        condition(&prev, CREDENTIALS_READY, &verdict, generation, now),
        prev.iter()
            .find(|c| c.type_ == DISTRIBUTED)
            .cloned()
            .unwrap_or_else(|| {
                condition(
                    &prev,
                    DISTRIBUTED,
                    &Verdict::fail("NotAttempted", "the resource is invalid"),
                    generation,
                    now,
                )
            }),
    ];
    status
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;

    fn obs<'a>(conflicts: &'a [String]) -> Observation<'a> {
        Observation {
            generation: Some(3),
            credentials: Verdict::ok("Minted", "1 registry"),
            distributed: Verdict::ok("Distributed", "2/2 namespaces"),
            verified: None,
            hosts: &[],
            entries: &[],
            selected: 2,
            synced: 2,
            conflicts,
            warnings: vec![],
            source_unchanged: false,
            pull_failures: (0, vec![]),
        }
    }

    #[test]
    fn unchanged_observation_gives_an_equal_status() {
        let first = build(None, &obs(&[]), Timestamp::UNIX_EPOCH);
        let later = Timestamp::UNIX_EPOCH
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(600))
            .unwrap();
        let second = build(Some(&first), &obs(&[]), later);
        assert_eq!(first, second, "no status write when nothing changed");
    }

    #[test]
    fn each_host_reports_its_own_entry_and_provider_note() {
        let hosts = [
            ComposedHost {
                host: "harbor.example.com".into(),
                entry: 1,
                provider: "harbor",
                expires_at: None,
            },
            ComposedHost {
                host: "quay.io".into(),
                entry: 0,
                provider: "static",
                expires_at: None,
            },
        ];
        let report = |index, provider, note: Option<&str>, error: Option<&str>| EntryReport {
            index,
            provider,
            invalid: false,
            last_error: error.map(String::from),
            refreshed_at: None,
            first_refresh: false,
            expired: vec![],
            note: note.map(String::from),
            verified: Default::default(),
        };
        let entries = [
            report(0, "static", None, None),
            report(
                1,
                "harbor",
                Some("harbor robot robot$team-a (id 7)"),
                Some("harbor: 503"),
            ),
        ];
        let mut o = obs(&[]);
        o.hosts = &hosts;
        o.entries = &entries;
        let s = build(None, &o, Timestamp::UNIX_EPOCH);
        let harbor = s
            .registries
            .iter()
            .find(|r| r.host == "harbor.example.com")
            .unwrap();
        assert_eq!(
            harbor.note.as_deref(),
            Some("harbor robot robot$team-a (id 7)")
        );
        assert_eq!(harbor.last_error.as_deref(), Some("harbor: 503"));
        let quay = s.registries.iter().find(|r| r.host == "quay.io").unwrap();
        assert!(quay.note.is_none() && quay.last_error.is_none());
    }

    #[test]
    fn an_expired_host_is_listed_with_why_and_credentials_are_not_ready() {
        let at = DateTime::parse_from_rfc3339("2026-12-06T05:00:00Z")
            .unwrap()
            .to_utc();
        let entries = [EntryReport {
            index: 0,
            provider: "gar",
            invalid: false,
            last_error: Some("gar: metadata server unreachable".into()),
            refreshed_at: None,
            first_refresh: false,
            expired: vec![("europe-docker.pkg.dev".into(), at)],
            note: None,
            verified: Default::default(),
        }];
        let verdict = credentials_verdict(&entries, 0);
        assert_eq!(
            (verdict.status, verdict.reason.as_str()),
            ("False", EXPIRED)
        );
        assert!(
            verdict
                .message
                .contains("europe-docker.pkg.dev expired at 2026-12-06T05:00:00Z")
        );
        assert!(verdict.message.contains("metadata server unreachable"));
        let mut o = obs(&[]);
        o.credentials = verdict;
        o.entries = &entries;
        let s = build(None, &o, Timestamp::UNIX_EPOCH);
        let host = &s.registries[0];
        assert_eq!(host.host, "europe-docker.pkg.dev");
        assert_eq!(host.expires_at.as_deref(), Some("2026-12-06T05:00:00Z"));
        assert_eq!(
            host.last_error.as_deref(),
            Some("gar: metadata server unreachable")
        );
        let ready = s
            .conditions
            .iter()
            .find(|c| c.type_ == CREDENTIALS_READY)
            .unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", EXPIRED)
        );
    }

    #[test]
    fn conflicts_are_counted_in_full_but_listed_capped() {
        let many: Vec<String> = (0..50).map(|i| format!("ns-{i:02}")).collect();
        let s = build(None, &obs(&many), Timestamp::UNIX_EPOCH);
        assert_eq!(s.namespaces.conflicting, 50);
        assert_eq!(s.conflicts.len(), MAX_LISTED_CONFLICTS);
        assert_eq!(s.namespaces.summary, "2/2");
    }

    #[test]
    fn invalid_spec_keeps_distribution_counts_and_sets_ready_false() {
        let good = build(None, &obs(&[]), Timestamp::UNIX_EPOCH);
        let bad = invalid(
            Some(&good),
            Some(4),
            "InvalidSelector",
            "namespaces.include: bad glob".into(),
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(bad.namespaces, good.namespaces);
        let ready = bad.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidSelector")
        );
    }
}
