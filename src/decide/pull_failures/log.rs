//! The capped list of recent pull failures a resource's status shows.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::api::crd::{PullFailureStatus, rfc3339};

/// One entry of `status.pullFailures`. No credential can be in it: the
/// reason is a fixed text, and the image and detail are sanitised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PullFailure {
    pub namespace: String,
    pub pod: String,
    pub image: String,
    /// The dockerconfigjson key kubelet would have used: the same name the
    /// status lists the host under, and what recovery re-mints.
    pub host: String,
    pub time: DateTime<Utc>,
    /// Short, fixed: [`AuthReason::as_str`](super::classify::AuthReason::as_str).
    pub reason: String,
    /// The runtime's error, sanitised and truncated, for the log and the
    /// Event; status may show it.
    pub detail: String,
    /// The likeliest cause, when the controller can tell (filled in by the
    /// I/O layer, which can read the pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<String>,
}

/// How many failures `status.pullFailures` keeps.
pub const PULL_FAILURES_CAP: usize = 20;

/// `status.pullFailures` and its count: newest first, at most `cap`
/// entries, one per (namespace, pod, image).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullFailureLog {
    /// Failures seen since the resource was created (or the controller
    /// started, if status was lost).
    pub total: u64,
    pub recent: VecDeque<PullFailure>,
}

impl PullFailureLog {
    /// Records a failure. The kubelet repeats the same Event with a new
    /// `lastTimestamp` on every retry: each repeat counts and moves the
    /// entry to the front. A watch relist redelivers Events unchanged: an
    /// entry with the same time is not counted again. Returns whether
    /// anything changed, so that status is written only then.
    pub fn record(&mut self, failure: PullFailure, cap: usize) -> bool {
        let same_pull = |f: &PullFailure| {
            f.namespace == failure.namespace && f.pod == failure.pod && f.image == failure.image
        };
        if let Some(i) = self.recent.iter().position(same_pull) {
            if self.recent[i].time >= failure.time {
                return false;
            }
            self.recent.remove(i);
        }
        self.total += 1;
        let at = self
            .recent
            .iter()
            .position(|f| f.time <= failure.time)
            .unwrap_or(self.recent.len());
        self.recent.insert(at, failure);
        self.recent.truncate(cap);
        true
    }
}

impl From<&PullFailure> for PullFailureStatus {
    fn from(f: &PullFailure) -> Self {
        Self {
            namespace: f.namespace.clone(),
            pod: f.pod.clone(),
            image: f.image.clone(),
            host: f.host.clone(),
            time: rfc3339(f.time),
            reason: f.reason.clone(),
            detail: f.detail.clone(),
            diagnosis: f.diagnosis.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::decide::pull_failures::classify::AuthReason::Unauthorized;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    fn failure(pod: &str, at: i64) -> PullFailure {
        PullFailure {
            namespace: "ns".into(),
            pod: pod.into(),
            image: "reg.example.com/app:1".into(),
            host: "reg.example.com".into(),
            time: t(at),
            reason: Unauthorized.as_str().into(),
            detail: String::new(),
            diagnosis: None,
        }
    }

    fn pods(log: &PullFailureLog) -> Vec<&str> {
        log.recent.iter().map(|f| f.pod.as_str()).collect()
    }

    #[test]
    fn list_is_newest_first_and_capped_with_a_total() {
        let mut log = PullFailureLog::default();
        for i in 0..25 {
            assert!(log.record(failure(&format!("p{i}"), i), PULL_FAILURES_CAP));
        }
        assert_eq!(log.total, 25);
        assert_eq!(log.recent.len(), PULL_FAILURES_CAP);
        assert_eq!(log.recent[0].pod, "p24");
        assert_eq!(log.recent[19].pod, "p5");
    }

    #[test]
    fn a_repeated_event_moves_to_the_front_and_counts_again() {
        let mut log = PullFailureLog::default();
        log.record(failure("a", 1), 20);
        log.record(failure("b", 2), 20);
        assert!(log.record(failure("a", 3), 20));
        assert_eq!(pods(&log), ["a", "b"]);
        assert_eq!(log.total, 3);
    }

    #[test]
    fn a_redelivered_event_is_not_counted_twice() {
        let mut log = PullFailureLog::default();
        log.record(failure("a", 5), 20);
        assert!(!log.record(failure("a", 5), 20));
        assert!(!log.record(failure("a", 4), 20), "older than what we have");
        assert_eq!(log.total, 1);
    }

    #[test]
    fn a_late_event_is_placed_by_its_time() {
        let mut log = PullFailureLog::default();
        log.record(failure("new", 10), 20);
        log.record(failure("old", 1), 20);
        assert_eq!(pods(&log), ["new", "old"]);
    }
}
