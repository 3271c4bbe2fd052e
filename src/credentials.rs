//! The credentials of one resource: a provider per `credentials:` entry, the
//! last good mint of each, and when each is due again. One mint per entry per
//! refresh, shared by every namespace.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use regbridge_providers::spec::CredentialSpec;
use regbridge_providers::{BuildContext, Cluster, Provider, ProviderError, RegistryCredential};

use crate::compose::EntryCredentials;
use crate::refresh::{backoff, next_refresh, sane_expiry};

struct Entry {
    spec: CredentialSpec,
    provider: Box<dyn Provider>,
    last_good: Vec<RegistryCredential>,
    next_refresh: Option<DateTime<Utc>>,
    failures: u32,
    /// A failure that a fix to the spec or its Secret must resolve, as opposed
    /// to a remote failure that a retry may resolve.
    invalid: bool,
    last_error: Option<String>,
    refreshed_at: Option<DateTime<Utc>>,
}

impl Entry {
    fn new(spec: &CredentialSpec, ctx: &BuildContext) -> Result<Self, ProviderError> {
        Ok(Self {
            provider: regbridge_providers::build(spec, ctx)?,
            spec: spec.clone(),
            last_good: Vec::new(),
            next_refresh: None,
            failures: 0,
            invalid: false,
            last_error: None,
            refreshed_at: None,
        })
    }

    /// Static entries read a cached Secret, so they are re-read every time;
    /// the others wait for their schedule.
    fn due(&self, now: DateTime<Utc>) -> bool {
        matches!(self.spec, CredentialSpec::Static(_))
            || self.next_refresh.is_none_or(|at| now >= at)
    }
}

/// One refresh attempt, for metrics and logs.
pub struct Attempt {
    pub provider: &'static str,
    pub ok: bool,
    pub elapsed: Duration,
    /// The provider reported an expiry in the past or absurdly near.
    pub clamped_expiry: bool,
}

/// An entry's state, for status.
pub struct EntryReport {
    pub index: usize,
    pub provider: &'static str,
    pub invalid: bool,
    pub last_error: Option<String>,
    pub refreshed_at: Option<DateTime<Utc>>,
    pub serving: bool,
    pub note: Option<String>,
}

#[derive(Default)]
pub struct Credentials {
    entries: Vec<Entry>,
}

impl Credentials {
    /// Keeps the state of entries whose spec is unchanged; builds the rest.
    /// An entry that cannot be built fails the whole update, naming it.
    pub fn update_specs(
        &mut self,
        specs: &[CredentialSpec],
        ctx: &BuildContext,
    ) -> Result<(), (usize, ProviderError)> {
        let mut old = std::mem::take(&mut self.entries);
        let mut fresh = Vec::with_capacity(specs.len());
        for (index, spec) in specs.iter().enumerate() {
            match old.iter().position(|e| &e.spec == spec) {
                Some(i) => fresh.push(old.swap_remove(i)),
                None => match Entry::new(spec, ctx) {
                    Ok(e) => fresh.push(e),
                    Err(err) => {
                        // Keep what we had, so a broken edit loses no state.
                        old.extend(fresh);
                        self.entries = old;
                        return Err((index, err));
                    }
                },
            }
        }
        self.entries = fresh;
        Ok(())
    }

    /// Mints every entry that is due. Failures keep the last good credential.
    pub async fn refresh_due(
        &mut self,
        cluster: &dyn Cluster,
        now: DateTime<Utc>,
        refresh_before: Option<Duration>,
        jitter: &mut (dyn FnMut() -> f64 + Send),
    ) -> Vec<Attempt> {
        let mut attempts = Vec::new();
        for entry in self.entries.iter_mut().filter(|e| e.due(now)) {
            let started = Instant::now();
            let result = entry.provider.mint(cluster).await;
            let mut attempt = Attempt {
                provider: entry.spec.kind(),
                ok: result.is_ok(),
                elapsed: started.elapsed(),
                clamped_expiry: false,
            };
            match result {
                Ok(mut creds) => {
                    let mut soonest: Option<DateTime<Utc>> = None;
                    for c in &mut creds {
                        if let Some(reported) = c.expires_at {
                            let (expiry, clamped) = sane_expiry(now, reported);
                            attempt.clamped_expiry |= clamped;
                            c.expires_at = Some(expiry);
                            soonest = Some(soonest.map_or(expiry, |s| s.min(expiry)));
                        }
                    }
                    if entry.last_good != creds || entry.refreshed_at.is_none() || soonest.is_some()
                    {
                        entry.refreshed_at = Some(now);
                    }
                    entry.last_good = creds;
                    entry.failures = 0;
                    entry.invalid = false;
                    entry.last_error = None;
                    entry.next_refresh =
                        soonest.map(|exp| next_refresh(now, exp, refresh_before, jitter()));
                }
                Err(err) => {
                    entry.failures += 1;
                    entry.invalid = !matches!(
                        err,
                        ProviderError::Remote { .. } | ProviderError::Timeout { .. }
                    );
                    if entry.invalid {
                        entry.last_good.clear();
                    }
                    entry.last_error = Some(err.to_string());
                    entry.next_refresh = Some(
                        now + chrono::TimeDelta::from_std(backoff(entry.failures))
                            .unwrap_or_default(),
                    );
                }
            }
            attempts.push(attempt);
        }
        attempts
    }

    /// What to compose now: each entry's last good credentials, less those
    /// that have expired (an expired token is never distributed).
    pub fn current(&self, now: DateTime<Utc>) -> Vec<(&'static str, Vec<RegistryCredential>)> {
        self.entries
            .iter()
            .map(|e| {
                let live = e
                    .last_good
                    .iter()
                    .filter(|c| c.expires_at.is_none_or(|exp| exp > now))
                    .cloned()
                    .collect();
                (e.spec.kind(), live)
            })
            .collect()
    }

    pub fn reports(&self, now: DateTime<Utc>) -> Vec<EntryReport> {
        self.entries
            .iter()
            .enumerate()
            .map(|(index, e)| EntryReport {
                index,
                provider: e.spec.kind(),
                invalid: e.invalid,
                last_error: e.last_error.clone(),
                refreshed_at: e.refreshed_at,
                serving: e
                    .last_good
                    .iter()
                    .any(|c| c.expires_at.is_none_or(|exp| exp > now)),
                note: e.provider.status_note(),
            })
            .collect()
    }

    /// The earliest time any entry wants to mint again.
    pub fn next_wakeup(&self) -> Option<DateTime<Utc>> {
        self.entries
            .iter()
            .filter(|e| !matches!(e.spec, CredentialSpec::Static(_)))
            .filter_map(|e| e.next_refresh)
            .min()
    }

    /// Removes what the providers created outside the cluster (Harbor robots).
    pub async fn cleanup(&self, cluster: &dyn Cluster) -> Vec<ProviderError> {
        let mut errors = Vec::new();
        for e in &self.entries {
            if let Err(err) = e.provider.cleanup(cluster).await {
                errors.push(err);
            }
        }
        errors
    }
}

/// Borrows the current credentials in the shape `compose` takes.
pub fn as_entries<'a>(
    current: &'a [(&'static str, Vec<RegistryCredential>)],
) -> Vec<EntryCredentials<'a>> {
    current
        .iter()
        .map(|(provider, credentials)| EntryCredentials {
            provider,
            credentials,
        })
        .collect()
}
