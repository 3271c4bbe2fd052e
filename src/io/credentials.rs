//! The credentials of one resource: a provider per `credentials:` entry, the
//! last good mint of each, and when each is due again. One mint per entry per
//! refresh, shared by every namespace.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use regbridge_providers::spec::CredentialSpec;
use regbridge_providers::{
    BuildContext, Cluster, Provider, ProviderError, RegistryCredential, TrustError, Verification,
    Verifier, VerifyError,
};

use regbridge_providers::registry::key;

use crate::decide::compose::EntryCredentials;
use crate::decide::entries::{Attempt, Checked, EntryReport, MintRecord};
use crate::decide::refresh::{backoff, next_refresh, sane_expiry};

/// A reconcile meant to drop an expired credential runs this long after the
/// expiry, so the credential has expired by the clock it reads.
const EXPIRY_SLACK: chrono::TimeDelta = chrono::TimeDelta::milliseconds(500);

struct Entry {
    spec: CredentialSpec,
    provider: Box<dyn Provider>,
    last_good: Vec<RegistryCredential>,
    next_refresh: Option<DateTime<Utc>>,
    failures: u32,
    /// Mints in a row that came back too near their expiry for the usual
    /// schedule: each makes the next retry wait longer.
    short_streak: u32,
    /// A failure that a fix to the spec or its Secret must resolve, as opposed
    /// to a remote failure that a retry may resolve.
    invalid: bool,
    last_error: Option<String>,
    refreshed_at: Option<DateTime<Utc>>,
    /// `refreshed_at` is this process's first mint: the credential may have
    /// been distributed long before, by an earlier process.
    first_refresh: bool,
    /// The registry's answer per host, and for which credential (a digest),
    /// so an unchanged credential is not verified again on every read.
    verified: BTreeMap<String, Checked>,
}

fn credential_digest(c: &RegistryCredential) -> u64 {
    let mut h = DefaultHasher::new();
    (&c.username, c.password.expose()).hash(&mut h);
    h.finish()
}

/// An entry's own CA (`caSecretRef`) could not be read or used: the entry
/// stops until its Secret is fixed.
#[derive(Debug, thiserror::Error)]
enum EntryTrustError {
    #[error(transparent)]
    Read(#[from] TrustError),
    #[error(transparent)]
    Client(#[from] VerifyError),
}

/// How a refresh treats new credentials.
pub struct RefreshOptions<'a> {
    pub refresh_before: Option<Duration>,
    /// `None`: no verification (`verify: Off`, or `mint` without `--verify`).
    pub verifier: Option<&'a Verifier>,
    /// A rejected credential never replaces the last good one.
    pub enforce: bool,
}

impl Entry {
    fn new(spec: &CredentialSpec, ctx: &BuildContext) -> Result<Self, ProviderError> {
        Ok(Self::with_provider(
            spec.clone(),
            regbridge_providers::build(spec, ctx)?,
        ))
    }

    /// An entry that has not minted yet.
    fn with_provider(spec: CredentialSpec, provider: Box<dyn Provider>) -> Self {
        Self {
            provider,
            spec,
            last_good: Vec::new(),
            next_refresh: None,
            failures: 0,
            short_streak: 0,
            invalid: false,
            last_error: None,
            refreshed_at: None,
            first_refresh: false,
            verified: BTreeMap::new(),
        }
    }

    /// The handshake client for this entry: the shared one, plus the
    /// entry's own CA where it has one (`caSecretRef`).
    async fn verifier_for(
        &self,
        shared: &Verifier,
        cluster: &dyn Cluster,
    ) -> Result<Verifier, EntryTrustError> {
        let Some(reference) = self.spec.ca_secret_ref() else {
            return Ok(shared.clone());
        };
        let trust = shared.trust().with_secret(cluster, reference).await?;
        Ok(shared.with_trust(trust)?)
    }

    /// Verifies what changed since the last handshake; returns the first
    /// host the registry rejected, with its answer.
    async fn verify(
        &mut self,
        creds: &[RegistryCredential],
        verifier: &Verifier,
        now: DateTime<Utc>,
    ) -> Option<(String, Verification)> {
        let changed: Vec<RegistryCredential> = creds
            .iter()
            .filter(|c| {
                self.verified
                    .get(&c.host)
                    .is_none_or(|v| v.credential != credential_digest(c))
            })
            .cloned()
            .collect();
        for (c, verification) in changed.iter().zip(verifier.verify_all(&changed).await) {
            self.verified.insert(
                c.host.clone(),
                Checked {
                    credential: credential_digest(c),
                    verification,
                    at: now,
                },
            );
        }
        self.verified
            .retain(|host, _| creds.iter().any(|c| &c.host == host));
        self.verified
            .iter()
            .find(|(_, v)| v.verification.is_rejected())
            .map(|(h, v)| (h.clone(), v.verification.clone()))
    }

    /// Nothing minted or taken over yet (a new process, a new entry).
    fn unminted(&self) -> bool {
        self.refreshed_at.is_none() && self.last_good.is_empty()
    }

    /// Static entries read a cached Secret, so they are re-read every time;
    /// the others wait for their schedule.
    fn due(&self, now: DateTime<Utc>) -> bool {
        matches!(self.spec, CredentialSpec::Static(_))
            || self.next_refresh.is_none_or(|at| now >= at)
    }
}

fn spec_json(spec: &CredentialSpec) -> String {
    serde_json::to_string(spec).unwrap_or_default()
}

#[derive(Default)]
pub struct Credentials {
    entries: Vec<Entry>,
    /// Providers of removed or changed entries whose remote objects (a
    /// Harbor robot) are still to be deleted.
    retired: Vec<Box<dyn Provider>>,
}

impl Credentials {
    /// Keeps the state of entries whose spec is unchanged; builds the rest.
    /// An entry that cannot be built fails the whole update, naming it.
    /// Entries removed or changed are retired: what they created remotely
    /// is deleted by [`Credentials::cleanup_retired`], unless a new entry
    /// manages the same remote object.
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
        let kept: Vec<String> = fresh
            .iter()
            .filter_map(|e| e.provider.remote_object())
            .collect();
        self.retired.extend(
            old.into_iter()
                .map(|e| e.provider)
                .filter(|p| p.remote_object().is_some_and(|o| !kept.contains(&o))),
        );
        self.entries = fresh;
        Ok(())
    }

    /// Builds every entry of `specs` that can be built, for cleanup: a
    /// resource deleted while no process minted for it still has its remote
    /// objects deleted. Entries that cannot be built are returned.
    pub fn build_for_cleanup(
        &mut self,
        specs: &[CredentialSpec],
        ctx: &BuildContext,
    ) -> Vec<(usize, ProviderError)> {
        let mut failed = Vec::new();
        for (index, spec) in specs.iter().enumerate() {
            if self.entries.iter().any(|e| &e.spec == spec) {
                continue;
            }
            match Entry::new(spec, ctx) {
                Ok(e) => self.entries.push(e),
                Err(err) => failed.push((index, err)),
            }
        }
        failed
    }

    /// Whether an entry has nothing minted yet (a new process, a new entry).
    pub fn has_unminted(&self) -> bool {
        self.entries.iter().any(Entry::unminted)
    }

    /// What each entry last distributed, for the composed Secret.
    pub fn records(&self) -> Vec<MintRecord> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(entry, e)| {
                let minted_at = e.refreshed_at?;
                (!e.last_good.is_empty()).then(|| MintRecord {
                    entry,
                    spec: spec_json(&e.spec),
                    hosts: e.last_good.iter().map(|c| c.host.clone()).collect(),
                    minted_at,
                    expires_at: e.last_good.iter().filter_map(|c| c.expires_at).min(),
                })
            })
            .collect()
    }

    /// Takes over what an earlier process distributed: each entry that has
    /// not minted yet and has a record of its own spec gets the record's
    /// credentials (from `distributed`, the composed Secret's payload) and
    /// is scheduled from their expiry as if it had minted them. Its provider
    /// is told too ([`Provider::restore`]). Returns how many were taken over.
    pub fn restore(
        &mut self,
        records: &[MintRecord],
        distributed: &[RegistryCredential],
        now: DateTime<Utc>,
        refresh_before: Option<Duration>,
        jitter: &mut (dyn FnMut() -> f64 + Send),
    ) -> usize {
        let mut restored = 0;
        for (index, entry) in self.entries.iter_mut().enumerate() {
            if !entry.unminted() {
                continue;
            }
            let Some(record) = records
                .iter()
                .find(|r| r.entry == index && r.spec == spec_json(&entry.spec))
            else {
                continue;
            };
            let creds: Option<Vec<RegistryCredential>> = record
                .hosts
                .iter()
                .map(|host| {
                    let c = distributed.iter().find(|c| &c.host == host)?;
                    Some(RegistryCredential {
                        expires_at: record.expires_at,
                        ..c.clone()
                    })
                })
                .collect();
            let Some(creds) = creds.filter(|c| !c.is_empty()) else {
                continue;
            };
            // An expired record is of no use: mint now.
            if record.expires_at.is_some_and(|exp| exp <= now) {
                continue;
            }
            entry.provider.restore(&creds, record.minted_at);
            entry.next_refresh = record
                .expires_at
                .map(|exp| next_refresh(now, exp, refresh_before, jitter(), 0).at);
            entry.refreshed_at = Some(record.minted_at);
            entry.last_good = creds;
            restored += 1;
        }
        restored
    }

    /// Deletes what retired entries created remotely; those that fail are
    /// tried again at the next call.
    pub async fn cleanup_retired(&mut self, cluster: &dyn Cluster) -> Vec<ProviderError> {
        let mut errors = Vec::new();
        let mut still = Vec::new();
        for provider in std::mem::take(&mut self.retired) {
            match provider.cleanup(cluster).await {
                Ok(()) => {}
                Err(err) => {
                    errors.push(err);
                    still.push(provider);
                }
            }
        }
        self.retired = still;
        errors
    }

    /// Mints every entry that is due. Failures keep the last good credential.
    pub async fn refresh_due(
        &mut self,
        cluster: &dyn Cluster,
        now: DateTime<Utc>,
        options: &RefreshOptions<'_>,
        jitter: &mut (dyn FnMut() -> f64 + Send),
    ) -> Vec<Attempt> {
        let mut attempts = Vec::new();
        let refresh_before = options.refresh_before;
        for entry in self.entries.iter_mut().filter(|e| e.due(now)) {
            let started = Instant::now();
            let result = entry.provider.mint(cluster).await;
            let mut attempt = Attempt {
                provider: entry.spec.kind(),
                ok: result.is_ok(),
                elapsed: started.elapsed(),
                clamped_expiry: false,
                short_lived: false,
                verified: Vec::new(),
                rejected: None,
            };
            match result {
                Ok(mut creds) => {
                    if let Some(shared) = options.verifier {
                        let verifier = match entry.verifier_for(shared, cluster).await {
                            Ok(v) => v,
                            Err(e) => {
                                attempt.ok = false;
                                entry.failures += 1;
                                entry.invalid = true;
                                entry.last_error = Some(e.to_string());
                                attempts.push(attempt);
                                continue;
                            }
                        };
                        let before: BTreeMap<String, Checked> = entry.verified.clone();
                        let rejected = entry.verify(&creds, &verifier, now).await;
                        attempt.verified = entry
                            .verified
                            .iter()
                            .filter(|(h, v)| before.get(*h) != Some(*v))
                            .map(|(h, v)| (h.clone(), v.verification.result()))
                            .collect();
                        if let (true, Some((host, answer))) = (options.enforce, rejected) {
                            let message = format!(
                                "registry {host} rejected the new credential ({answer}); the last good one keeps serving"
                            );
                            attempt.ok = false;
                            attempt.rejected = Some(message.clone());
                            entry.failures += 1;
                            entry.last_error = Some(message);
                            entry.next_refresh = Some(
                                now + chrono::TimeDelta::from_std(backoff(entry.failures))
                                    .unwrap_or_default(),
                            );
                            attempts.push(attempt);
                            continue;
                        }
                    }
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
                        entry.first_refresh = entry.refreshed_at.is_none();
                        entry.refreshed_at = Some(now);
                    }
                    entry.last_good = creds;
                    entry.failures = 0;
                    entry.invalid = false;
                    entry.last_error = None;
                    let schedule = soonest.map(|exp| {
                        next_refresh(now, exp, refresh_before, jitter(), entry.short_streak)
                    });
                    attempt.short_lived = schedule.is_some_and(|s| s.short);
                    entry.short_streak = if attempt.short_lived {
                        entry.short_streak.saturating_add(1)
                    } else {
                        0
                    };
                    entry.next_refresh = schedule.map(|s| s.at);
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
                first_refresh: e.first_refresh,
                expired: e
                    .last_good
                    .iter()
                    .filter_map(|c| Some((c.host.clone(), c.expires_at.filter(|exp| *exp <= now)?)))
                    .collect(),
                note: e.provider.status_note(),
                verified: e.verified.clone(),
            })
            .collect()
    }

    /// Makes due at once the entry that serves `host`: a pull just failed
    /// to authenticate with what it minted. Only that one: the others'
    /// credentials were not in question, and each mint costs a cloud call.
    /// The entry is the first that yields the host, as [`compose`] keeps the
    /// first; hosts compare as kubelet reads keys. Returns whether one was
    /// found.
    ///
    /// [`compose`]: crate::decide::compose::compose
    pub fn refresh_host(&mut self, host: &str) -> bool {
        let serving = self
            .entries
            .iter_mut()
            .find(|e| e.last_good.iter().any(|c| key::same(&c.host, host)));
        match serving {
            Some(e) => {
                e.next_refresh = None;
                true
            }
            None => false,
        }
    }

    /// The earliest time any entry wants to mint again, or a served
    /// credential expires and must be taken out of every copy. The expiry
    /// does not wait for the refresh schedule: during an outage, retries back
    /// off to minutes apart, and an expired token must not linger that long.
    pub fn next_wakeup(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let refreshes = self
            .entries
            .iter()
            .filter(|e| !matches!(e.spec, CredentialSpec::Static(_)))
            .filter_map(|e| e.next_refresh);
        let expiries = self
            .entries
            .iter()
            .flat_map(|e| &e.last_good)
            .filter_map(|c| c.expires_at)
            .filter(|exp| *exp > now)
            .map(|exp| exp + EXPIRY_SLACK);
        refreshes.chain(expiries).min()
    }

    /// Removes what the providers, current and retired, created outside
    /// the cluster (Harbor robots). Empty when all of it is gone.
    pub async fn cleanup(&mut self, cluster: &dyn Cluster) -> Vec<ProviderError> {
        let mut errors = self.cleanup_retired(cluster).await;
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use chrono::TimeDelta;
    use regbridge_providers::spec::EcrSpec;
    use regbridge_providers::{NoCluster, Redacted};

    use super::*;
    use crate::decide::refresh::{BACKOFF_MAX, BACKOFF_START, CLAMPED_LIFETIME, MIN_INTERVAL};

    type Script = Arc<Mutex<VecDeque<Result<Vec<RegistryCredential>, ProviderError>>>>;

    /// A provider that answers from a script, so the schedule can be driven
    /// by an explicit clock.
    struct Scripted(Script);

    #[async_trait]
    impl Provider for Scripted {
        async fn mint(&self, _: &dyn Cluster) -> Result<Vec<RegistryCredential>, ProviderError> {
            self.0
                .lock()
                .unwrap()
                .pop_front()
                .expect("script has an answer")
        }
    }

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T00:00:00Z")
            .unwrap()
            .to_utc()
    }

    fn cred(password: &str, expires: DateTime<Utc>) -> RegistryCredential {
        RegistryCredential {
            host: "123.dkr.ecr.eu-west-1.amazonaws.com".into(),
            username: "AWS".into(),
            password: Redacted::new(password.into()),
            expires_at: Some(expires),
        }
    }

    fn remote() -> ProviderError {
        ProviderError::Remote {
            provider: "ecr",
            reason: "throttled".into(),
        }
    }

    fn scripted(
        answers: Vec<Result<Vec<RegistryCredential>, ProviderError>>,
    ) -> (Credentials, Script) {
        let script: Script = Arc::new(Mutex::new(answers.into()));
        let entry = Entry::with_provider(
            CredentialSpec::Ecr(EcrSpec::default()),
            Box::new(Scripted(script.clone())),
        );
        (
            Credentials {
                entries: vec![entry],
                ..Default::default()
            },
            script,
        )
    }

    async fn tick(c: &mut Credentials, now: DateTime<Utc>) -> Vec<Attempt> {
        let options = RefreshOptions {
            refresh_before: None,
            verifier: None,
            enforce: false,
        };
        c.refresh_due(&NoCluster, now, &options, &mut || 0.0).await
    }

    #[tokio::test]
    async fn nothing_is_minted_before_it_is_due() {
        let (mut c, _) = scripted(vec![Ok(vec![cred("one", t0() + TimeDelta::hours(12))])]);
        assert_eq!(tick(&mut c, t0()).await.len(), 1);
        assert_eq!(c.next_wakeup(t0()), Some(t0() + TimeDelta::hours(6)));
        assert!(
            tick(&mut c, t0() + TimeDelta::hours(5)).await.is_empty(),
            "one mint per refresh, not per reconcile"
        );
    }

    #[tokio::test]
    async fn a_failing_provider_keeps_the_last_good_credential_until_it_expires() {
        let expires = t0() + TimeDelta::hours(1);
        let (mut c, _) = scripted(vec![
            Ok(vec![cred("good", expires)]),
            Err(remote()),
            Err(remote()),
            Err(remote()),
        ]);
        tick(&mut c, t0()).await;
        let at = t0() + TimeDelta::minutes(31);
        let attempts = tick(&mut c, at).await;
        assert!(!attempts[0].ok);
        assert_eq!(
            c.current(at)[0].1.len(),
            1,
            "still served after a failed refresh"
        );
        let report = &c.reports(at)[0];
        assert!(!report.invalid);
        assert!(report.last_error.as_deref().unwrap().contains("throttled"));
        // Backoff: 5 s, then 10 s.
        assert_eq!(
            c.next_wakeup(at),
            Some(at + TimeDelta::from_std(BACKOFF_START).unwrap())
        );
        tick(&mut c, at + TimeDelta::seconds(5)).await;
        assert_eq!(c.next_wakeup(at), Some(at + TimeDelta::seconds(15)));
        // Once expired, the host is dropped rather than distributed.
        let later = expires + TimeDelta::seconds(1);
        tick(&mut c, later).await;
        assert!(c.current(later)[0].1.is_empty());
        assert_eq!(c.reports(later)[0].expired.len(), 1);
    }

    #[tokio::test]
    async fn a_configuration_error_clears_the_entry_and_marks_it_invalid() {
        let (mut c, _) = scripted(vec![
            Ok(vec![cred("good", t0() + TimeDelta::hours(1))]),
            Err(ProviderError::SecretNotFound {
                namespace: "regbridge".into(),
                name: "gone".into(),
            }),
        ]);
        tick(&mut c, t0()).await;
        tick(&mut c, t0() + TimeDelta::hours(1) - TimeDelta::minutes(29)).await;
        assert!(c.reports(t0())[0].invalid);
        assert!(c.current(t0())[0].1.is_empty());
    }

    #[tokio::test]
    async fn an_expiry_in_the_past_is_clamped_and_never_spins() {
        let past = DateTime::parse_from_rfc3339("2015-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        let (mut c, _) = scripted(vec![Ok(vec![cred("moto", past)])]);
        let attempts = tick(&mut c, t0()).await;
        assert!(attempts[0].clamped_expiry);
        let served = &c.current(t0())[0].1;
        assert_eq!(
            served[0].expires_at,
            Some(t0() + TimeDelta::from_std(CLAMPED_LIFETIME).unwrap())
        );
        let wait = c.next_wakeup(t0()).unwrap() - t0();
        assert!(wait >= TimeDelta::from_std(MIN_INTERVAL).unwrap(), "{wait}");
    }

    /// The GKE metadata server hands out the same token until about five
    /// minutes before it expires. Refreshing at half the remaining lifetime
    /// keeps halving the wait, so the scheduler reaches that window in a few
    /// attempts, never closer together than the minimum interval, and gets
    /// the new token well before the old one expires.
    #[tokio::test]
    async fn a_cached_token_is_retried_inside_the_metadata_window() {
        let old_expiry = t0() + TimeDelta::hours(1);
        let window = old_expiry - TimeDelta::minutes(5);
        let (mut c, script) = scripted(vec![]);
        let mut now = t0();
        let mut attempts = 0;
        let mut last: Option<DateTime<Utc>> = None;
        loop {
            let answer = if now < window {
                cred("cached", old_expiry)
            } else {
                cred("fresh", now + TimeDelta::hours(1))
            };
            script.lock().unwrap().push_back(Ok(vec![answer]));
            tick(&mut c, now).await;
            attempts += 1;
            if let Some(prev) = last {
                assert!(now - prev >= TimeDelta::from_std(MIN_INTERVAL).unwrap());
            }
            last = Some(now);
            if c.current(now)[0].1[0].password.expose() == "fresh" {
                break;
            }
            now = c.next_wakeup(now).unwrap();
            assert!(attempts < 20, "spinning");
        }
        assert!(
            now < old_expiry,
            "the new token arrived before the old one expired"
        );
        assert!(attempts <= 8, "{attempts} attempts");
    }

    /// A token handed back with 30 s left is reported and scheduled with its
    /// real expiry, asked for again at growing intervals no closer than 5 s,
    /// and dropped when it expires if no fresh one came.
    #[tokio::test]
    async fn a_thirty_second_token_keeps_its_real_expiry() {
        let expiry = t0() + TimeDelta::seconds(30);
        let (mut c, script) = scripted(vec![]);
        let mut now = t0();
        let mut mints = Vec::new();
        while now < expiry {
            script
                .lock()
                .unwrap()
                .push_back(Ok(vec![cred("old", expiry)]));
            let attempts = tick(&mut c, now).await;
            if let Some(a) = attempts.first() {
                assert!(a.ok && a.short_lived && !a.clamped_expiry);
                mints.push(now);
                assert_eq!(
                    c.current(now)[0].1[0].expires_at,
                    Some(expiry),
                    "the provider's expiry, not a clamped one"
                );
            } else {
                script.lock().unwrap().clear();
            }
            now = c.next_wakeup(now).unwrap();
        }
        assert_eq!(
            mints[1] - mints[0],
            TimeDelta::seconds(15),
            "half the lifetime"
        );
        assert!(
            mints
                .windows(2)
                .all(|w| w[1] - w[0] >= TimeDelta::seconds(5)),
            "{mints:?}"
        );
        assert!(mints.len() <= 4, "{} mints in 30 s", mints.len());
        assert!(now - expiry <= TimeDelta::seconds(1), "woken at the expiry");
        assert!(
            c.current(now)[0].1.is_empty(),
            "an expired token is dropped"
        );
        assert_eq!(
            c.reports(now)[0].expired,
            [(cred("x", expiry).host, expiry)]
        );
        // A fresh token ends the short schedule.
        let fresh = now + TimeDelta::hours(1);
        script
            .lock()
            .unwrap()
            .push_back(Ok(vec![cred("new", fresh)]));
        let at = c.next_wakeup(now).unwrap();
        assert!(at - now <= TimeDelta::from_std(BACKOFF_MAX).unwrap());
        let attempts = tick(&mut c, at).await;
        assert!(!attempts[0].short_lived);
        assert_eq!(c.next_wakeup(at), Some(at + (fresh - at) / 2));
    }

    /// During an outage the retries back off to minutes apart; the expiry
    /// does not wait for them.
    #[tokio::test]
    async fn an_expiry_during_an_outage_wakes_at_the_expiry() {
        let expiry = t0() + TimeDelta::minutes(10);
        let mut answers = vec![Ok(vec![cred("good", expiry)])];
        answers.extend((0..20).map(|_| Err(remote())));
        let (mut c, _) = scripted(answers);
        let mut now = t0();
        tick(&mut c, now).await;
        while now < expiry {
            now = c.next_wakeup(now).unwrap();
            tick(&mut c, now).await;
        }
        assert!(
            now - expiry <= TimeDelta::seconds(1),
            "woken {} after the expiry",
            now - expiry
        );
        assert!(c.current(now)[0].1.is_empty());
        let report = &c.reports(now)[0];
        assert_eq!(report.expired.len(), 1);
        assert!(report.last_error.as_deref().unwrap().contains("throttled"));
    }

    /// A new process takes over what the last one distributed: the same
    /// credential, scheduled from its expiry, and no mint before then.
    #[tokio::test]
    async fn a_record_of_the_same_spec_is_taken_over_without_minting() {
        let (mut before, _) = scripted(vec![Ok(vec![cred("one", t0() + TimeDelta::hours(12))])]);
        tick(&mut before, t0()).await;
        let records = before.records();
        assert_eq!(records.len(), 1);
        let distributed = before.current(t0())[0].1.clone();

        // An empty script: any mint would panic.
        let (mut after, _) = scripted(vec![]);
        let now = t0() + TimeDelta::hours(1);
        assert!(after.has_unminted());
        let taken = after.restore(&records, &distributed, now, None, &mut || 0.0);
        assert_eq!(taken, 1);
        assert!(!after.has_unminted());
        assert_eq!(after.current(now)[0].1, distributed);
        assert_eq!(after.reports(now)[0].refreshed_at, Some(t0()));
        let due = after.next_wakeup(now).unwrap();
        assert_eq!(
            due,
            now + TimeDelta::minutes(330),
            "half the remaining 11 h"
        );
        assert!(
            tick(&mut after, due - TimeDelta::seconds(1))
                .await
                .is_empty()
        );

        // Not another spec's record, and not an expired one.
        let (mut other, _) = scripted(vec![]);
        let mut foreign = records.clone();
        foreign[0].spec = "{}".into();
        assert_eq!(
            other.restore(&foreign, &distributed, now, None, &mut || 0.0),
            0
        );
        let late = t0() + TimeDelta::hours(13);
        assert_eq!(
            other.restore(&records, &distributed, late, None, &mut || 0.0),
            0
        );
    }

    /// Cleans up "remote" objects, failing as often as told to.
    struct Remote {
        name: &'static str,
        fail: Arc<Mutex<u32>>,
        deleted: Arc<Mutex<Vec<&'static str>>>,
    }

    #[async_trait]
    impl Provider for Remote {
        async fn mint(&self, _: &dyn Cluster) -> Result<Vec<RegistryCredential>, ProviderError> {
            Ok(vec![])
        }
        async fn cleanup(&self, _: &dyn Cluster) -> Result<(), ProviderError> {
            let mut fail = self.fail.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return Err(remote());
            }
            self.deleted.lock().unwrap().push(self.name);
            Ok(())
        }
        fn remote_object(&self) -> Option<String> {
            Some(self.name.into())
        }
    }

    #[tokio::test]
    async fn a_removed_entry_is_cleaned_up_and_a_failed_cleanup_retried() {
        let fail = Arc::new(Mutex::new(1));
        let deleted = Arc::new(Mutex::new(Vec::new()));
        let robot = Entry::with_provider(
            CredentialSpec::Ecr(EcrSpec::default()),
            Box::new(Remote {
                name: "robot-a",
                fail: fail.clone(),
                deleted: deleted.clone(),
            }),
        );
        let mut c = Credentials {
            entries: vec![robot],
            ..Default::default()
        };
        c.update_specs(&[], &BuildContext::new("res")).unwrap();
        let errors = c.cleanup_retired(&NoCluster).await;
        assert_eq!(errors.len(), 1, "the first delete fails");
        assert!(deleted.lock().unwrap().is_empty());
        assert!(c.cleanup_retired(&NoCluster).await.is_empty());
        assert_eq!(*deleted.lock().unwrap(), ["robot-a"]);
        assert!(c.cleanup_retired(&NoCluster).await.is_empty());
        assert_eq!(deleted.lock().unwrap().len(), 1, "deleted once");
    }

    /// A changed entry that still manages the same robot keeps it; one that
    /// names another robot retires the old one.
    #[test]
    fn a_changed_entry_retires_its_robot_only_if_it_names_another() {
        use regbridge_providers::spec::{HarborSpec, SecretRef};
        let harbor = |rotate: &str, robot: &str| {
            CredentialSpec::Harbor(HarborSpec {
                url: "https://harbor.example".into(),
                admin_secret_ref: SecretRef::default(),
                project: Some("team-a".into()),
                robot_name: Some(robot.into()),
                rotate_every: rotate.into(),
                ..Default::default()
            })
        };
        let ctx = BuildContext::new("res");
        let mut c = Credentials::default();
        c.update_specs(&[harbor("24h", "puller")], &ctx).unwrap();
        c.update_specs(&[harbor("12h", "puller")], &ctx).unwrap();
        assert!(c.retired.is_empty(), "the same robot, rotated more often");
        c.update_specs(&[harbor("12h", "other")], &ctx).unwrap();
        assert_eq!(c.retired.len(), 1);
        assert_eq!(
            c.retired[0].remote_object().as_deref(),
            Some("https://harbor.example/api/v2.0/robots/team-a+puller")
        );
    }

    #[tokio::test]
    async fn a_pull_failure_re_mints_only_the_entry_serving_its_host() {
        let ecr = |host: &str, password: &str| RegistryCredential {
            host: host.into(),
            ..cred(password, t0() + TimeDelta::hours(12))
        };
        let a: Script = Arc::new(Mutex::new(VecDeque::new()));
        let b: Script = Arc::new(Mutex::new(VecDeque::new()));
        let mut c = Credentials {
            entries: [&a, &b]
                .into_iter()
                .map(|s| {
                    Entry::with_provider(
                        CredentialSpec::Ecr(EcrSpec::default()),
                        Box::new(Scripted(s.clone())),
                    )
                })
                .collect(),
            ..Default::default()
        };
        let a_host = "https://111.dkr.ecr.eu-west-1.amazonaws.com";
        let b_host = "222.dkr.ecr.eu-west-1.amazonaws.com";
        a.lock().unwrap().push_back(Ok(vec![ecr(a_host, "a1")]));
        b.lock().unwrap().push_back(Ok(vec![ecr(b_host, "b1")]));
        assert_eq!(tick(&mut c, t0()).await.len(), 2);
        // A failure names the key as the Secret has it, or as kubelet reads
        // it; kubelet keeps case, so a host in other case is another key.
        assert!(!c.refresh_host("222.DKR.ecr.eu-west-1.amazonaws.com"));
        assert!(c.refresh_host("https://222.dkr.ecr.eu-west-1.amazonaws.com/v2/"));
        b.lock().unwrap().push_back(Ok(vec![ecr(b_host, "b2")]));
        let later = t0() + TimeDelta::minutes(1);
        let attempts = tick(&mut c, later).await;
        assert_eq!(attempts.len(), 1, "only the failing host's entry");
        assert!(a.lock().unwrap().is_empty() && b.lock().unwrap().is_empty());
        let current = c.current(later);
        assert_eq!(current[0].1[0].password.expose(), "a1");
        assert_eq!(current[1].1[0].password.expose(), "b2");
        assert!(!c.refresh_host("quay.io"), "a host nobody serves");
        assert!(tick(&mut c, later).await.is_empty());
    }

    #[tokio::test]
    async fn a_harbor_ca_that_cannot_be_read_stops_the_entry_before_any_handshake() {
        use regbridge_providers::spec::{HarborSpec, SecretRef};
        let (mut c, _) = scripted(vec![Ok(vec![cred("minted", t0() + TimeDelta::hours(1))])]);
        c.entries[0].spec = CredentialSpec::Harbor(HarborSpec {
            ca_secret_ref: Some(SecretRef {
                namespace: "regbridge".into(),
                name: "harbor-ca".into(),
            }),
            ..Default::default()
        });
        let verifier = Verifier::default();
        let options = RefreshOptions {
            refresh_before: None,
            verifier: Some(&verifier),
            enforce: true,
        };
        let attempts = c.refresh_due(&NoCluster, t0(), &options, &mut || 0.0).await;
        assert!(!attempts[0].ok);
        let report = &c.reports(t0())[0];
        assert!(report.invalid);
        assert!(
            report
                .last_error
                .as_deref()
                .unwrap()
                .contains("CA Secret regbridge/harbor-ca")
        );
        assert!(
            c.current(t0())[0].1.is_empty(),
            "nothing unverified is served"
        );
    }
}
