//! When to mint again. Pure functions of the clock, so margins, jitter
//! bounds, backoff and bad-expiry handling are tested without waiting.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// Never schedule a refresh sooner than this after a mint: a provider that
/// keeps returning nearly expired tokens must not make the controller spin.
pub const MIN_INTERVAL: Duration = Duration::from_secs(30);
/// An expiry closer than this (or in the past) is bad data, not a real
/// lifetime: it is replaced by `now + CLAMPED_LIFETIME`.
pub const ABSURD_LIFETIME: Duration = Duration::from_secs(60);
pub const CLAMPED_LIFETIME: Duration = Duration::from_secs(15 * 60);
pub const BACKOFF_START: Duration = Duration::from_secs(5);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RefreshError {
    #[error("refreshBefore {0:?} is not a duration like 30m or 1h30m")]
    BadDuration(String),
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// `30s`, `45m`, `12h`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, RefreshError> {
    let bad = || RefreshError::BadDuration(text.to_owned());
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().map_err(|_| bad())?;
        number.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
    }
    if !number.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// The expiry to act on, and whether the reported one was bad data.
pub fn sane_expiry(now: DateTime<Utc>, reported: DateTime<Utc>) -> (DateTime<Utc>, bool) {
    if reported < now + delta(ABSURD_LIFETIME) {
        (now + delta(CLAMPED_LIFETIME), true)
    } else {
        (reported, false)
    }
}

/// When to refresh a credential expiring at `expires`: `refresh_before` ahead
/// of it, or by default at half the remaining lifetime. `jitter` in [-1, 1]
/// moves that point by up to 10 % of the wait, so many resources minted
/// together do not refresh together.
pub fn next_refresh(
    now: DateTime<Utc>,
    expires: DateTime<Utc>,
    refresh_before: Option<Duration>,
    jitter: f64,
) -> DateTime<Utc> {
    let remaining = expires - now;
    let wait = match refresh_before {
        Some(margin) => remaining - delta(margin),
        None => remaining / 2,
    };
    let jitter = jitter.clamp(-1.0, 1.0) * 0.1;
    let jittered = wait + TimeDelta::milliseconds((wait.num_milliseconds() as f64 * jitter) as i64);
    now + jittered.max(delta(MIN_INTERVAL))
}

/// Wait after the `failures`-th consecutive failure: 5 s doubling to 5 min.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    BACKOFF_START.saturating_mul(1 << exp).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T00:00:00Z")
            .unwrap()
            .to_utc()
    }

    #[test]
    fn default_margin_is_half_the_remaining_lifetime() {
        let at = next_refresh(t0(), t0() + TimeDelta::hours(12), None, 0.0);
        assert_eq!(at, t0() + TimeDelta::hours(6));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let lo = next_refresh(t0(), t0() + TimeDelta::hours(12), None, -1.0);
        let hi = next_refresh(t0(), t0() + TimeDelta::hours(12), None, 1.0);
        assert_eq!(lo, t0() + TimeDelta::minutes(324));
        assert_eq!(hi, t0() + TimeDelta::minutes(396));
        let wild = next_refresh(t0(), t0() + TimeDelta::hours(12), None, 7.0);
        assert_eq!(wild, hi, "jitter is clamped");
    }

    #[test]
    fn refresh_before_overrides_the_margin() {
        let at = next_refresh(
            t0(),
            t0() + TimeDelta::hours(1),
            Some(Duration::from_secs(600)),
            0.0,
        );
        assert_eq!(at, t0() + TimeDelta::minutes(50));
    }

    #[test]
    fn never_sooner_than_the_minimum_interval() {
        let at = next_refresh(
            t0(),
            t0() + TimeDelta::seconds(20),
            Some(Duration::from_secs(3600)),
            0.0,
        );
        assert_eq!(at, t0() + delta(MIN_INTERVAL));
    }

    #[test]
    fn past_or_absurd_expiry_is_clamped_and_flagged() {
        let past = DateTime::parse_from_rfc3339("2015-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            sane_expiry(t0(), past),
            (t0() + delta(CLAMPED_LIFETIME), true)
        );
        let soon = t0() + TimeDelta::seconds(10);
        assert!(sane_expiry(t0(), soon).1);
        let fine = t0() + TimeDelta::minutes(5);
        assert_eq!(sane_expiry(t0(), fine), (fine, false));
    }

    #[test]
    fn backoff_doubles_from_five_seconds_to_five_minutes() {
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(1000), BACKOFF_MAX);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("45s").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }
}
