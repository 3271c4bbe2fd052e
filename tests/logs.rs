//! No credential ever reaches a log line: the controller runs at `trace`
//! level through distribution, a rotation, a broken source and a deletion,
//! with every line captured, and the passwords never appear.

use regbridge_test_support as support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use regbridge_standin::Resource;
use serde_json::json;
use support::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn credentials_never_reach_the_logs() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let rotated = "rotated-secret-never-logged";
    let h = with_dockerhub(dockerhub_spec(), &["a"]).await;
    let t = Duration::from_secs(10);
    wait_for("distributed", t, || h.secret("a", "regcred").is_some()).await;
    h.server
        .update(
            &Resource::SECRETS,
            Some(CONTROLLER_NS),
            dockerhub_secret("me", rotated),
        )
        .unwrap();
    wait_for("rotated", t, || {
        h.secret("a", "regcred").is_some_and(|s| {
            docker_config(&s)["auths"]["https://index.docker.io/v1/"]["password"] == rotated
        })
    })
    .await;
    let mut broken = dockerhub_secret("me", rotated);
    // Not a credential at all: neither dockerconfigjson nor username/password.
    broken["data"] = json!({"note": "bm90IGEgY3JlZGVudGlhbA=="});
    h.server
        .delete(&Resource::SECRETS, Some(CONTROLLER_NS), "dockerhub")
        .unwrap();
    h.server
        .create(&Resource::SECRETS, Some(CONTROLLER_NS), broken)
        .unwrap();
    wait_for("Ready=False", t, || {
        h.condition("company", "Ready").map(|c| c.0) == Some("False".into())
    })
    .await;
    h.server
        .delete(&Resource::CLUSTER_PULL_SECRETS, None, "company")
        .unwrap();
    wait_for("deleted", t, || h.cps("company").is_none()).await;
    h.stop().await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.lines().count() > 50,
        "the capture saw the controller at work"
    );
    for secret in [PASSWORD, rotated] {
        assert!(!logs.contains(secret), "a password reached the logs");
        let b64 = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("me:{secret}"),
        );
        assert!(!logs.contains(&b64), "an `auth` value reached the logs");
    }
}
