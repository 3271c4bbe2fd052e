//! What minting reports about each `credentials:` entry: the state status
//! is built from, one attempt's facts for metrics and Events, and the record
//! a new process takes the credentials over from. Plain data, so decisions
//! read it without reaching into the minting state itself.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use regbridge_providers::Verification;

/// One registry handshake's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// A digest of the credential checked: an unchanged one is not
    /// checked again.
    pub credential: u64,
    pub verification: Verification,
    pub at: DateTime<Utc>,
}

/// One refresh attempt, for metrics and logs.
pub struct Attempt {
    pub provider: &'static str,
    pub ok: bool,
    pub elapsed: Duration,
    /// The provider reported an expiry in the past.
    pub clamped_expiry: bool,
    /// The credential came back too near its expiry for the usual schedule.
    pub short_lived: bool,
    /// Handshakes made in this attempt: host and result.
    pub verified: Vec<(String, &'static str)>,
    /// The registry rejected the new credential, and it was not taken.
    pub rejected: Option<String>,
}

/// An entry's state, for status.
#[derive(Clone, Debug)]
pub struct EntryReport {
    pub index: usize,
    pub provider: &'static str,
    pub invalid: bool,
    pub last_error: Option<String>,
    pub refreshed_at: Option<DateTime<Utc>>,
    /// `refreshed_at` is this process's first mint.
    pub first_refresh: bool,
    /// Hosts whose last good credential has expired, with when: they are
    /// no longer distributed.
    pub expired: Vec<(String, DateTime<Utc>)>,
    pub note: Option<String>,
    pub verified: BTreeMap<String, Checked>,
}

/// What an entry last distributed, kept on the composed Secret (annotation
/// [`crate::api::labels::MINTED`]) so a new process (a restart, a failover) can
/// take it over instead of minting again. The credentials themselves are
/// the Secret's own payload; this says which entry, which spec, and when.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MintRecord {
    pub entry: usize,
    /// The entry's spec as JSON: a record of another spec is not taken over.
    pub spec: String,
    pub hosts: Vec<String>,
    pub minted_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}
