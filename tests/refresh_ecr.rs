//! A short-lived ECR credential through the whole controller: per-tenant
//! identity via the stand-in's TokenRequest, then the real `aws-config` /
//! `aws-sdk-sts` / `aws-sdk-ecr` against `moto_server` (`REGBRIDGE_MOTO_URL`).
//! moto reports an expiry in 2015; the controller must clamp it, never
//! distribute an expired credential, and never spin.

use regbridge_test_support as support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use support::*;

const T: Duration = Duration::from_secs(30);

/// Only the endpoint: the tenant's identity comes from its ServiceAccount
/// token, and the controller itself has no AWS credentials at all.
fn point_the_sdk_at(moto: &str) {
    let scratch = std::env::temp_dir().join("regbridge-no-such-aws-file");
    // SAFETY: this binary has one test, and it sets the environment before
    // starting anything that reads it.
    unsafe {
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_ROLE_ARN",
            "AWS_PROFILE",
        ] {
            std::env::remove_var(var);
        }
        std::env::set_var("AWS_ENDPOINT_URL", moto);
        std::env::set_var("AWS_CONFIG_FILE", &scratch);
        std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", &scratch);
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    }
}

#[tokio::test]
async fn per_tenant_ecr_credential_is_minted_once_clamped_and_distributed() {
    let Some(moto) = peer("REGBRIDGE_MOTO_URL") else {
        return;
    };
    point_the_sdk_at(&moto);
    let h = Harness::start_with(|s| {
        namespace_with_default_sa(s, "team-a", json!({}));
        service_account(s, "team-a", "puller", &[]);
        namespace_with_default_sa(s, "team-b", json!({}));
    })
    .await;
    let spec = json!({
        "secretName": "ecr-pull",
        "verify": "Off", // moto's ECR hosts are not real registries
        "credentials": [{"ecr": {
            "region": "eu-west-1",
            "roleArn": "arn:aws:iam::123456789012:role/team-a-pull",
            "identity": {"serviceAccountRef": {"namespace": "team-a", "name": "puller"}}
        }}],
        "namespaces": {"include": ["team-a"]}
    });
    h.create_resource("team-a-ecr", spec);
    wait_for("ECR credential distributed", T, || {
        h.secret("team-a", "ecr-pull").is_some()
    })
    .await;
    let cfg = docker_config(&h.secret("team-a", "ecr-pull").unwrap());
    let (host, entry) = cfg["auths"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    assert!(host.ends_with(".dkr.ecr.eu-west-1.amazonaws.com"), "{host}");
    assert_eq!(entry["username"], "AWS");
    assert!(entry["password"].as_str().is_some_and(|p| !p.is_empty()));
    assert!(
        h.secret("team-b", "ecr-pull").is_none(),
        "only the namespaces the resource selects"
    );

    // The token was requested for the tenant's ServiceAccount, for STS.
    let token_requests: Vec<Value> = h
        .server
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "POST"
                && r.path
                    .ends_with("/namespaces/team-a/serviceaccounts/puller/token")
        })
        .filter_map(|r| r.body)
        .collect();
    assert!(!token_requests.is_empty());
    assert_eq!(
        token_requests[0]["spec"]["audiences"],
        json!(["sts.amazonaws.com"])
    );

    // moto's 2015 expiry is clamped into the future; status shows it.
    wait_for("status", T, || {
        h.condition("team-a-ecr", "Ready").map(|c| c.0) == Some("True".into())
    })
    .await;
    let status = h.cps("team-a-ecr").unwrap()["status"].clone();
    let expires: DateTime<Utc> = status["registries"][0]["expiresAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        expires > Utc::now(),
        "never an expired credential: {expires}"
    );
    assert_eq!(status["registries"][0]["provider"], "ecr");

    // One mint per refresh, not per reconcile: unrelated churn mints nothing.
    let mints_before = token_requests.len();
    for i in 0..5 {
        namespace_with_default_sa(&h.server, &format!("other-{i}"), json!({}));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mints_after = h
        .server
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/serviceaccounts/puller/token"))
        .count();
    assert_eq!(
        mints_after, mints_before,
        "namespace events must not re-mint"
    );
    let status_text = serde_json::to_string(&status).unwrap();
    assert!(!status_text.contains(entry["password"].as_str().unwrap()));
    h.stop().await;
}
