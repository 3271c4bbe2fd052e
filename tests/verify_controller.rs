//! Verification inside the controller, against the real `docker-registry`
//! with htpasswd (`REGBRIDGE_REGISTRY_URL`, `_USER`, `_PASSWORD`, started by
//! tests/run.sh): a good credential is verified and distributed; under the
//! default `Enforce`, a rejected one never reaches a namespace and the last
//! good one keeps serving.

use regbridge_test_support as support;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use regbridge_standin::Resource;
use serde_json::{Value, json};
use support::*;

const T: Duration = Duration::from_secs(30);

fn registry_secret(server: &str, user: &str, password: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "registry", "namespace": CONTROLLER_NS},
        "type": "Opaque",
        "data": {"username": STANDARD.encode(user), "password": STANDARD.encode(password),
                 "server": STANDARD.encode(server)}
    })
}

fn registry_status(h: &Harness) -> Value {
    h.cps("company")
        .and_then(|c| c.pointer("/status/registries/0").cloned())
        .unwrap_or(Value::Null)
}

/// A registry behind a private CA (`REGBRIDGE_TLS_REGISTRY_URL`, its CA in
/// `REGBRIDGE_TLS_REGISTRY_CA`): this process trusts only the system store,
/// which lacks that CA, so the entry's `caSecretRef` is what makes it
/// verifiable, and without it the registry is `Unreachable`.
#[tokio::test]
async fn a_ca_secret_ref_verifies_a_registry_behind_a_private_ca() {
    let (Some(url), Some(ca), Some(user), Some(password)) = (
        peer("REGBRIDGE_TLS_REGISTRY_URL"),
        peer("REGBRIDGE_TLS_REGISTRY_CA"),
        peer("REGBRIDGE_REGISTRY_USER"),
        peer("REGBRIDGE_REGISTRY_PASSWORD"),
    ) else {
        return;
    };
    let pem = std::fs::read(&ca).expect("the test CA");
    let h = Harness::start_with(|s| {
        s.create(
            &Resource::SECRETS,
            Some(CONTROLLER_NS),
            registry_secret(&url, &user, &password),
        )
        .unwrap();
        s.create(
            &Resource::SECRETS,
            Some(CONTROLLER_NS),
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "corp-ca", "namespace": CONTROLLER_NS},
                   "data": {"ca.crt": STANDARD.encode(&pem)}}),
        )
        .unwrap();
        namespace_with_default_sa(s, "a", json!({}));
    })
    .await;
    let entry = |ca: bool| {
        let mut e = json!({"secretRef": {"namespace": CONTROLLER_NS, "name": "registry"}});
        if ca {
            e["caSecretRef"] = json!({"namespace": CONTROLLER_NS, "name": "corp-ca"});
        }
        json!({"secretName": "regcred", "credentials": [{"static": e}]})
    };
    h.create_resource("company", entry(false));
    wait_for("Unreachable without the CA", T, || {
        registry_status(&h)["verification"]["result"] == "Unreachable"
    })
    .await;
    let message = registry_status(&h)["verification"]["message"].clone();
    assert!(
        message
            .as_str()
            .unwrap_or_default()
            .contains("UnknownIssuer"),
        "{message}"
    );

    let mut cps = h.cps("company").unwrap();
    cps["spec"] = entry(true);
    h.server
        .update(&Resource::CLUSTER_PULL_SECRETS, None, cps)
        .unwrap();
    wait_for("Verified with caSecretRef", T, || {
        registry_status(&h)["verification"]["result"] == "Verified"
    })
    .await;
    wait_for("Verified=True", T, || {
        h.condition("company", "Verified").map(|c| c.0) == Some("True".into())
    })
    .await;
    let status = h.cps("company").unwrap()["status"].to_string();
    assert!(!status.contains(&password), "{status}");
    h.stop().await;
}

#[tokio::test]
async fn enforce_keeps_a_rejected_credential_out_of_every_namespace() {
    let (Some(url), Some(user), Some(password)) = (
        peer("REGBRIDGE_REGISTRY_URL"),
        peer("REGBRIDGE_REGISTRY_USER"),
        peer("REGBRIDGE_REGISTRY_PASSWORD"),
    ) else {
        return;
    };
    let server = format!("http://{url}");
    let h = Harness::start_with(|s| {
        s.create(
            &Resource::SECRETS,
            Some(CONTROLLER_NS),
            registry_secret(&server, &user, &password),
        )
        .unwrap();
        namespace_with_default_sa(s, "a", json!({}));
    })
    .await;
    let spec = json!({
        "secretName": "regcred",
        "credentials": [{"static": {"secretRef": {"namespace": CONTROLLER_NS, "name": "registry"}}}],
    });
    h.create_resource("company", spec);
    let password_in_a = |h: &Harness| {
        h.secret("a", "regcred").map(|s| {
            docker_config(&s)["auths"][&server]["password"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
    };
    wait_for("verified and distributed", T, || {
        password_in_a(&h).as_deref() == Some(password.as_str())
            && registry_status(&h)["verification"]["result"] == "Verified"
    })
    .await;
    wait_for("Verified=True", T, || {
        h.condition("company", "Verified").map(|c| c.0) == Some("True".into())
    })
    .await;

    // Rotate the source to a password the registry refuses.
    h.server
        .update(
            &Resource::SECRETS,
            Some(CONTROLLER_NS),
            registry_secret(&server, &user, "wrong-password-123"),
        )
        .unwrap();
    wait_for("Verified=False", T, || {
        h.condition("company", "Verified") == Some(("False".into(), "Rejected".into()))
    })
    .await;
    assert_eq!(
        password_in_a(&h).as_deref(),
        Some(password.as_str()),
        "the last good credential keeps serving"
    );
    let source = h.secret(CONTROLLER_NS, "company").unwrap();
    assert_eq!(
        docker_config(&source)["auths"][&server]["password"],
        json!(password),
        "nor does it reach the source"
    );
    assert_eq!(registry_status(&h)["verification"]["result"], "Rejected");
    assert!(
        registry_status(&h)["verification"]["message"]
            .as_str()
            .unwrap()
            .contains("UNAUTHORIZED")
    );
    assert_eq!(
        h.condition("company", "CredentialsReady").map(|c| c.0),
        Some("False".into())
    );
    let events = h.server.list(&Resource::EVENTS_V1, Some("default"));
    assert!(events.iter().any(|e| e["reason"] == "CredentialRejected"));
    let text = serde_json::to_string(&(h.cps("company").unwrap(), &events)).unwrap();
    assert!(
        !text.contains("wrong-password-123") && !text.contains(password.as_str()),
        "no secret in status or Events"
    );
    assert!(
        h.metrics
            .encode()
            .contains("regbridge_registry_verifications_total{resource=\"company\"")
    );

    // Fixing the source restores it.
    h.server
        .update(
            &Resource::SECRETS,
            Some(CONTROLLER_NS),
            registry_secret(&server, &user, &password),
        )
        .unwrap();
    wait_for("Verified again", T, || {
        h.condition("company", "Verified").map(|c| c.0) == Some("True".into())
    })
    .await;
    h.stop().await;
}
