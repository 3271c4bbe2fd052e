//! Per-tenant ACR credentials through the whole controller, on the
//! in-process API stand-in: the tenant's TokenRequest (audience
//! `api://AzureADTokenExchange`, subject its ServiceAccount) is the client
//! assertion at Entra for the tenant's identity, and the exchanged refresh
//! token reaches only the tenant's namespaces. There is no Azure here, and a
//! test must not need a cloud account, so Entra and ACR are the loopback
//! stand-ins of `providers/tests/common/azure.rs`, which follow the
//! published APIs exactly; their request log shows whose identity was used.
//!
//! The controller itself has a working Workload Identity in this test, so a
//! fallback to it would succeed and show in the log: it must not happen.

#[path = "../providers/tests/common/azure.rs"]
mod azure;
use regbridge_test_support as support;

use std::time::Duration;

use azure::{ACR_USER, AUDIENCE, Azure, CLIENT_ID, TENANT};
use chrono::{DateTime, SecondsFormat};
use serde_json::{Value, json};
use support::*;

const T: Duration = Duration::from_secs(30);

fn acr_spec(registry: &str, team: &str) -> Value {
    json!({
        "secretName": format!("{team}-acr"),
        // The stub's refresh tokens are proven by tests/acr_mint.rs and the
        // skopeo test; here the question is whose identity minted them.
        "verify": "Off",
        "credentials": [{"acr": {
            "registry": registry,
            "tenantId": TENANT,
            "clientId": format!("{team}-client"),
            "identity": {"serviceAccountRef": {"namespace": team, "name": "puller"}}
        }}],
        "namespaces": {"selector": {"matchLabels": {"team": team}}}
    })
}

/// The condition's status, reason and message.
fn condition(h: &Harness, name: &str, type_: &str) -> Option<(String, String, String)> {
    let cps = h.cps(name)?;
    let conditions = cps.pointer("/status/conditions")?.as_array()?.clone();
    conditions.iter().find(|c| c["type"] == type_).map(|c| {
        let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
        (s("status"), s("reason"), s("message"))
    })
}

#[tokio::test]
async fn a_tenants_acr_credential_carries_only_its_identity_and_a_missing_service_account_is_an_error()
 {
    let stub = azure::serve(Azure {
        federated: vec![
            (
                CLIENT_ID.into(),
                "system:serviceaccount:regbridge:regbridge".into(),
            ),
            (
                "team-a-client".into(),
                "system:serviceaccount:team-a:puller".into(),
            ),
            (
                "team-b-client".into(),
                "system:serviceaccount:team-b:puller".into(),
            ),
        ],
        ..Azure::default()
    })
    .await;
    let dir = std::env::temp_dir().join(format!("regbridge-acr-controller-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.crt"), &stub.ca_pem).unwrap();
    std::fs::write(
        dir.join("token"),
        azure::projected_token("regbridge", "regbridge"),
    )
    .unwrap();
    // SAFETY: this binary has one test, and it sets the environment before
    // starting anything that reads it. The stub's CA becomes the system
    // store (read once per process).
    unsafe {
        std::env::set_var("SSL_CERT_FILE", dir.join("ca.crt"));
        std::env::set_var("AZURE_AUTHORITY_HOST", stub.authority());
        std::env::set_var("AZURE_FEDERATED_TOKEN_FILE", dir.join("token"));
        std::env::set_var("AZURE_CLIENT_ID", CLIENT_ID);
        std::env::set_var("AZURE_TENANT_ID", TENANT);
    }
    let h = Harness::start_with(|s| {
        namespace_with_default_sa(s, "team-a", json!({"team": "team-a"}));
        service_account(s, "team-a", "puller", &[]);
        // team-b's puller ServiceAccount was never created.
        namespace_with_default_sa(s, "team-b", json!({"team": "team-b"}));
        namespace_with_default_sa(s, "team-c", json!({}));
    })
    .await;
    h.create_resource("team-a-acr", acr_spec(&stub.registry(), "team-a"));
    h.create_resource("team-b-acr", acr_spec(&stub.registry(), "team-b"));

    wait_for("team-a's credential distributed", T, || {
        h.secret("team-a", "team-a-acr").is_some()
    })
    .await;
    let cfg = docker_config(&h.secret("team-a", "team-a-acr").unwrap());
    let entry = &cfg["auths"][stub.registry()];
    assert_eq!(entry["username"], ACR_USER);
    let refresh = entry["password"].as_str().unwrap().to_owned();
    assert_eq!(
        azure::claims(&refresh).unwrap()["sub"],
        "team-a-client",
        "minted with team-a's identity"
    );
    for ns in ["team-b", "team-c"] {
        assert!(h.secret(ns, "team-a-acr").is_none(), "not in {ns}");
    }

    // The TokenRequest: team-a's ServiceAccount, for Entra.
    let token_requests: Vec<(String, Value)> = h
        .server
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/token"))
        .map(|r| (r.path.clone(), r.body.unwrap_or_default()))
        .collect();
    let team_a: Vec<&Value> = token_requests
        .iter()
        .filter(|(p, _)| p.ends_with("/namespaces/team-a/serviceaccounts/puller/token"))
        .map(|(_, b)| b)
        .collect();
    assert!(!team_a.is_empty(), "{token_requests:?}");
    assert_eq!(team_a[0]["spec"]["audiences"], json!([AUDIENCE]));

    // Entra saw that token as team-a's client assertion, and was never asked
    // for the controller's own identity.
    wait_for("team-b's refusal on status", T, || {
        condition(&h, "team-b-acr", "CredentialsReady").is_some_and(|c| c.0 == "False")
    })
    .await;
    let log = stub.azure.lock().unwrap().seen("/oauth2/v2.0/token");
    assert!(!log.is_empty());
    for seen in &log {
        assert_eq!(seen.form["client_id"], "team-a-client", "{log:?}");
        let claims = azure::claims(&seen.form["client_assertion"]).unwrap();
        assert_eq!(claims["sub"], "system:serviceaccount:team-a:puller");
        assert_eq!(claims["aud"], json!([AUDIENCE]));
    }

    // The expiry on status is the refresh token's `exp`.
    wait_for("team-a Ready", T, || {
        h.condition("team-a-acr", "Ready").map(|c| c.0) == Some("True".into())
    })
    .await;
    let status = h.cps("team-a-acr").unwrap()["status"].clone();
    let exp = azure::claims(&refresh).unwrap()["exp"].as_i64().unwrap();
    assert_eq!(
        status["registries"][0]["expiresAt"],
        DateTime::from_timestamp(exp, 0)
            .unwrap()
            .to_rfc3339_opts(SecondsFormat::Secs, true)
    );
    assert_eq!(status["registries"][0]["provider"], "acr");
    assert!(!serde_json::to_string(&status).unwrap().contains(&refresh));

    // team-b: its ServiceAccount is missing, which is an error on status and
    // no credential at all, not the controller's identity.
    let (status, _, message) = condition(&h, "team-b-acr", "CredentialsReady").unwrap();
    assert_eq!(status, "False");
    assert!(
        message.contains("ServiceAccount team-b/puller"),
        "{message}"
    );
    assert!(message.contains("404"), "{message}");
    assert!(h.secret("team-b", "team-b-acr").is_none());
    assert!(
        stub.azure
            .lock()
            .unwrap()
            .log
            .iter()
            .all(|s| s.form.get("client_id").is_none_or(|c| c == "team-a-client")),
        "no request for team-b's or the controller's identity"
    );
    h.stop().await;
}
