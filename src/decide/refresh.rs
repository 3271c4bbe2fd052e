//! When to mint again. Pure functions of the clock, so margins, jitter
//! bounds, backoff and bad-expiry handling are tested without waiting.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// A credential with a normal lifetime is never refreshed sooner than this
/// after a mint.
pub const MIN_INTERVAL: Duration = Duration::from_secs(30);
/// An expiry that is already past is bad data, not a real lifetime (moto
/// reports 2015): it is replaced by `now + CLAMPED_LIFETIME`.
pub const CLAMPED_LIFETIME: Duration = Duration::from_secs(15 * 60);
pub const BACKOFF_START: Duration = Duration::from_secs(5);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// The expiry to act on, and whether the reported one was bad data. Any
/// future expiry is the truth, however near: the GKE metadata server hands
/// out the same token until about five minutes before it expires, and
/// gcp_auth keeps its cached one until 20 s before. Only a past one (or one
/// before the mint began, which is past too) is replaced.
pub fn sane_expiry(now: DateTime<Utc>, reported: DateTime<Utc>) -> (DateTime<Utc>, bool) {
    if reported <= now {
        (now + delta(CLAMPED_LIFETIME), true)
    } else {
        (reported, false)
    }
}

/// When to mint again, and whether the credential came back too near its
/// expiry for the usual schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub at: DateTime<Utc>,
    pub short: bool,
}

/// When to refresh a credential expiring at `expires`: `refresh_before` ahead
/// of it, or by default at half the remaining lifetime. `jitter` in [-1, 1]
/// moves that point by up to 10 % of the wait, so many resources minted
/// together do not refresh together.
///
/// A wait under [`MIN_INTERVAL`] means the provider handed back a nearly
/// expired credential: it is asked again soon, but no sooner than the
/// failure backoff for `short_streak` such answers in a row (5 s doubling to
/// 5 min), so a provider that keeps doing it never makes the controller spin.
pub fn next_refresh(
    now: DateTime<Utc>,
    expires: DateTime<Utc>,
    refresh_before: Option<Duration>,
    jitter: f64,
    short_streak: u32,
) -> Schedule {
    let remaining = expires.signed_duration_since(now);
    let wait = match refresh_before {
        // A margin past every representable time: refresh as soon as allowed.
        Some(margin) => remaining
            .checked_sub(&delta(margin))
            .unwrap_or(TimeDelta::MIN),
        None => remaining / 2,
    };
    let jitter = jitter.clamp(-1.0, 1.0) * 0.1;
    let shift = TimeDelta::milliseconds((wait.num_milliseconds() as f64 * jitter) as i64);
    let jittered = wait.checked_add(&shift).unwrap_or(wait);
    let short = jittered < delta(MIN_INTERVAL);
    let wait = if short {
        jittered.max(delta(backoff(short_streak.saturating_add(1))))
    } else {
        jittered
    };
    Schedule {
        at: now
            .checked_add_signed(wait)
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
        short,
    }
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
        let at = next_refresh(t0(), t0() + TimeDelta::hours(12), None, 0.0, 0).at;
        assert_eq!(at, t0() + TimeDelta::hours(6));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let lo = next_refresh(t0(), t0() + TimeDelta::hours(12), None, -1.0, 0).at;
        let hi = next_refresh(t0(), t0() + TimeDelta::hours(12), None, 1.0, 0).at;
        assert_eq!(lo, t0() + TimeDelta::minutes(324));
        assert_eq!(hi, t0() + TimeDelta::minutes(396));
        let wild = next_refresh(t0(), t0() + TimeDelta::hours(12), None, 7.0, 0).at;
        assert_eq!(wild, hi, "jitter is clamped");
    }

    #[test]
    fn refresh_before_overrides_the_margin() {
        let at = next_refresh(
            t0(),
            t0() + TimeDelta::hours(1),
            Some(Duration::from_secs(600)),
            0.0,
            0,
        );
        assert_eq!(
            at,
            Schedule {
                at: t0() + TimeDelta::minutes(50),
                short: false
            }
        );
    }

    #[test]
    fn a_nearly_expired_credential_is_retried_soon_with_growing_gaps() {
        // A 30 s token: half its lifetime, not 15 minutes and not 30 s.
        let first = next_refresh(t0(), t0() + TimeDelta::seconds(30), None, 0.0, 0);
        assert_eq!(first.at, t0() + TimeDelta::seconds(15));
        assert!(first.short);
        // The same token again and again: never closer than the backoff.
        let gaps: Vec<i64> = (0..8)
            .map(|streak| {
                let s = next_refresh(t0(), t0() + TimeDelta::seconds(4), None, 0.0, streak);
                (s.at - t0()).num_seconds()
            })
            .collect();
        assert_eq!(gaps, [5, 10, 20, 40, 80, 160, 300, 300]);
        // A margin longer than the lifetime is the same case.
        let s = next_refresh(
            t0(),
            t0() + TimeDelta::seconds(20),
            Some(Duration::from_secs(3600)),
            0.0,
            0,
        );
        assert_eq!((s.at, s.short), (t0() + TimeDelta::seconds(5), true));
    }

    #[test]
    fn a_normal_lifetime_is_not_short() {
        let s = next_refresh(t0(), t0() + TimeDelta::minutes(2), None, 0.0, 3);
        assert_eq!((s.at, s.short), (t0() + TimeDelta::minutes(1), false));
    }

    #[test]
    fn extreme_margins_and_expiries_do_not_panic() {
        let huge = Duration::from_secs(9_000_000_000_000_000);
        let s = next_refresh(t0(), t0() + TimeDelta::hours(1), Some(huge), 1.0, u32::MAX);
        assert_eq!(s.at, t0() + TimeDelta::from_std(BACKOFF_MAX).unwrap());
        let far = next_refresh(t0(), DateTime::<Utc>::MAX_UTC, None, 1.0, 0);
        assert!(far.at > t0() && !far.short);
        let past = next_refresh(t0(), DateTime::<Utc>::MIN_UTC, Some(huge), -1.0, 0);
        assert!(past.short);
    }

    #[test]
    fn only_a_past_expiry_is_clamped() {
        let past = DateTime::parse_from_rfc3339("2015-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            sane_expiry(t0(), past),
            (t0() + delta(CLAMPED_LIFETIME), true)
        );
        assert!(sane_expiry(t0(), t0()).1);
        let soon = t0() + TimeDelta::seconds(10);
        assert_eq!(
            sane_expiry(t0(), soon),
            (soon, false),
            "near is not bad data"
        );
        let fine = t0() + TimeDelta::minutes(5);
        assert_eq!(sane_expiry(t0(), fine), (fine, false));
    }

    #[test]
    fn backoff_doubles_from_five_seconds_to_five_minutes() {
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(1000), BACKOFF_MAX);
    }

    proptest::proptest! {
        /// Whatever a spec or a provider says, parsing and scheduling
        /// answer without panicking, and never schedule into the past.
        #[test]
        fn any_margin_expiry_and_jitter_schedule_without_panicking(
            text in "([0-9]{1,25}[smh]){1,4}|\\PC{0,40}",
            margin in proptest::prelude::any::<u64>(),
            offset in proptest::prelude::any::<i64>(),
            jitter in proptest::prelude::any::<f64>(),
            streak in proptest::prelude::any::<u32>(),
        ) {
            let parsed = regbridge_providers::duration::parse(&text);
            let margin = parsed.ok().or(Some(Duration::from_secs(margin)));
            let expires = TimeDelta::try_seconds(offset)
                .and_then(|d| t0().checked_add_signed(d))
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            let (expires, _) = sane_expiry(t0(), expires);
            let at = next_refresh(t0(), expires, margin, jitter, streak).at;
            proptest::prop_assert!(at > t0());
            let _ = backoff(streak);
        }
    }
}
