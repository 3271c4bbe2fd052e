//! The small judgements a reconcile makes after minting and writing: which
//! conditions hold, which Events are new, and when to look again. Each is a
//! function of what the reconcile saw, so each is tested on plain values.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use regbridge_providers::Verification;

use crate::api::crd::ClusterPullSecretStatus;
use crate::decide::entries::EntryReport;
use crate::decide::status::{self, Verdict};
use crate::decide::validate::Rejection;

/// A safety net: every resource is reconciled at least this often.
pub const RESYNC: Duration = Duration::from_secs(3600);
/// A namespace found to hold a foreign Secret is looked at again after this.
pub const FOREIGN_RECHECK: Duration = Duration::from_secs(60);
/// After writes the cache had not caught up with, look again this soon.
pub const STALE_RETRY: Duration = Duration::from_secs(1);
/// At most this many new conflicting namespaces are named in one Event.
const EVENT_LISTED_CONFLICTS: usize = 5;

/// `Verified`: every registry answered the credential with success (or
/// allows anonymous pulls). False on the first rejection; Unknown while a
/// registry cannot be reached, since nodes may still reach it.
pub fn verification(reports: &[EntryReport]) -> Verdict {
    let checked: Vec<(&String, &Verification)> = reports
        .iter()
        .flat_map(|r| r.verified.iter().map(|(h, c)| (h, &c.verification)))
        .collect();
    if let Some((host, v)) = checked.iter().find(|(_, v)| v.is_rejected()) {
        return Verdict::fail("Rejected", format!("{host}: {v}"));
    }
    if let Some((host, v)) = checked.iter().find(|(_, v)| v.result() == "Unreachable") {
        return Verdict::unknown("Unreachable", format!("{host}: {v}"));
    }
    if checked.is_empty() {
        return Verdict::unknown("NotChecked", "no registry has been checked yet");
    }
    Verdict::ok("Verified", format!("{} registries verified", checked.len()))
}

/// An entry whose spec or Secret must be fixed before it can mint: the whole
/// resource is refused, naming it.
pub fn invalid_entry(reports: &[EntryReport]) -> Option<Rejection> {
    let bad = reports.iter().find(|r| r.invalid)?;
    Some(Rejection {
        reason: "CredentialsInvalid",
        message: format!(
            "credentials[{}] ({}): {}",
            bad.index,
            bad.provider,
            bad.last_error.as_deref().unwrap_or("invalid")
        ),
    })
}

/// A refusal is announced once: only when `Ready` did not already say it.
pub fn announce_rejection(previous: Option<&ClusterPullSecretStatus>, reason: &str) -> bool {
    previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == status::READY))
        .map(|c| c.reason.as_str())
        != Some(reason)
}

/// The Event for a credentials failure, unless the same text was the last
/// one announced: one Event per new failure, not one per reconcile.
pub fn credentials_event(
    verdict: &Verdict,
    announced: Option<&str>,
) -> Option<(&'static str, String)> {
    if verdict.is_ok() || announced == Some(verdict.message.as_str()) {
        return None;
    }
    let reason = match verdict.reason.as_str() {
        status::EXPIRED => status::EXPIRED,
        _ => "RefreshFailed",
    };
    Some((reason, verdict.message.clone()))
}

/// What distributing to the selected namespaces came to.
#[derive(Debug, PartialEq, Eq)]
pub struct Distribution {
    pub verdict: Verdict,
    pub selected: u32,
    pub synced: u32,
    /// Selected namespaces holding a Secret of that name regbridge does not
    /// manage: the planner's and the writer's finds together.
    pub conflicts: BTreeSet<String>,
}

/// What the writer reported, reduced to what the verdict needs.
pub struct Written<'a> {
    /// Namespaces where a create met a Secret regbridge does not manage.
    pub foreign: &'a [String],
    /// The namespace of each failed write.
    pub failed: Vec<&'a str>,
    /// The first failure, in a line.
    pub first_error: Option<String>,
}

pub fn distribution(
    secret_name: &str,
    selected: &[String],
    planned_conflicts: &[String],
    written: &Written<'_>,
) -> Distribution {
    let mut conflicts: BTreeSet<String> = planned_conflicts.iter().cloned().collect();
    conflicts.extend(written.foreign.iter().cloned());
    let failed: BTreeSet<&str> = written.failed.iter().copied().collect();
    let synced = selected
        .iter()
        .filter(|ns| !conflicts.contains(*ns) && !failed.contains(ns.as_str()))
        .count() as u32;
    let selected = selected.len() as u32;
    let verdict = if let Some(first) = &written.first_error {
        Verdict::fail(
            "WritesFailed",
            format!(
                "{} writes failed, first: {first}; retrying",
                written.failed.len()
            ),
        )
    } else if !conflicts.is_empty() {
        Verdict::fail(
            "Conflict",
            format!(
                "{} namespace(s) hold a Secret named {secret_name} that this resource does not manage",
                conflicts.len()
            ),
        )
    } else {
        Verdict::ok("Distributed", format!("{synced}/{selected} namespaces"))
    };
    Distribution {
        verdict,
        selected,
        synced,
        conflicts,
    }
}

/// The Event for conflicts not announced before, naming a few of them.
pub fn conflicts_event(
    secret_name: &str,
    announced: &BTreeSet<String>,
    current: &BTreeSet<String>,
) -> Option<String> {
    let new: Vec<&String> = current.difference(announced).collect();
    if new.is_empty() {
        return None;
    }
    let shown: Vec<&str> = new
        .iter()
        .take(EVENT_LISTED_CONFLICTS)
        .map(|s| s.as_str())
        .collect();
    Some(format!(
        "Secret {secret_name} exists in {} namespace(s) and is not managed by this resource: {}{}",
        new.len(),
        shown.join(", "),
        if new.len() > shown.len() { ", ..." } else { "" }
    ))
}

/// When to reconcile again: soon after writes the cache had not caught up
/// with; otherwise at the next refresh or expiry, within the foreign
/// re-check while a foreign Secret is known (those are not watched), and at
/// least once per resync.
pub fn requeue(
    next_wakeup: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    stale: bool,
    foreign: bool,
) -> Duration {
    if stale {
        return STALE_RETRY;
    }
    let mut wait = next_wakeup
        .map(|at| (at - now).to_std().unwrap_or_default().min(RESYNC))
        .unwrap_or(RESYNC);
    if foreign {
        wait = wait.min(FOREIGN_RECHECK);
    }
    wait
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeDelta;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use super::*;
    use crate::decide::entries::Checked;

    fn report(index: usize) -> EntryReport {
        EntryReport {
            index,
            provider: "ecr",
            invalid: false,
            last_error: None,
            refreshed_at: None,
            first_refresh: false,
            expired: Vec::new(),
            note: None,
            verified: BTreeMap::new(),
        }
    }

    fn checked(v: Verification) -> Checked {
        Checked {
            credential: 0,
            verification: v,
            at: Utc::now(),
        }
    }

    #[test]
    fn verification_is_false_on_a_rejection_and_unknown_while_unreachable() {
        assert_eq!(verification(&[report(0)]).reason, "NotChecked");
        let mut ok = report(0);
        ok.verified
            .insert("a.example".into(), checked(Verification::Verified));
        assert!(verification(std::slice::from_ref(&ok)).is_ok());
        let mut down = report(1);
        down.verified.insert(
            "b.example".into(),
            checked(Verification::Unreachable {
                reason: "connection refused".into(),
            }),
        );
        let v = verification(&[ok.clone(), down.clone()]);
        assert_eq!((v.status, v.reason.as_str()), ("Unknown", "Unreachable"));
        let mut bad = report(2);
        bad.verified.insert(
            "c.example".into(),
            checked(Verification::Rejected {
                code: Some("UNAUTHORIZED".into()),
                message: "authentication required".into(),
            }),
        );
        let v = verification(&[ok, down, bad]);
        assert_eq!((v.status, v.reason.as_str()), ("False", "Rejected"));
        assert!(v.message.starts_with("c.example"), "{}", v.message);
    }

    #[test]
    fn the_first_invalid_entry_refuses_the_resource() {
        assert_eq!(invalid_entry(&[report(0)]), None);
        let mut bad = report(1);
        bad.invalid = true;
        bad.last_error = Some("Secret rb/x not found".into());
        let r = invalid_entry(&[report(0), bad]).unwrap();
        assert_eq!(r.reason, "CredentialsInvalid");
        assert_eq!(r.message, "credentials[1] (ecr): Secret rb/x not found");
    }

    #[test]
    fn a_rejection_is_announced_once() {
        assert!(announce_rejection(None, "InvalidSelector"));
        let status = ClusterPullSecretStatus {
            conditions: vec![Condition {
                type_: status::READY.into(),
                status: "False".into(),
                reason: "InvalidSelector".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
            }],
            ..Default::default()
        };
        assert!(!announce_rejection(Some(&status), "InvalidSelector"));
        assert!(announce_rejection(Some(&status), "InvalidRefreshBefore"));
    }

    #[test]
    fn a_credentials_failure_is_announced_once_per_text() {
        let ok = Verdict::ok("Minted", "1 registries");
        assert_eq!(credentials_event(&ok, None), None);
        let failing = Verdict::fail("RefreshFailing", "credentials[0] (ecr): timed out");
        let (reason, text) = credentials_event(&failing, None).unwrap();
        assert_eq!(
            (reason, text.as_str()),
            ("RefreshFailed", "credentials[0] (ecr): timed out")
        );
        assert_eq!(credentials_event(&failing, Some(&text)), None);
        let expired = Verdict::fail(status::EXPIRED, "registry a expired");
        assert_eq!(
            credentials_event(&expired, Some(&text)).unwrap().0,
            status::EXPIRED
        );
    }

    #[test]
    fn distribution_counts_synced_namespaces_and_names_the_first_failure() {
        let selected: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let clean = distribution(
            "regcred",
            &selected,
            &[],
            &Written {
                foreign: &[],
                failed: vec![],
                first_error: None,
            },
        );
        assert_eq!((clean.selected, clean.synced), (4, 4));
        assert_eq!(clean.verdict.message, "4/4 namespaces");

        let foreign = vec!["b".to_string()];
        let conflicted = distribution(
            "regcred",
            &selected,
            &["a".into()],
            &Written {
                foreign: &foreign,
                failed: vec![],
                first_error: None,
            },
        );
        assert_eq!(conflicted.synced, 2);
        assert_eq!(
            conflicted.conflicts,
            BTreeSet::from(["a".into(), "b".into()])
        );
        assert_eq!(conflicted.verdict.reason, "Conflict");

        let failed = distribution(
            "regcred",
            &selected,
            &["a".into()],
            &Written {
                foreign: &[],
                failed: vec!["c", "c"],
                first_error: Some("create Secret c/regcred: Forbidden (403)".into()),
            },
        );
        assert_eq!(failed.synced, 2);
        assert_eq!(failed.verdict.reason, "WritesFailed");
        assert!(
            failed
                .verdict
                .message
                .starts_with("2 writes failed, first: create Secret c/regcred")
        );
    }

    #[test]
    fn only_new_conflicts_are_announced_and_few_are_named() {
        let announced = BTreeSet::from(["a".to_string()]);
        assert_eq!(conflicts_event("regcred", &announced, &announced), None);
        let current: BTreeSet<String> = (0..7)
            .map(|i| format!("ns{i}"))
            .chain(["a".into()])
            .collect();
        let text = conflicts_event("regcred", &announced, &current).unwrap();
        assert!(
            text.starts_with("Secret regcred exists in 7 namespace(s)"),
            "{text}"
        );
        assert!(text.ends_with("ns0, ns1, ns2, ns3, ns4, ..."), "{text}");
        assert!(!text.contains(" a,"), "{text}");
    }

    #[test]
    fn requeue_follows_the_earliest_need() {
        let now = Utc::now();
        assert_eq!(requeue(None, now, false, false), RESYNC);
        assert_eq!(requeue(None, now, true, false), STALE_RETRY);
        let soon = now + TimeDelta::seconds(90);
        assert_eq!(
            requeue(Some(soon), now, false, false),
            Duration::from_secs(90)
        );
        assert_eq!(requeue(Some(soon), now, false, true), FOREIGN_RECHECK);
        let late = now + TimeDelta::days(3);
        assert_eq!(requeue(Some(late), now, false, false), RESYNC);
        // A wakeup already past is due at once.
        assert_eq!(
            requeue(Some(now - TimeDelta::seconds(5)), now, false, false),
            Duration::ZERO
        );
    }
}
