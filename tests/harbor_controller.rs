//! A Harbor entry through the whole controller, against the stand-in and the
//! loopback server in `providers/tests/common/harbor.rs`, which follows
//! Harbor's v2 robot API (no real Harbor can run here): what a restart, a
//! failover and a deletion do to the robot.

#[path = "../providers/tests/common/harbor.rs"]
mod harbor;
use regbridge_test_support as support;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use regbridge_standin::{Resource, StandIn};
use serde_json::{Value, json};
use support::*;

const T: Duration = Duration::from_secs(20);

fn admin_secret() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "harbor-admin", "namespace": CONTROLLER_NS},
        "data": {"username": STANDARD.encode(harbor::ADMIN_USER),
                 "password": STANDARD.encode(harbor::ADMIN_PASSWORD)}
    })
}

fn spec(url: &str) -> Value {
    json!({
        "secretName": "regcred",
        // The stub is no registry: nothing to verify against.
        "verify": "Off",
        "credentials": [{"harbor": {
            "url": url, "insecure": true, "project": "team-a", "robotName": "puller",
            "adminSecretRef": {"namespace": CONTROLLER_NS, "name": "harbor-admin"}}}],
        "namespaces": {"include": ["team-a"]},
    })
}

fn seed(s: &StandIn) {
    s.create(&Resource::SECRETS, Some(CONTROLLER_NS), admin_secret())
        .unwrap();
    namespace_with_default_sa(s, "team-a", json!({}));
}

fn log(h: &harbor::Shared) -> Vec<String> {
    h.lock().unwrap().log.clone()
}

/// A restart (or a failover to another replica) takes over the robot's
/// current secret from the composed Secret: no rotation, which would revoke
/// the secret every namespace holds, and no new robot.
#[tokio::test]
async fn a_restart_takes_the_robot_over_without_rotating_it() {
    let (robots, url) = harbor::serve().await;
    let mut h = Harness::start_with(seed).await;
    h.create_resource("company", spec(&url));
    wait_for("the robot's secret distributed", T, || {
        h.secret("team-a", "regcred").is_some()
    })
    .await;
    let distributed = docker_config(&h.secret("team-a", "regcred").unwrap());
    let calls_before = log(&robots).len();

    h.restart().await;
    wait_for("a reconcile after the restart", T, || {
        h.metrics
            .reconciles
            .get_or_create(&regbridge::ops::metrics::ReconcileLabels {
                resource: "company".into(),
                result: "ok",
            })
            .get()
            > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after: Vec<String> = log(&robots)[calls_before..].to_vec();
    assert!(
        after.is_empty(),
        "Harbor was called after the restart: {after:?}"
    );
    assert_eq!(
        docker_config(&h.secret("team-a", "regcred").unwrap()),
        distributed,
        "the copies still hold the same secret"
    );
    let host = url.trim_start_matches("http://");
    let auth = &distributed["auths"][host];
    assert!(robots.lock().unwrap().accepts(
        auth["username"].as_str().unwrap(),
        auth["password"].as_str().unwrap()
    ));
    h.stop().await;
}

/// A resource deleted while no controller ran: the next one deletes the
/// robot from the spec alone, and the finalizer stays until Harbor confirms.
#[tokio::test]
async fn a_resource_deleted_before_the_controller_started_has_its_robot_deleted() {
    let (robots, url) = harbor::serve().await;
    robots
        .lock()
        .unwrap()
        .seed("team-a+puller", "managed by regbridge for company");
    // Harbor fails the first delete.
    let h = Harness::start_with(|s| {
        seed(s);
        let mut cps = cluster_pull_secret("company", spec(&url));
        cps["metadata"]["finalizers"] = json!(["regbridge.dev/cleanup"]);
        s.create(&Resource::CLUSTER_PULL_SECRETS, None, cps)
            .unwrap();
        s.delete(&Resource::CLUSTER_PULL_SECRETS, None, "company")
            .unwrap();
        robots.lock().unwrap().fail_next = 1;
    })
    .await;
    wait_for("CleanupFailed while Harbor refuses", T, || {
        h.condition("company", "CleanupFailed").map(|c| c.0) == Some("True".into())
            || h.cps("company").is_none()
    })
    .await;
    assert!(
        h.cps("company").is_some(),
        "the finalizer stays while the robot is not deleted"
    );
    wait_for("the resource gone once the robot is deleted", T, || {
        h.cps("company").is_none()
    })
    .await;
    assert!(
        robots.lock().unwrap().robots.is_empty(),
        "the robot is deleted"
    );
    h.stop().await;
}

/// An entry removed from the spec has its robot deleted.
#[tokio::test]
async fn a_removed_entry_has_its_robot_deleted() {
    let (robots, url) = harbor::serve().await;
    let h = Harness::start_with(|s| {
        seed(s);
        s.create(
            &Resource::SECRETS,
            Some(CONTROLLER_NS),
            dockerhub_secret("me", PASSWORD),
        )
        .unwrap();
    })
    .await;
    let mut both = spec(&url);
    both["credentials"]
        .as_array_mut()
        .unwrap()
        .push(json!({"static": {"secretRef": {"namespace": CONTROLLER_NS, "name": "dockerhub"}}}));
    h.create_resource("company", both);
    wait_for("a robot", T, || robots.lock().unwrap().robots.len() == 1).await;

    let mut cps = h.cps("company").unwrap();
    cps["spec"]["credentials"].as_array_mut().unwrap().remove(0);
    h.server
        .update(&Resource::CLUSTER_PULL_SECRETS, None, cps)
        .unwrap();
    wait_for("the robot deleted", T, || {
        robots.lock().unwrap().robots.is_empty()
    })
    .await;
    h.stop().await;
}
