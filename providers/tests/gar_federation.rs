//! The `gar` provider's per-tenant path (`identity`) against loopback
//! servers that follow Google's published Workload Identity Federation APIs
//! exactly as far as this path uses them: Security Token Service
//! `POST /v1/token` (RFC 8693 token exchange, form-encoded) and IAM Service
//! Account Credentials `generateAccessToken`; see
//! `common/google_sts.rs`. The real ones need a Google Cloud project and a
//! cluster registered as an identity provider, which a test must not depend
//! on. The cluster is an in-memory one that hands out a fixed token and
//! records who asked for which audience.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use chrono::Utc;
use regbridge_providers::spec::{CredentialSpec, GarIdentitySpec, GarSpec, ServiceAccountRef};
use regbridge_providers::{BuildContext, ProviderError, RegistryCredential, build};

use common::google_sts::{self, AUDIENCE, GSA, SCOPE};
use common::{TestCluster, secret_ref};

const REGISTRIES: [&str; 2] = ["europe-west1-docker.pkg.dev", "gcr.io"];
/// What the in-memory cluster hands out for the tenant's ServiceAccount.
const SUBJECT: &str = "k8s-token-for-team-a-puller";

/// The endpoints are process-global environment: tests take turns.
static ENV: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn identity(audience: &str, gsa: Option<&str>) -> GarSpec {
    GarSpec {
        registries: REGISTRIES.iter().map(|r| r.to_string()).collect(),
        identity: Some(GarIdentitySpec {
            service_account_ref: ServiceAccountRef {
                namespace: "team-a".into(),
                name: "puller".into(),
            },
            audience: audience.into(),
            google_service_account: gsa.map(String::from),
            ..GarIdentitySpec::default()
        }),
        ..GarSpec::default()
    }
}

async fn mint(
    spec: GarSpec,
    cluster: &TestCluster,
) -> Result<Vec<RegistryCredential>, ProviderError> {
    let mut ctx = BuildContext::new("gar-tenant-test");
    ctx.timeout = Duration::from_secs(10);
    build(&CredentialSpec::Gar(spec), &ctx)?.mint(cluster).await
}

/// Starts the servers and points the provider at them; the guard keeps other
/// tests off the environment.
async fn google() -> (google_sts::Shared, tokio::sync::MutexGuard<'static, ()>) {
    let (google, endpoints) = google_sts::serve().await;
    let guard = ENV.lock().await;
    // SAFETY: every test in this binary holds `ENV` while it uses the
    // environment.
    unsafe { endpoints.install() };
    (google, guard)
}

fn tenant_cluster() -> TestCluster {
    TestCluster::default().with_token(SUBJECT)
}

fn assert_expires_in(creds: &[RegistryCredential], seconds: i64) {
    let hosts: Vec<_> = creds.iter().map(|c| c.host.as_str()).collect();
    assert_eq!(hosts, REGISTRIES);
    for c in creds {
        assert_eq!(c.username, "oauth2accesstoken");
        let expected = Utc::now() + chrono::Duration::seconds(seconds);
        let got = c.expires_at.expect("tokens expire");
        assert!(
            (got - expected).num_seconds().abs() < 30,
            "{got} vs {expected}"
        );
    }
}

fn token_requests(cluster: &TestCluster) -> Vec<(String, String)> {
    cluster
        .token_requests
        .lock()
        .unwrap()
        .iter()
        .map(|(sa, aud)| (format!("{}/{}", sa.namespace, sa.name), aud.clone()))
        .collect()
}

#[tokio::test]
async fn tenant_token_is_exchanged_at_sts_then_impersonates_the_google_service_account() {
    let (google, _env) = google().await;
    google.lock().unwrap().subject_token = Some(SUBJECT.into());
    let cluster = tenant_cluster();
    let creds = mint(identity(AUDIENCE, Some(GSA)), &cluster)
        .await
        .expect("mint");

    // The password and its expiry are iamcredentials' (1200 s), not STS's.
    assert_eq!(creds[0].password.expose(), "ya29.impersonated-2");
    assert_eq!(creds[1].password, creds[0].password);
    assert_expires_in(&creds, 1200);

    // 1. A token for the tenant's ServiceAccount, for the pool provider.
    assert_eq!(
        token_requests(&cluster),
        [("team-a/puller".to_owned(), AUDIENCE.to_owned())]
    );
    let g = google.lock().unwrap();
    // 2. Exactly that token, exchanged at STS.
    assert_eq!(g.sts_log.len(), 1);
    let form = &g.sts_log[0].form;
    let field = |k: &str| form.get(k).map(String::as_str);
    assert_eq!(
        field("grant_type"),
        Some("urn:ietf:params:oauth:grant-type:token-exchange")
    );
    assert_eq!(field("audience"), Some(AUDIENCE));
    assert_eq!(field("scope"), Some(SCOPE));
    assert_eq!(field("subject_token"), Some(SUBJECT));
    assert_eq!(
        field("subject_token_type"),
        Some("urn:ietf:params:oauth:token-type:jwt")
    );
    assert_eq!(
        field("requested_token_type"),
        Some("urn:ietf:params:oauth:token-type:access_token")
    );
    // 3. The federated token, and only it, asks for the named account.
    assert_eq!(g.iam_log.len(), 1);
    assert_eq!(g.iam_log[0].email, GSA);
    assert_eq!(g.iam_log[0].bearer.as_deref(), Some("ya29.federated-1"));
    assert_eq!(g.iam_log[0].body, serde_json::json!({"scope": [SCOPE]}));
    assert_eq!(
        g.metadata_requests, 0,
        "the controller's identity is unused"
    );
}

#[tokio::test]
async fn without_a_google_service_account_the_federated_token_is_the_password() {
    let (google, _env) = google().await;
    let cluster = tenant_cluster();
    let creds = mint(identity(AUDIENCE, None), &cluster)
        .await
        .expect("mint");
    assert_eq!(creds[0].password.expose(), "ya29.federated-1");
    // STS's `expires_in` (2400 s).
    assert_expires_in(&creds, 2400);
    let g = google.lock().unwrap();
    assert!(g.iam_log.is_empty(), "no impersonation asked for");
    assert_eq!(g.metadata_requests, 0);
}

#[tokio::test]
async fn every_mint_exchanges_a_fresh_token() {
    let (google, _env) = google().await;
    let cluster = tenant_cluster();
    let first = mint(identity(AUDIENCE, Some(GSA)), &cluster).await.unwrap();
    let second = mint(identity(AUDIENCE, Some(GSA)), &cluster).await.unwrap();
    assert_ne!(first[0].password, second[0].password);
    assert_eq!(token_requests(&cluster).len(), 2);
    assert_eq!(google.lock().unwrap().sts_log.len(), 2);
}

#[tokio::test]
async fn gke_cluster_pool_takes_the_token_for_the_pool_and_the_exchange_for_the_cluster() {
    let (google, _env) = google().await;
    let audience = "identitynamespace:regbridge-test.svc.id.goog:https://container.googleapis.com/v1/projects/regbridge-test/locations/europe-west1/clusters/tenants";
    google.lock().unwrap().audience = audience.into();
    let cluster = tenant_cluster();
    mint(identity(audience, Some(GSA)), &cluster)
        .await
        .expect("mint");
    assert_eq!(
        token_requests(&cluster),
        [(
            "team-a/puller".to_owned(),
            "regbridge-test.svc.id.goog".to_owned()
        )]
    );
    let g = google.lock().unwrap();
    assert_eq!(g.sts_log[0].form["audience"], audience);
}

#[tokio::test]
async fn a_missing_service_account_fails_without_falling_back_to_the_controller() {
    let (google, _env) = google().await;
    // No token: the TokenRequest failed (the ServiceAccount is missing, or
    // RBAC refuses it).
    let err = mint(identity(AUDIENCE, Some(GSA)), &TestCluster::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Cluster(_)), "{err:?}");
    assert!(err.to_string().contains("team-a/puller"), "{err}");
    let g = google.lock().unwrap();
    assert!(g.sts_log.is_empty() && g.iam_log.is_empty());
    assert_eq!(
        g.metadata_requests, 0,
        "no fallback to the controller's identity"
    );
}

#[tokio::test]
async fn an_sts_refusal_is_reported_by_status_and_code_without_any_token() {
    let (google, _env) = google().await;
    google.lock().unwrap().sts_status = Some(StatusCode::BAD_REQUEST);
    let err = mint(identity(AUDIENCE, Some(GSA)), &tenant_cluster())
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("STS") && text.contains("400"), "{text}");
    assert!(text.contains("invalid_grant"), "{text}");
    assert!(!text.contains(SUBJECT), "{text}");
    assert!(google.lock().unwrap().iam_log.is_empty());
}

#[tokio::test]
async fn an_impersonation_refusal_names_the_account_without_any_token() {
    let (google, _env) = google().await;
    google.lock().unwrap().impersonable.clear();
    let err = mint(identity(AUDIENCE, Some(GSA)), &tenant_cluster())
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("403") && text.contains("PERMISSION_DENIED"),
        "{text}"
    );
    assert!(text.contains(GSA), "{text}");
    assert!(text.contains("workloadIdentityUser"), "{text}");
    assert!(!text.contains("ya29") && !text.contains(SUBJECT), "{text}");
}

#[tokio::test]
async fn an_sts_answer_without_expires_in_is_malformed_not_guessed() {
    let (google, _env) = google().await;
    google.lock().unwrap().omit_expires_in = true;
    let err = mint(identity(AUDIENCE, None), &tenant_cluster())
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Malformed { .. }), "{err:?}");
    assert!(err.to_string().contains("expires_in"), "{err}");
    assert!(!format!("{err:?}").contains("ya29"), "{err:?}");
}

#[tokio::test]
async fn identity_and_a_key_secret_together_are_refused() {
    let spec = GarSpec {
        key_secret_ref: Some(secret_ref("regbridge", "gcp-key")),
        ..identity(AUDIENCE, None)
    };
    let err = mint(spec, &tenant_cluster()).await.unwrap_err();
    assert!(matches!(err, ProviderError::InvalidSpec(_)), "{err:?}");
}
