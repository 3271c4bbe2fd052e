//! The `harbor` provider against the loopback server in
//! `common/harbor.rs`, which follows Harbor's v2 robot API.

mod common;

use std::time::Duration;

use chrono::Utc;
use regbridge_providers::spec::{CredentialSpec, HarborSpec};
use regbridge_providers::{BuildContext, Provider, ProviderError, build};
use serde_json::json;

use common::harbor::{self, ADMIN_PASSWORD, ADMIN_USER, Shared};
use common::{TestCluster, secret_ref};

struct Fixture {
    harbor: Shared,
    url: String,
    cluster: TestCluster,
}

async fn start() -> Fixture {
    let (harbor, url) = harbor::serve().await;
    Fixture {
        harbor,
        url,
        cluster: admin_cluster(ADMIN_PASSWORD),
    }
}

fn admin_cluster(password: &str) -> TestCluster {
    TestCluster::default().with_secret(
        "regbridge",
        "harbor-admin",
        &[
            ("username", ADMIN_USER.as_bytes()),
            ("password", password.as_bytes()),
        ],
    )
}

impl Fixture {
    /// A system robot for two projects. The stub speaks plain HTTP, which
    /// the spec must allow.
    fn spec(&self) -> HarborSpec {
        HarborSpec {
            url: self.url.clone(),
            insecure: true,
            admin_secret_ref: secret_ref("regbridge", "harbor-admin"),
            projects: vec!["library".into(), "team-a".into()],
            rotate_every: "24h".into(),
            ..Default::default()
        }
    }

    fn provider(&self, spec: HarborSpec) -> Box<dyn Provider> {
        let mut ctx = BuildContext::new("team-a-pulls");
        ctx.timeout = Duration::from_secs(5);
        build(&CredentialSpec::Harbor(spec), &ctx).expect("valid spec")
    }

    fn log(&self) -> Vec<String> {
        self.harbor.lock().unwrap().log.clone()
    }
}

#[tokio::test]
async fn creates_a_pull_only_system_robot_and_mints_its_secret() {
    let f = start().await;
    let p = f.provider(f.spec());
    let creds = p.mint(&f.cluster).await.expect("mint");
    assert_eq!(creds.len(), 1);
    let c = &creds[0];
    assert_eq!(c.host, f.url.trim_start_matches("http://"));
    assert_eq!(c.username, "robot$regbridge-team-a-pulls");
    assert!(
        f.harbor
            .lock()
            .unwrap()
            .accepts(&c.username, c.password.expose())
    );
    let body = f.harbor.lock().unwrap().last_create_body.clone().unwrap();
    assert_eq!(body["level"], "system");
    assert_eq!(
        body["permissions"],
        json!([
            {"kind": "project", "namespace": "library",
             "access": [{"resource": "repository", "action": "pull"}]},
            {"kind": "project", "namespace": "team-a",
             "access": [{"resource": "repository", "action": "pull"}]},
        ]),
        "pull on the listed projects only, never `*` unless listed"
    );
    // The robot lives two rotation periods; the credential expires at the
    // next rotation.
    assert_eq!(body["duration"], 2, "days");
    let robot_expiry = f
        .harbor
        .lock()
        .unwrap()
        .robots
        .values()
        .next()
        .unwrap()
        .expires_at;
    assert!((robot_expiry - Utc::now().timestamp() - 2 * 86_400).abs() < 30);
    let expires = c.expires_at.expect("an expiry");
    let in_a_day = Utc::now() + chrono::Duration::hours(24);
    assert!((expires - in_a_day).num_seconds().abs() < 30, "{expires}");
    let id = f
        .harbor
        .lock()
        .unwrap()
        .robots
        .keys()
        .copied()
        .next()
        .unwrap();
    assert!(
        p.status_note()
            .expect("a note")
            .contains(&format!("id {id}"))
    );
}

#[tokio::test]
async fn project_robot_is_named_after_its_project_and_limited_to_it() {
    let f = start().await;
    let p = f.provider(HarborSpec {
        project: Some("team-a".into()),
        projects: vec![],
        robot_name: Some("puller".into()),
        ..f.spec()
    });
    let c = &p.mint(&f.cluster).await.expect("mint")[0];
    assert_eq!(c.username, "robot$team-a+puller");
    let body = f.harbor.lock().unwrap().last_create_body.clone().unwrap();
    assert_eq!(body["level"], "project");
    assert_eq!(body["permissions"][0]["namespace"], "team-a");
    assert_eq!(
        body["permissions"][0]["access"],
        json!([{"resource": "repository", "action": "pull"}])
    );
}

#[tokio::test]
async fn a_second_mint_before_rotation_is_due_returns_the_same_secret() {
    let f = start().await;
    let p = f.provider(f.spec());
    let first = p.mint(&f.cluster).await.unwrap();
    let second = p.mint(&f.cluster).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(f.log(), ["POST /robots"], "no further API calls");
}

#[tokio::test]
async fn name_conflict_adopts_our_earlier_robot_by_rotating_its_secret() {
    let f = start().await;
    let id = f.harbor.lock().unwrap().seed(
        "regbridge-team-a-pulls",
        "managed by regbridge for team-a-pulls",
    );
    let old_secret = f.harbor.lock().unwrap().robots[&id].secret.clone();
    let p = f.provider(f.spec());
    let c = &p.mint(&f.cluster).await.expect("adopting mint")[0];
    assert_eq!(
        f.log(),
        [
            "POST /robots".to_owned(),
            "GET /robots?q=name=regbridge-team-a-pulls".to_owned(),
            format!("PATCH /robots/{id}")
        ]
    );
    assert_ne!(c.password.expose(), &old_secret);
    assert!(
        f.harbor
            .lock()
            .unwrap()
            .accepts(&c.username, c.password.expose())
    );
    assert_eq!(f.harbor.lock().unwrap().robots.len(), 1, "no second robot");
    assert!(p.status_note().unwrap().contains(&format!("id {id}")));
}

#[tokio::test]
async fn name_conflict_with_someone_elses_robot_is_refused_and_left_alone() {
    let f = start().await;
    let id = f
        .harbor
        .lock()
        .unwrap()
        .seed("regbridge-team-a-pulls", "CI robot, hands off");
    let before = f.harbor.lock().unwrap().robots[&id].secret.clone();
    let err = f.provider(f.spec()).mint(&f.cluster).await.unwrap_err();
    assert!(
        err.to_string().contains("not created by regbridge"),
        "{err}"
    );
    assert_eq!(f.harbor.lock().unwrap().robots[&id].secret, before);
    assert!(
        !f.log()
            .iter()
            .any(|l| l.starts_with("PATCH") || l.starts_with("DELETE"))
    );
}

#[tokio::test]
async fn secret_is_rotated_once_due_and_the_old_one_stops_working() {
    let f = start().await;
    let p = f.provider(HarborSpec {
        rotate_every: "2s".into(),
        ..f.spec()
    });
    let old = p.mint(&f.cluster).await.unwrap().remove(0);
    let old_expiry = old.expires_at.unwrap();
    assert!(old_expiry <= Utc::now() + chrono::Duration::seconds(2));
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let new = p.mint(&f.cluster).await.unwrap().remove(0);
    assert_eq!(new.username, old.username);
    assert_ne!(new.password, old.password);
    assert!(new.expires_at.unwrap() > old_expiry);
    let h = f.harbor.lock().unwrap();
    assert!(h.accepts(&new.username, new.password.expose()));
    assert!(!h.accepts(&old.username, old.password.expose()));
    assert_eq!(h.log.iter().filter(|l| l.starts_with("PATCH")).count(), 1);
}

#[tokio::test]
async fn robot_deleted_behind_our_back_is_recreated_at_rotation() {
    let f = start().await;
    let p = f.provider(HarborSpec {
        rotate_every: "1s".into(),
        ..f.spec()
    });
    p.mint(&f.cluster).await.unwrap();
    f.harbor.lock().unwrap().robots.clear();
    tokio::time::sleep(Duration::from_millis(900)).await;
    let c = p.mint(&f.cluster).await.expect("recreating mint").remove(0);
    assert!(
        f.harbor
            .lock()
            .unwrap()
            .accepts(&c.username, c.password.expose())
    );
}

#[tokio::test]
async fn cleanup_deletes_the_robot_and_clears_the_note() {
    let f = start().await;
    let p = f.provider(f.spec());
    p.mint(&f.cluster).await.unwrap();
    let id = *f.harbor.lock().unwrap().robots.keys().next().unwrap();
    p.cleanup(&f.cluster).await.expect("cleanup");
    assert!(f.harbor.lock().unwrap().robots.is_empty());
    assert_eq!(f.log().last().unwrap(), &format!("DELETE /robots/{id}"));
    assert_eq!(p.status_note(), None);
    // Cleaning up twice is harmless.
    p.cleanup(&f.cluster).await.expect("second cleanup");
}

#[tokio::test]
async fn cleanup_after_a_restart_finds_our_robot_by_name() {
    let f = start().await;
    f.provider(f.spec()).mint(&f.cluster).await.unwrap();
    // A new instance, as after a controller restart: it never minted.
    f.provider(f.spec())
        .cleanup(&f.cluster)
        .await
        .expect("cleanup");
    assert!(f.harbor.lock().unwrap().robots.is_empty());
}

#[tokio::test]
async fn wrong_admin_password_is_a_401_error_that_does_not_leak_it() {
    let f = start().await;
    let p = f.provider(f.spec());
    let wrong = admin_cluster("not-the-password-either");
    let err = p.mint(&wrong).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("401"), "{text}");
    assert!(!text.contains("not-the-password-either"), "{text}");
    assert!(!text.contains(ADMIN_PASSWORD), "{text}");
    assert!(f.harbor.lock().unwrap().robots.is_empty());
}

#[tokio::test]
async fn missing_admin_secret_is_named() {
    let f = start().await;
    let err = f
        .provider(f.spec())
        .mint(&TestCluster::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProviderError::SecretNotFound { ref name, .. } if name == "harbor-admin"),
        "{err}"
    );
}

#[tokio::test]
async fn server_error_fails_the_mint_and_the_next_mint_recovers() {
    let f = start().await;
    let p = f.provider(f.spec());
    f.harbor.lock().unwrap().fail_next = 1;
    let err = p.mint(&f.cluster).await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    let c = p.mint(&f.cluster).await.expect("recovered").remove(0);
    assert!(
        f.harbor
            .lock()
            .unwrap()
            .accepts(&c.username, c.password.expose())
    );
}

#[tokio::test]
async fn server_error_during_rotation_keeps_the_robot_for_the_next_try() {
    let f = start().await;
    let p = f.provider(HarborSpec {
        rotate_every: "1s".into(),
        ..f.spec()
    });
    p.mint(&f.cluster).await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    f.harbor.lock().unwrap().fail_next = 1;
    assert!(p.mint(&f.cluster).await.is_err());
    let c = p.mint(&f.cluster).await.expect("retry rotates").remove(0);
    let h = f.harbor.lock().unwrap();
    assert_eq!(
        h.robots.len(),
        1,
        "the retry rotated, it did not create another robot"
    );
    assert!(h.accepts(&c.username, c.password.expose()));
}

#[tokio::test]
async fn a_slow_harbor_hits_the_timeout() {
    let f = start().await;
    f.harbor.lock().unwrap().delay = Some(Duration::from_secs(3));
    let mut ctx = BuildContext::new("slow");
    ctx.timeout = Duration::from_secs(1);
    let p = build(&CredentialSpec::Harbor(f.spec()), &ctx).unwrap();
    let err = p.mint(&f.cluster).await.unwrap_err();
    assert!(
        matches!(
            err,
            ProviderError::Timeout {
                provider: "harbor",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn admin_credentials_are_never_the_minted_credential() {
    let f = start().await;
    let creds = f.provider(f.spec()).mint(&f.cluster).await.unwrap();
    for c in &creds {
        assert_ne!(c.username, ADMIN_USER);
        assert_ne!(c.password.expose(), ADMIN_PASSWORD);
        assert!(!format!("{c:?}").contains(c.password.expose().as_str()));
    }
}

#[tokio::test]
async fn a_system_robot_gets_every_project_only_when_the_spec_says_so() {
    let f = start().await;
    let everything = f.provider(HarborSpec {
        projects: vec!["*".into()],
        ..f.spec()
    });
    everything.mint(&f.cluster).await.expect("mint");
    let body = f.harbor.lock().unwrap().last_create_body.clone().unwrap();
    assert_eq!(body["permissions"][0]["namespace"], "*");
    let ctx = BuildContext::new("team-a-pulls");
    let none = build(
        &CredentialSpec::Harbor(HarborSpec {
            projects: vec![],
            ..f.spec()
        }),
        &ctx,
    );
    let err = none
        .err()
        .expect("a system robot without projects is refused");
    assert!(err.to_string().contains("needs projects"), "{err}");
}

#[tokio::test]
async fn plain_http_is_refused_unless_insecure_and_then_noted() {
    let f = start().await;
    let ctx = BuildContext::new("team-a-pulls");
    let refused = build(
        &CredentialSpec::Harbor(HarborSpec {
            insecure: false,
            ..f.spec()
        }),
        &ctx,
    );
    let err = refused.err().expect("http:// without insecure is refused");
    assert!(err.to_string().contains("in clear"), "{err}");
    let p = f.provider(f.spec());
    p.mint(&f.cluster).await.expect("mint");
    assert!(p.status_note().unwrap().contains("insecure"));
}

/// A new process is handed what was distributed: it takes the robot over
/// with that secret and rotates nothing until rotation is due.
#[tokio::test]
async fn a_restored_robot_is_not_rotated_before_it_is_due() {
    let f = start().await;
    let first = f.provider(f.spec());
    let minted = first.mint(&f.cluster).await.expect("mint");
    let before = f.log().len();

    let second = f.provider(f.spec());
    second.restore(&minted, Utc::now() - chrono::Duration::hours(1));
    let again = second.mint(&f.cluster).await.expect("mint");
    assert_eq!(again[0].password.expose(), minted[0].password.expose());
    let calls: Vec<String> = f.log()[before..].to_vec();
    assert!(
        calls.iter().all(|c| c.starts_with("GET /robots")),
        "only a lookup of the robot's id: {calls:?}"
    );
    assert!(second.status_note().unwrap().contains("id "));
    let c = &again[0];
    assert!(
        f.harbor
            .lock()
            .unwrap()
            .accepts(&c.username, c.password.expose())
    );

    // Restored from a secret rotated 20 h ago: rotation (at 18 h) is due.
    let third = f.provider(f.spec());
    third.restore(&again, Utc::now() - chrono::Duration::hours(20));
    let rotated = third.mint(&f.cluster).await.expect("mint");
    assert_ne!(rotated[0].password.expose(), minted[0].password.expose());
    assert!(f.log().iter().any(|c| c.starts_with("PATCH /robots/")));
}

#[tokio::test]
async fn a_failed_delete_is_reported_and_the_retry_deletes() {
    let f = start().await;
    let p = f.provider(f.spec());
    p.mint(&f.cluster).await.expect("mint");
    f.harbor.lock().unwrap().fail_next = 1;
    assert!(p.cleanup(&f.cluster).await.is_err(), "a 503 is an error");
    assert_eq!(f.harbor.lock().unwrap().robots.len(), 1, "still there");
    p.cleanup(&f.cluster).await.expect("the retry deletes");
    assert!(f.harbor.lock().unwrap().robots.is_empty());
}

#[tokio::test]
async fn an_oversized_answer_is_refused() {
    let f = start().await;
    f.harbor.lock().unwrap().pad_lists = 2 * 1024 * 1024;
    let p = f.provider(f.spec());
    let err = p.cleanup(&f.cluster).await.expect_err("refused");
    assert!(err.to_string().contains("larger than 1024 KiB"), "{err}");
}
