//! A GAR credential per tenant through the whole controller: the tenant's
//! ServiceAccount token from the stand-in's TokenRequest, exchanged at a
//! Google STS stub and then at an iamcredentials stub for the tenant's Google
//! service account. The stubs (`providers/tests/common/google_sts.rs`) follow
//! Google's published APIs, since no Google endpoint can be reached here:
//! STS's RFC 8693 token exchange (`POST /v1/token`, form-encoded, checking
//! the subject token's `aud` as a pool provider does) and IAM Service
//! Account Credentials `generateAccessToken` (Bearer federated token). Every
//! assertion about the cloud side reads the stubs' request logs.

#[path = "../providers/tests/common/google_sts.rs"]
mod google_sts;
use regbridge_test_support as support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use google_sts::{AUDIENCE, GSA};
use serde_json::{Value, json};
use support::*;

const T: Duration = Duration::from_secs(30);
const HOST: &str = "europe-west1-docker.pkg.dev";

fn tenant_spec(team: &str) -> Value {
    json!({
        "secretName": "gar-pull",
        // The registry host is not reachable from a test: nothing to verify.
        "verify": "Off",
        "credentials": [{"gar": {
            "registries": [HOST],
            "identity": {
                "serviceAccountRef": {"namespace": team, "name": "puller"},
                "audience": AUDIENCE,
                "googleServiceAccount": GSA,
            }
        }}],
        "namespaces": {"include": [team]}
    })
}

fn condition_message(h: &Harness, name: &str, type_: &str) -> Option<String> {
    let cps = h.cps(name)?;
    cps.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["message"].as_str().map(String::from))
}

#[tokio::test]
async fn per_tenant_gar_credential_carries_the_tenants_identity_and_a_missing_sa_is_an_error() {
    let (google, endpoints) = google_sts::serve().await;
    google.lock().unwrap().token_audience = Some(AUDIENCE.into());
    // SAFETY: this binary has one test, and it sets the environment before
    // starting anything that reads it.
    unsafe { endpoints.install() };
    let h = Harness::start_with(|s| {
        namespace_with_default_sa(s, "team-a", json!({}));
        service_account(s, "team-a", "puller", &[]);
        // team-b's resource names a ServiceAccount that does not exist.
        namespace_with_default_sa(s, "team-b", json!({}));
        namespace_with_default_sa(s, "team-c", json!({}));
    })
    .await;
    h.create_resource("team-a-gar", tenant_spec("team-a"));
    h.create_resource("team-b-gar", tenant_spec("team-b"));

    // team-a: minted as team-a's Google service account, in team-a only.
    wait_for("team-a's credential distributed", T, || {
        h.secret("team-a", "gar-pull").is_some()
    })
    .await;
    let cfg = docker_config(&h.secret("team-a", "gar-pull").unwrap());
    let entry = cfg["auths"][HOST].clone();
    assert_eq!(entry["username"], "oauth2accesstoken");
    let password = entry["password"].as_str().unwrap().to_owned();
    assert!(
        password.starts_with("ya29.impersonated-"),
        "the impersonated token, not the federated one: {password}"
    );
    assert!(
        h.secret("team-c", "gar-pull").is_none(),
        "team-c is selected by neither"
    );

    // 1. The TokenRequest: team-a's ServiceAccount, for the pool provider.
    let token_requests: Vec<(String, Value)> = h
        .server
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/token"))
        .map(|r| (r.path, r.body.unwrap_or_default()))
        .collect();
    let team_a: Vec<_> = token_requests
        .iter()
        .filter(|(p, _)| p.ends_with("/namespaces/team-a/serviceaccounts/puller/token"))
        .collect();
    assert!(!team_a.is_empty());
    assert_eq!(team_a[0].1["spec"]["audiences"], json!([AUDIENCE]));

    {
        let g = google.lock().unwrap();
        // 2. STS got the stand-in's token for team-a/puller, and nobody else's.
        assert!(!g.sts_log.is_empty());
        for call in &g.sts_log {
            let claims = call.claims.as_ref().expect("the subject token is a JWT");
            assert_eq!(claims["sub"], "system:serviceaccount:team-a:puller");
            assert_eq!(claims["aud"], json!([AUDIENCE]));
            assert!(
                claims["jti"]
                    .as_str()
                    .is_some_and(|j| j.starts_with("standin-"))
            );
            assert_eq!(call.form["audience"], AUDIENCE);
            assert_eq!(
                call.form["grant_type"],
                "urn:ietf:params:oauth:grant-type:token-exchange"
            );
        }
        // 3. The federated token asked for team-a's Google service account.
        assert!(!g.iam_log.is_empty());
        for call in &g.iam_log {
            assert_eq!(call.email, GSA);
            let bearer = call.bearer.as_deref().unwrap_or_default();
            assert!(g.issued_federated.contains(bearer), "{bearer}");
        }
        assert_eq!(
            g.metadata_requests, 0,
            "the controller's own identity is unused"
        );
    }

    // Status: Ready, with iamcredentials' expiry (1200 s), and no token.
    wait_for("team-a Ready", T, || {
        h.condition("team-a-gar", "Ready").map(|c| c.0) == Some("True".into())
    })
    .await;
    let status = h.cps("team-a-gar").unwrap()["status"].clone();
    assert_eq!(status["registries"][0]["provider"], "gar");
    let expires: DateTime<Utc> = status["registries"][0]["expiresAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let expected = Utc::now() + chrono::Duration::seconds(1200);
    assert!((expires - expected).num_seconds().abs() < 60, "{expires}");
    assert!(!serde_json::to_string(&status).unwrap().contains("ya29"));

    // team-b: its missing ServiceAccount is an error on its status, and
    // nothing is distributed for it: no fallback to another identity.
    wait_for("team-b's refresh failing", T, || {
        h.condition("team-b-gar", "CredentialsReady")
            .is_some_and(|(s, _)| s == "False")
    })
    .await;
    let message = condition_message(&h, "team-b-gar", "CredentialsReady").unwrap();
    assert!(
        message.contains("team-b/puller") && message.contains("404"),
        "{message}"
    );
    assert!(!message.contains("ya29"), "{message}");
    assert_eq!(
        h.condition("team-b-gar", "Ready").map(|c| c.0).as_deref(),
        Some("False")
    );
    assert!(h.secret("team-b", "gar-pull").is_none());
    assert!(
        h.server.requests().iter().any(|r| r.method == "POST"
            && r.path
                .ends_with("/namespaces/team-b/serviceaccounts/puller/token")),
        "team-b's token was requested (and refused)"
    );
    {
        let g = google.lock().unwrap();
        assert!(
            g.sts_log.iter().all(|c| c
                .claims
                .as_ref()
                .is_some_and(|c| c["sub"] == "system:serviceaccount:team-a:puller")),
            "nothing reached STS for team-b"
        );
        assert_eq!(g.metadata_requests, 0);
    }

    // A resource for team-c that names team-a's ServiceAccount is refused
    // before anything is minted: a tenant's identity serves only the
    // namespaces its resource selects.
    let sts_calls = google.lock().unwrap().sts_log.len();
    let mut stolen = tenant_spec("team-c");
    stolen["credentials"][0]["gar"]["identity"]["serviceAccountRef"]["namespace"] = json!("team-a");
    stolen["secretName"] = json!("stolen-pull");
    h.create_resource("team-c-stolen", stolen);
    wait_for("team-c's resource refused", T, || {
        h.condition("team-c-stolen", "Ready")
            == Some(("False".into(), "IdentityNotSelected".into()))
    })
    .await;
    let message = condition_message(&h, "team-c-stolen", "Ready").unwrap();
    assert!(message.contains("team-a/puller"), "{message}");
    assert!(h.secret("team-c", "stolen-pull").is_none());
    assert!(
        h.secret("regbridge", "team-c-stolen").is_none(),
        "nothing composed"
    );
    assert_eq!(
        google.lock().unwrap().sts_log.len(),
        sts_calls,
        "nothing was exchanged for it"
    );
    h.stop().await;
}
