//! The `harbor` provider: a pull-only Harbor robot account that regbridge
//! creates, rotates and deletes itself, through Harbor's v2 API
//! (`/api/v2.0/robots`) with the basic auth of an account allowed to manage
//! robots (`adminSecretRef`).
//!
//! - **Create.** `POST /robots`, level `project` when `project` is set, or
//!   level `system` with pull on each project of `projects` (`*` only when
//!   the spec lists it). Its `duration` (days) covers two `rotateEvery`
//!   periods, so a robot whose cleanup never ran dies on its own; a robot
//!   past its own expiry is replaced. The description marks it as
//!   regbridge's.
//! - **Adopt.** A 409 means the name is taken. If the robot of that name
//!   carries regbridge's description, it is ours from an earlier run (say,
//!   before a controller restart): Harbor never returns an existing secret, so
//!   the secret is rotated to learn it. A robot without the marker is someone
//!   else's and is left alone.
//! - **Rotate.** `PATCH /robots/{id}` with `{"secret": ""}` makes Harbor
//!   generate a new secret. The old one stops working at once. A mint rotates
//!   once the secret has lived three quarters of `rotateEvery`; the
//!   credential's expiry is the sooner of "rotated + `rotateEvery`" and the
//!   robot's own `expires_at`, so a scheduler that refreshes before expiry
//!   rotates on time.
//! - **Delete.** [`Provider::cleanup`] deletes the robot (`DELETE /robots/{id}`).
//!
//! - **Restore.** A new process (a restart, a failover) is handed the
//!   credential it distributed last ([`Provider::restore`]). The robot is
//!   taken over with that secret, its id looked up by name, and rotated only
//!   when due: rotating at once would revoke the secret every namespace
//!   holds until the new copies land.
//!
//! The robot's id lives in memory and is reported by
//! [`Provider::status_note`]. The admin credentials are read per call and
//! never returned, logged or put into an error. Harbor's answers are read up
//! to [`MAX_BODY`].

use std::sync::Mutex as SyncMutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

use crate::http_errors;
use crate::provider::{BuildContext, deadline};
use crate::spec::{HarborSpec, SecretRef};
use crate::trust::Trust;
use crate::{Cluster, Provider, ProviderError, Redacted, RegistryCredential, SecretData};

const NAME: &str = "harbor";
/// Robots regbridge created carry a description starting with this.
pub(crate) const DESCRIPTION_MARK: &str = "managed by regbridge";
/// Harbor's default robot name prefix.
const ROBOT_PREFIX: &str = "robot$";

pub(crate) struct HarborProvider {
    spec: HarborSpec,
    api: Url,
    host: String,
    /// The name we ask Harbor for (without prefix or project).
    robot_name: String,
    resource_name: String,
    rotate_every: chrono::Duration,
    /// When a secret is rotated: three quarters into `rotate_every`.
    rotate_after: chrono::Duration,
    timeout: Duration,
    trust: Trust,
    /// The robot in use. An async mutex, so concurrent mints and a cleanup
    /// never race each other into two rotations.
    robot: Mutex<Option<Robot>>,
    /// What [`Provider::status_note`] says; a copy outside the async lock.
    note: SyncMutex<Option<String>>,
}

#[derive(Debug)]
struct Robot {
    /// `None` for a robot restored from the distributed credential, until
    /// the next call to Harbor looks it up.
    id: Option<i64>,
    /// As Harbor reports it, prefix included: the registry username.
    name: String,
    secret: Redacted<String>,
    rotated_at: DateTime<Utc>,
    /// `None` when the robot never expires.
    expires_at: Option<DateTime<Utc>>,
}

/// One call's HTTP client and admin credentials.
struct Session {
    http: reqwest::Client,
    admin: Admin,
}

#[derive(Debug)]
struct Admin {
    username: String,
    password: Redacted<String>,
}

/// Harbor's answer to a create: 201 with this body.
#[derive(Deserialize)]
struct Created {
    id: i64,
    name: String,
    secret: String,
    #[serde(default)]
    expires_at: Option<i64>,
}

/// One entry of `GET /robots`.
#[derive(Deserialize)]
struct Listed {
    id: i64,
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    expires_at: Option<i64>,
    #[serde(default)]
    disable: bool,
}

#[derive(Deserialize)]
struct Refreshed {
    secret: String,
}

impl HarborProvider {
    pub(crate) fn new(spec: HarborSpec, ctx: &BuildContext) -> Result<Self, ProviderError> {
        let invalid = |m: String| ProviderError::InvalidSpec(format!("harbor: {m}"));
        let base = Url::parse(spec.url.trim()).map_err(|_| invalid("url is not a URL".into()))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(invalid("url must be http(s)://host[:port]".into()));
        }
        if base.scheme() == "http" && !spec.insecure {
            return Err(invalid(
                "url is http://, which sends the admin password in clear; use https:// or set insecure: true".into(),
            ));
        }
        match (&spec.project, spec.projects.is_empty()) {
            (Some(_), false) => {
                return Err(invalid(
                    "set project (a project robot) or projects (a system robot), not both".into(),
                ));
            }
            (None, true) => {
                return Err(invalid(
                    "a system robot needs projects: the projects it may pull from (`*` for every one)"
                        .into(),
                ));
            }
            _ => {}
        }
        let host = match base.port() {
            Some(port) => format!("{}:{port}", base.host_str().unwrap_or_default()),
            None => base.host_str().unwrap_or_default().to_owned(),
        };
        let api = base
            .join(&format!("{}/api/v2.0/", base.path().trim_end_matches('/')))
            .map_err(|_| invalid("url cannot take the API path".into()))?;
        let robot_name = spec
            .robot_name
            .clone()
            .unwrap_or_else(|| format!("regbridge-{}", ctx.resource_name));
        if robot_name.is_empty() || robot_name.contains(['$', '+', '/', ' ']) {
            return Err(invalid(format!("robot name `{robot_name}` is not valid")));
        }
        let rotate_every = crate::duration::parse(&spec.rotate_every)
            .map_err(|e| invalid(format!("rotateEvery: {e}")))
            .and_then(|d| {
                chrono::TimeDelta::from_std(d)
                    .map_err(|_| invalid("rotateEvery is out of range".into()))
            })?;
        Ok(Self {
            spec,
            api,
            host,
            robot_name,
            resource_name: ctx.resource_name.clone(),
            rotate_every,
            rotate_after: rotate_every * 3 / 4,
            timeout: ctx.timeout,
            trust: ctx.trust.clone(),
            robot: Mutex::new(None),
            note: SyncMutex::new(None),
        })
    }

    /// The name as Harbor stores it: `<project>+<name>` for project robots.
    fn stored_name(&self) -> String {
        match &self.spec.project {
            Some(p) => format!("{p}+{}", self.robot_name),
            None => self.robot_name.clone(),
        }
    }

    async fn admin(&self, cluster: &dyn Cluster) -> Result<Admin, ProviderError> {
        let r = &self.spec.admin_secret_ref;
        let secret = read_secret(cluster, r).await?;
        Ok(Admin {
            username: text_key(&secret, r, "username")?,
            password: Redacted::new(text_key(&secret, r, "password")?),
        })
    }

    async fn client(&self, cluster: &dyn Cluster) -> Result<reqwest::Client, ProviderError> {
        crate::api_client::build(
            NAME,
            &self.trust,
            self.spec.ca_secret_ref.as_ref(),
            self.timeout,
            cluster,
        )
        .await
    }

    fn secs(&self) -> u64 {
        self.timeout.as_secs()
    }

    /// One API call: method, path under `/api/v2.0/`, optional JSON body.
    async fn call(
        &self,
        session: &Session,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<serde_json::Value>,
        what: &str,
    ) -> Result<reqwest::Response, ProviderError> {
        let url = self.api.join(path).map_err(|_| {
            ProviderError::InvalidSpec(format!("harbor: cannot form the URL for {what}"))
        })?;
        let admin = &session.admin;
        let mut req = session
            .http
            .request(method, url)
            .basic_auth(&admin.username, Some(admin.password.expose()))
            .query(query);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
            .await
            .map_err(|e| http_errors::transport(NAME, what, &e, self.secs()))
    }

    async fn create(&self, s: &Session) -> Result<Option<Robot>, ProviderError> {
        let (level, projects) = match &self.spec.project {
            Some(p) => ("project", vec![p.as_str()]),
            None => (
                "system",
                self.spec.projects.iter().map(String::as_str).collect(),
            ),
        };
        let permissions: Vec<serde_json::Value> = projects
            .into_iter()
            .map(|namespace| {
                json!({
                    "kind": "project",
                    "namespace": namespace,
                    "access": [{"resource": "repository", "action": "pull"}],
                })
            })
            .collect();
        let body = json!({
            "name": self.robot_name,
            "description": format!("{DESCRIPTION_MARK} for {}", self.resource_name),
            "level": level,
            "duration": robot_days(self.rotate_every),
            "disable": false,
            "permissions": permissions,
        });
        let what = "creating the robot";
        let resp = self
            .call(s, Method::POST, "robots", &[], Some(body), what)
            .await?;
        match resp.status() {
            StatusCode::CREATED | StatusCode::OK => {
                let c: Created = read_json(resp, what, self.secs()).await?;
                tracing::info!(robot_id = c.id, robot = %c.name, "created Harbor robot");
                Ok(Some(Robot {
                    id: Some(c.id),
                    name: c.name,
                    secret: Redacted::new(c.secret),
                    rotated_at: Utc::now(),
                    expires_at: c.expires_at.and_then(from_harbor_time),
                }))
            }
            StatusCode::CONFLICT => Ok(None),
            s => Err(status_error(what, s)),
        }
    }

    /// Our robot of this name, if Harbor has one.
    async fn find(&self, s: &Session) -> Result<Option<Listed>, ProviderError> {
        let stored = self.stored_name();
        let q = format!("name={stored}");
        let what = "listing robots";
        let resp = self
            .call(
                s,
                Method::GET,
                "robots",
                &[("q", &q), ("page_size", "100")],
                None,
                what,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(what, resp.status()));
        }
        let all: Vec<Listed> = read_json(resp, what, self.secs()).await?;
        let Some(found) = all.into_iter().find(|r| is_named(&r.name, &stored)) else {
            return Ok(None);
        };
        let ours = found
            .description
            .as_deref()
            .is_some_and(|d| d.starts_with(DESCRIPTION_MARK));
        if !ours {
            return Err(ProviderError::Remote {
                provider: NAME,
                reason: format!(
                    "robot {} (id {}) exists but was not created by regbridge; choose another robotName or delete it",
                    found.name, found.id
                ),
            });
        }
        Ok(Some(found))
    }

    /// A new secret for robot `id`. `Ok(None)` when the robot is gone (or
    /// its id is unknown).
    async fn refresh_secret(
        &self,
        s: &Session,
        id: Option<i64>,
    ) -> Result<Option<Redacted<String>>, ProviderError> {
        let Some(id) = id else {
            return Ok(None);
        };
        let what = "rotating the robot's secret";
        let resp = self
            .call(
                s,
                Method::PATCH,
                &format!("robots/{id}"),
                &[],
                Some(json!({"secret": ""})),
                what,
            )
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let r: Refreshed = read_json(resp, what, self.secs()).await?;
                if r.secret.is_empty() {
                    return Err(ProviderError::Malformed {
                        what: format!("{NAME}: {what}"),
                        reason: "the response has an empty secret".into(),
                    });
                }
                Ok(Some(Redacted::new(r.secret)))
            }
            s => Err(status_error(what, s)),
        }
    }

    /// Create, or adopt ours; errors when the name belongs to someone else.
    async fn obtain(&self, s: &Session) -> Result<Robot, ProviderError> {
        if let Some(robot) = self.create(s).await? {
            return Ok(robot);
        }
        let found = self.find(s).await?.ok_or_else(|| ProviderError::Remote {
            provider: NAME,
            reason: format!(
                "robot name {} is taken (409) but no robot of that name is listed",
                self.stored_name()
            ),
        })?;
        if found.disable {
            return Err(ProviderError::Remote {
                provider: NAME,
                reason: format!("robot {} (id {}) is disabled", found.name, found.id),
            });
        }
        let secret = self
            .refresh_secret(s, Some(found.id))
            .await?
            .ok_or_else(|| ProviderError::Remote {
                provider: NAME,
                reason: format!("robot id {} vanished while being adopted", found.id),
            })?;
        tracing::info!(robot_id = found.id, robot = %found.name, "adopted Harbor robot and rotated its secret");
        Ok(Robot {
            id: Some(found.id),
            name: found.name,
            secret,
            rotated_at: Utc::now(),
            expires_at: found.expires_at.and_then(from_harbor_time),
        })
    }

    async fn mint_now(
        &self,
        cluster: &dyn Cluster,
    ) -> Result<Vec<RegistryCredential>, ProviderError> {
        let s = Session {
            admin: self.admin(cluster).await?,
            http: self.client(cluster).await?,
        };
        let mut slot = self.robot.lock().await;
        let now = Utc::now();
        let current = match slot.take() {
            Some(r) if r.id.is_none() => match self.find(&s).await {
                Ok(found) => found.map(|f| Robot {
                    id: Some(f.id),
                    expires_at: f.expires_at.and_then(from_harbor_time),
                    ..r
                }),
                Err(e) => {
                    *slot = Some(r);
                    return Err(e);
                }
            },
            other => other,
        };
        let robot = match current {
            None => self.obtain(&s).await?,
            Some(r) if r.expires_at.is_some_and(|e| e <= now) => {
                // Rotation does not extend a robot's life: replace it.
                self.delete_robot(&s, r.id).await?;
                self.obtain(&s).await?
            }
            Some(r) if self.rotation_due(&r, now) => match self.refresh_secret(&s, r.id).await {
                Ok(Some(secret)) => {
                    tracing::info!(robot_id = r.id, "rotated Harbor robot secret");
                    Robot {
                        secret,
                        rotated_at: now,
                        ..r
                    }
                }
                Ok(None) => self.obtain(&s).await?,
                Err(e) => {
                    *slot = Some(r);
                    return Err(e);
                }
            },
            Some(r) => r,
        };
        let due = robot.rotated_at.checked_add_signed(self.rotate_every);
        let expires_at = match (robot.expires_at, due) {
            (Some(robot), Some(due)) => robot.min(due),
            (robot, due) => robot.or(due).unwrap_or(now),
        };
        let cred = RegistryCredential {
            host: self.host.clone(),
            username: robot.name.clone(),
            password: robot.secret.clone(),
            expires_at: Some(expires_at),
        };
        self.set_note(Some(&robot));
        *slot = Some(robot);
        Ok(vec![cred])
    }

    /// Whether `r`'s secret has lived three quarters of `rotateEvery`. A
    /// rotation time too far ahead to compute with is due.
    fn rotation_due(&self, r: &Robot, now: DateTime<Utc>) -> bool {
        r.rotated_at
            .checked_add_signed(self.rotate_after)
            .is_none_or(|at| now >= at)
    }

    async fn delete_robot(&self, s: &Session, id: Option<i64>) -> Result<(), ProviderError> {
        let Some(id) = id else {
            return Ok(());
        };
        let what = "deleting the robot";
        let resp = self
            .call(s, Method::DELETE, &format!("robots/{id}"), &[], None, what)
            .await?;
        match resp.status() {
            s if s.is_success() || s == StatusCode::NOT_FOUND => {
                tracing::info!(robot_id = id, "deleted Harbor robot");
                Ok(())
            }
            s => Err(status_error(what, s)),
        }
    }

    async fn cleanup_now(&self, cluster: &dyn Cluster) -> Result<(), ProviderError> {
        let s = Session {
            admin: self.admin(cluster).await?,
            http: self.client(cluster).await?,
        };
        let mut slot = self.robot.lock().await;
        let id = match slot.as_ref().and_then(|r| r.id) {
            Some(id) => Some(id),
            // Not minted in this process: look ours up by name.
            None => self.find(&s).await?.map(|r| r.id),
        };
        self.delete_robot(&s, id).await?;
        *slot = None;
        self.set_note(None);
        Ok(())
    }

    fn set_note(&self, robot: Option<&Robot>) {
        let warning = if self.api.scheme() == "http" {
            "; insecure: the admin password goes over plain http"
        } else {
            ""
        };
        let note = robot.map(|r| match r.id {
            Some(id) => format!("harbor robot {} (id {id}){warning}", r.name),
            None => format!("harbor robot {}{warning}", r.name),
        });
        *self.note.lock().unwrap_or_else(|p| p.into_inner()) = note;
    }
}

#[async_trait]
impl Provider for HarborProvider {
    async fn mint(&self, cluster: &dyn Cluster) -> Result<Vec<RegistryCredential>, ProviderError> {
        deadline(NAME, self.timeout, self.mint_now(cluster)).await
    }

    async fn cleanup(&self, cluster: &dyn Cluster) -> Result<(), ProviderError> {
        deadline(NAME, self.timeout, self.cleanup_now(cluster)).await
    }

    fn status_note(&self) -> Option<String> {
        self.note.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn remote_object(&self) -> Option<String> {
        Some(format!("{}robots/{}", self.api, self.stored_name()))
    }

    fn restore(&self, previous: &[RegistryCredential], minted_at: DateTime<Utc>) {
        let stored = self.stored_name();
        let Some(cred) = previous
            .iter()
            .find(|c| c.host == self.host && is_named(&c.username, &stored))
        else {
            return;
        };
        let robot = Robot {
            id: None,
            name: cred.username.clone(),
            secret: cred.password.clone(),
            rotated_at: minted_at,
            expires_at: None,
        };
        self.set_note(Some(&robot));
        if let Ok(mut slot) = self.robot.try_lock()
            && slot.is_none()
        {
            *slot = Some(robot);
        }
    }
}

/// The robot's own lifetime in Harbor's unit, days: two `rotateEvery`
/// periods, so a robot regbridge never got to delete stops working soon.
fn robot_days(rotate_every: chrono::Duration) -> i64 {
    const DAY: i64 = 86_400;
    let secs = rotate_every.num_seconds().saturating_mul(2);
    (secs.saturating_add(DAY - 1) / DAY).max(1)
}

fn status_error(what: &str, status: StatusCode) -> ProviderError {
    match status {
        StatusCode::UNAUTHORIZED => ProviderError::Remote {
            provider: NAME,
            reason: format!("{what}: Harbor refused the admin credentials (401)"),
        },
        StatusCode::FORBIDDEN => ProviderError::Remote {
            provider: NAME,
            reason: format!("{what}: the admin account may not manage robots here (403)"),
        },
        s => http_errors::status(NAME, what, s),
    }
}

/// The most of a Harbor answer read: a page of 100 robots is well under it.
pub(crate) const MAX_BODY: usize = 1024 * 1024;

async fn read_json<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    what: &str,
    timeout_secs: u64,
) -> Result<T, ProviderError> {
    let bytes = crate::body::read_limited(resp, MAX_BODY + 1)
        .await
        .map_err(|e| http_errors::transport(NAME, what, &e, timeout_secs))?;
    if bytes.len() > MAX_BODY {
        return Err(ProviderError::Malformed {
            what: format!("{NAME}: the response to {what}"),
            reason: format!("larger than {} KiB", MAX_BODY / 1024),
        });
    }
    // serde_json's message could quote a secret from the body: say only where.
    serde_json::from_slice(&bytes).map_err(|e| ProviderError::Malformed {
        what: format!("{NAME}: the response to {what}"),
        reason: format!(
            "unexpected JSON at line {}, column {}",
            e.line(),
            e.column()
        ),
    })
}

async fn read_secret(cluster: &dyn Cluster, r: &SecretRef) -> Result<SecretData, ProviderError> {
    cluster
        .secret(r)
        .await?
        .ok_or_else(|| ProviderError::SecretNotFound {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
        })
}

fn text_key(secret: &SecretData, r: &SecretRef, key: &str) -> Result<String, ProviderError> {
    let bad = |reason: String| ProviderError::Malformed {
        what: format!("Secret {}/{}", r.namespace, r.name),
        reason,
    };
    let raw = secret
        .data
        .get(key)
        .ok_or_else(|| bad(format!("has no `{key}` key")))?;
    let text = std::str::from_utf8(raw).map_err(|_| bad(format!("key `{key}` is not UTF-8")))?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

/// Whether Harbor's reported name (with its prefix) is the stored name.
fn is_named(reported: &str, stored: &str) -> bool {
    reported == format!("{ROBOT_PREFIX}{stored}")
        // A custom robot prefix still ends before the stored name.
        || reported
            .strip_suffix(stored)
            .is_some_and(|prefix| !prefix.is_empty() && prefix.ends_with('$'))
}

/// Harbor's `expires_at`: Unix seconds, -1 (or 0) for never.
fn from_harbor_time(t: i64) -> Option<DateTime<Utc>> {
    (t > 0).then(|| DateTime::from_timestamp(t, 0)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_names_match_with_default_or_custom_prefix_only() {
        assert!(is_named("robot$regbridge-a", "regbridge-a"));
        assert!(is_named("robot$team+regbridge-a", "team+regbridge-a"));
        assert!(is_named("bot$regbridge-a", "regbridge-a"));
        assert!(!is_named("robot$xregbridge-a", "regbridge-a"));
        assert!(!is_named("regbridge-a", "regbridge-a"));
    }

    fn spec(url: &str) -> HarborSpec {
        HarborSpec {
            url: url.into(),
            project: Some("team-a".into()),
            rotate_every: "24h".into(),
            ..Default::default()
        }
    }

    #[test]
    fn host_keeps_the_port_and_drops_scheme_and_path() {
        let ctx = BuildContext::new("res");
        let p = HarborProvider::new(spec("https://harbor.example.com:8443/"), &ctx).unwrap();
        assert_eq!(p.host, "harbor.example.com:8443");
        assert_eq!(p.api.as_str(), "https://harbor.example.com:8443/api/v2.0/");
        assert_eq!(p.robot_name, "regbridge-res");
        let p = HarborProvider::new(spec("https://h.example/sub"), &ctx).unwrap();
        assert_eq!(p.api.as_str(), "https://h.example/sub/api/v2.0/");
    }

    #[test]
    fn bad_url_or_period_is_an_invalid_spec() {
        let ctx = BuildContext::new("res");
        assert!(HarborProvider::new(spec("ftp://h"), &ctx).is_err());
        assert!(HarborProvider::new(spec("not a url"), &ctx).is_err());
        let mut s = spec("https://h");
        s.rotate_every = "soon".into();
        assert!(HarborProvider::new(s, &ctx).is_err());
    }
}
