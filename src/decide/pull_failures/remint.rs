//! How often a pull failure may cost a re-mint: once a minute per
//! resource and host, however many Events arrive.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};

/// How often an auth failure may trigger a re-mint of one host.
pub const REMINT_INTERVAL: Duration = Duration::minutes(1);

/// Whether a re-mint may start now, given when the last one was triggered.
pub fn remint_due(last: Option<DateTime<Utc>>, now: DateTime<Utc>, interval: Duration) -> bool {
    last.is_none_or(|t| now - t >= interval || now < t)
}

/// Last re-mint trigger per (resource, host), so that a burst of failing
/// pods costs one mint per host per interval. Kept in the `Context`.
#[derive(Debug)]
pub struct RemintGate {
    interval: Duration,
    last: HashMap<(String, String), DateTime<Utc>>,
}

impl RemintGate {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: HashMap::new(),
        }
    }

    /// True, and records `now`, when the host may be re-minted. Forgets
    /// entries older than the interval, so the map stays as small as the
    /// set of hosts failing right now.
    pub fn try_trigger(&mut self, resource: &str, host: &str, now: DateTime<Utc>) -> bool {
        let interval = self.interval;
        self.last
            .retain(|_, t| !remint_due(Some(*t), now, interval));
        let key = (resource.to_string(), host.to_string());
        if remint_due(self.last.get(&key).copied(), now, interval) {
            self.last.insert(key, now);
            true
        } else {
            false
        }
    }
}

impl Default for RemintGate {
    fn default() -> Self {
        Self::new(REMINT_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn remint_is_triggered_at_most_once_a_minute_per_host() {
        let mut gate = RemintGate::default();
        assert!(gate.try_trigger("main", "reg.example.com", t(0)));
        assert!(!gate.try_trigger("main", "reg.example.com", t(59)));
        assert!(
            gate.try_trigger("main", "quay.io", t(59)),
            "hosts are independent"
        );
        assert!(
            gate.try_trigger("other", "reg.example.com", t(59)),
            "resources too"
        );
        assert!(gate.try_trigger("main", "reg.example.com", t(60)));
        assert!(!gate.try_trigger("main", "reg.example.com", t(61)));
    }

    #[test]
    fn remint_gate_forgets_quiet_hosts() {
        let mut gate = RemintGate::default();
        for i in 0..100 {
            gate.try_trigger("main", &format!("h{i}"), t(0));
        }
        gate.try_trigger("main", "h0", t(120));
        assert_eq!(gate.last.len(), 1);
    }

    #[test]
    fn remint_due_allows_a_clock_that_went_backwards() {
        assert!(remint_due(None, t(0), REMINT_INTERVAL));
        assert!(remint_due(Some(t(100)), t(0), REMINT_INTERVAL));
    }
}
