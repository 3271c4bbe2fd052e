//! What both ways to a Google access token share: the token and its
//! expiry, computed without overflow from a lifetime in seconds.

use chrono::{DateTime, Utc};

use crate::Redacted;

pub(super) const NAME: &str = "gar";
pub(super) const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// An access token and the moment it stops working.
#[derive(Debug)]
pub(super) struct AccessToken {
    pub(super) value: Redacted<String>,
    pub(super) expires_at: DateTime<Utc>,
}

/// Now plus a lifetime in seconds that a server reported; `None` when it
/// does not fit.
pub(super) fn expiry_in(seconds: i64) -> Option<DateTime<Utc>> {
    Utc::now().checked_add_signed(chrono::TimeDelta::try_seconds(seconds)?)
}
