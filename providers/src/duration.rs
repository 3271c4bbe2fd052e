//! The one duration format of the CRD, for `refreshBefore` and Harbor's
//! `rotateEvery`: a sum of whole seconds, minutes and hours such as `30m`,
//! `1h30m` or `24h`. The CRD's pattern bounds the shape only; the size is
//! bounded here, so no value the API server accepts can overflow the
//! scheduler's arithmetic.

use std::time::Duration;

/// The CRD's pattern for these fields; a test keeps the schema equal to it.
pub const PATTERN: &str = r"^([0-9]+(s|m|h))+$";
/// The CRD's `maxLength` for these fields.
pub const MAX_LENGTH: u32 = 32;
/// The longest duration accepted: a year.
pub const MAX: Duration = Duration::from_secs(8760 * 3600);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("{0:?} is not a duration like 30m, 1h30m or 24h (whole s, m and h, at least 1s)")]
    Format(String),
    #[error("{0:?} is longer than the maximum of 8760h")]
    TooLong(String),
}

/// Parses `text`, refusing anything outside [1 s, 8760 h].
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let format = || DurationError::Format(text.to_owned());
    let too_long = || DurationError::TooLong(text.to_owned());
    if text.len() > MAX_LENGTH as usize {
        return Err(format());
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(format()),
        };
        if number.is_empty() {
            return Err(format());
        }
        // Digits beyond u64 are too long, not malformed: the shape is right.
        let n: u64 = number.parse().map_err(|_| too_long())?;
        number.clear();
        total = n
            .checked_mul(unit)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(too_long)?;
    }
    if !number.is_empty() || text.is_empty() {
        return Err(format());
    }
    match Duration::from_secs(total) {
        d if d.is_zero() => Err(format()),
        d if d > MAX => Err(too_long()),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_of_seconds_minutes_and_hours_parse() {
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse("8760h"), Ok(MAX));
    }

    #[test]
    fn what_the_pattern_refuses_is_refused() {
        for bad in ["", "10", "5x", "7d", "1h ", "-1h", "0s", "h"] {
            assert_eq!(
                parse(bad),
                Err(DurationError::Format(bad.into())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn what_the_pattern_accepts_but_is_too_long_is_refused() {
        for long in [
            "8761h",
            "9000000000000000s",
            "99999999999999999999s",
            "9000000000000000000h",
        ] {
            assert_eq!(
                parse(long),
                Err(DurationError::TooLong(long.into())),
                "{long:?}"
            );
        }
        let wide = "1s".repeat(17);
        assert_eq!(parse(&wide), Err(DurationError::Format(wide.clone())));
    }
}
