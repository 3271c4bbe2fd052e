//! The `acr` provider against loopback stand-ins for Microsoft Entra, IMDS
//! and ACR's `/oauth2/exchange` (`common/azure.rs`). There is no Azure here,
//! and a test must not need a cloud account, so the stubs follow the
//! published APIs exactly: the Entra token endpoint with a federated client
//! assertion, IMDS's managed identity endpoint, and ACR's OAuth2 exchange
//! (Azure/acr `docs/AAD-OAuth.md`). Their request logs show who asked for
//! what.
//!
//! The provider reads its identity from the environment, as AKS sets it up,
//! so the tests that set it take turns.

mod common;

use std::time::Duration;

use chrono::DateTime;
use common::TestCluster;
use common::azure::{self, ACR_USER, AUDIENCE, Azure, CLIENT_ID, SCOPE, Stub, TENANT};
use regbridge_providers::spec::{AcrSpec, CredentialSpec, IdentitySpec, ServiceAccountRef};
use regbridge_providers::{
    BuildContext, Cluster, NoCluster, ProviderError, RegistryCredential, Trust, build,
};

/// The environment is process-global: tests that set it take turns.
static ENV: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const AZURE_VARS: [&str; 9] = [
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_AUTHORITY_HOST",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "MSI_ENDPOINT",
    "IMDS_ENDPOINT",
];

/// Callers hold `ENV`. Clears every Azure variable, then sets `vars`.
fn set_env(vars: &[(&str, &str)]) {
    // SAFETY: every test that touches the environment holds `ENV`.
    unsafe {
        for var in AZURE_VARS {
            std::env::remove_var(var);
        }
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
    }
}

/// Workload Identity as the AKS webhook sets it up, with the projected
/// token of `regbridge/regbridge` in a file; returns the file's content.
fn workload_identity(stub: &Stub, tag: &str) -> String {
    let token = azure::projected_token("regbridge", "regbridge");
    let path =
        std::env::temp_dir().join(format!("regbridge-acr-{tag}-{}-token", std::process::id()));
    std::fs::write(&path, &token).unwrap();
    set_env(&[
        ("AZURE_FEDERATED_TOKEN_FILE", path.to_str().unwrap()),
        ("AZURE_CLIENT_ID", CLIENT_ID),
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_AUTHORITY_HOST", &stub.authority()),
    ]);
    token
}

/// A stub whose Entra trusts the controller's ServiceAccount for
/// `CLIENT_ID`.
async fn stub() -> Stub {
    azure::serve(Azure {
        federated: vec![(
            CLIENT_ID.into(),
            "system:serviceaccount:regbridge:regbridge".into(),
        )],
        ..Azure::default()
    })
    .await
}

async fn mint(
    stub: &Stub,
    spec: AcrSpec,
    cluster: &dyn Cluster,
) -> Result<Vec<RegistryCredential>, ProviderError> {
    let trust = Trust::system()
        .with_pem(stub.ca_pem.as_bytes(), "the stub's CA")
        .unwrap();
    let mut ctx = BuildContext::new("acr-test").with_trust(trust);
    ctx.timeout = Duration::from_secs(10);
    build(&CredentialSpec::Acr(spec), &ctx)?.mint(cluster).await
}

fn one_registry(stub: &Stub) -> AcrSpec {
    AcrSpec {
        registry: Some(stub.registry()),
        ..AcrSpec::default()
    }
}

fn assert_secret_free(err: &ProviderError, secrets: &[&str]) {
    let shown = format!("{err} {err:?}");
    for s in secrets {
        assert!(!shown.contains(s), "{shown}");
    }
    assert!(!shown.contains("eyJ"), "no JWT in {shown}");
}

#[tokio::test]
async fn workload_identity_token_is_exchanged_at_each_registry_with_the_tokens_own_expiry() {
    let _env = ENV.lock().await;
    let stub = stub().await;
    let assertion = workload_identity(&stub, "wi");
    // The same stub under two login server names.
    let second = format!("localhost:{}", stub.https.port());
    let spec = AcrSpec {
        registries: vec![stub.registry(), second.clone()],
        ..AcrSpec::default()
    };
    let creds = mint(&stub, spec, &NoCluster).await.expect("mint");

    let azure = stub.azure.lock().unwrap();
    let entra = azure.seen("/oauth2/v2.0/token");
    assert_eq!(entra.len(), 1, "one Entra token for both registries");
    assert_eq!(entra[0].path, format!("/{TENANT}/oauth2/v2.0/token"));
    assert_eq!(
        entra[0].form["client_assertion"], assertion,
        "the projected token file's content is the client assertion"
    );
    assert_eq!(entra[0].form["scope"], SCOPE);
    assert_eq!(entra[0].form["client_id"], CLIENT_ID);
    let exchanges = azure.seen("/oauth2/exchange");
    let services: Vec<&str> = exchanges
        .iter()
        .map(|s| s.form["service"].as_str())
        .collect();
    assert_eq!(services, [stub.registry().as_str(), second.as_str()]);
    for ex in &exchanges {
        assert_eq!(ex.form["grant_type"], "access_token");
        assert_eq!(ex.form["tenant"], TENANT);
        assert_eq!(ex.form["access_token"], azure.access_tokens[0].0);
        assert_eq!(ex.host, ex.form["service"], "each exchange at its registry");
    }
    let hosts: Vec<&str> = creds.iter().map(|c| c.host.as_str()).collect();
    assert_eq!(hosts, services);
    for (cred, (token, service, exp)) in creds.iter().zip(&azure.refresh_tokens) {
        assert_eq!(&cred.host, service);
        assert_eq!(cred.username, ACR_USER);
        assert_eq!(cred.password.expose(), token);
        assert_eq!(
            cred.expires_at,
            DateTime::from_timestamp(*exp, 0),
            "the refresh token's exp"
        );
    }
}

#[tokio::test]
async fn one_provider_reuses_its_entra_token_and_exchanges_anew_per_mint() {
    let _env = ENV.lock().await;
    let stub = stub().await;
    workload_identity(&stub, "reuse");
    let trust = Trust::system()
        .with_pem(stub.ca_pem.as_bytes(), "the stub's CA")
        .unwrap();
    let provider = build(
        &CredentialSpec::Acr(one_registry(&stub)),
        &BuildContext::new("acr-test").with_trust(trust),
    )
    .unwrap();
    let first = provider.mint(&NoCluster).await.unwrap();
    let second = provider.mint(&NoCluster).await.unwrap();
    assert_ne!(first[0].password, second[0].password, "a new refresh token");
    let azure = stub.azure.lock().unwrap();
    assert_eq!(azure.seen("/oauth2/v2.0/token").len(), 1);
    assert_eq!(azure.seen("/oauth2/exchange").len(), 2);
}

#[tokio::test]
async fn managed_identity_token_comes_from_imds() {
    let _env = ENV.lock().await;
    let stub = azure::serve(Azure {
        managed_identities: vec!["user-assigned-mi".into()],
        ..Azure::default()
    })
    .await;
    set_env(&[("AZURE_POD_IDENTITY_AUTHORITY_HOST", &stub.imds())]);
    let spec = AcrSpec {
        client_id: Some("user-assigned-mi".into()),
        ..one_registry(&stub)
    };
    let creds = mint(&stub, spec, &NoCluster).await.expect("mint");
    assert_eq!(creds[0].username, ACR_USER);
    let azure = stub.azure.lock().unwrap();
    let imds = azure.seen("/metadata/identity/oauth2/token");
    assert_eq!(imds.len(), 1);
    assert_eq!(imds[0].form["client_id"], "user-assigned-mi");
    assert_eq!(
        imds[0].form["resource"],
        "https://containerregistry.azure.net"
    );
    assert!(azure.seen("/oauth2/v2.0/token").is_empty());
    let exchange = &azure.seen("/oauth2/exchange")[0];
    assert_eq!(
        exchange.form["tenant"], TENANT,
        "a managed identity's tenant is its token's tid"
    );
}

#[tokio::test]
async fn an_identity_imds_does_not_know_is_named_without_its_answer() {
    let _env = ENV.lock().await;
    let stub = azure::serve(Azure::default()).await;
    set_env(&[("AZURE_POD_IDENTITY_AUTHORITY_HOST", &stub.imds())]);
    let spec = AcrSpec {
        client_id: Some("not-assigned".into()),
        ..one_registry(&stub)
    };
    let err = mint(&stub, spec, &NoCluster).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("managed identity not-assigned"), "{text}");
    assert!(text.contains("HTTP 400"), "{text}");
    assert!(
        !text.contains("Identity not found"),
        "IMDS's body stays out: {text}"
    );
}

#[tokio::test]
async fn tenant_identity_uses_the_service_accounts_token_as_the_assertion() {
    let _env = ENV.lock().await;
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
        ],
        ..Azure::default()
    })
    .await;
    // The controller has an identity of its own, which must not be used.
    workload_identity(&stub, "tenant");
    let sa_token = azure::projected_token("team-a", "puller");
    let cluster = TestCluster::default().with_token(&sa_token);
    let spec = AcrSpec {
        client_id: Some("team-a-client".into()),
        identity: Some(IdentitySpec {
            service_account_ref: ServiceAccountRef {
                namespace: "team-a".into(),
                name: "puller".into(),
            },
        }),
        ..one_registry(&stub)
    };
    let creds = mint(&stub, spec, &cluster).await.expect("mint");

    let requests = cluster.token_requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        (
            requests[0].0.namespace.as_str(),
            requests[0].0.name.as_str()
        ),
        ("team-a", "puller")
    );
    assert_eq!(requests[0].1, AUDIENCE);
    let azure = stub.azure.lock().unwrap();
    let entra = azure.seen("/oauth2/v2.0/token");
    assert_eq!(
        entra.len(),
        1,
        "only the tenant's identity asked: {entra:?}"
    );
    assert_eq!(entra[0].form["client_id"], "team-a-client");
    assert_eq!(entra[0].form["client_assertion"], sa_token);
    assert_eq!(entra[0].form["scope"], SCOPE);
    let (issued, client) = &azure.access_tokens[0];
    assert_eq!(client, "team-a-client");
    assert_eq!(
        &azure.seen("/oauth2/exchange")[0].form["access_token"],
        issued
    );
    assert_eq!(creds[0].password.expose(), &azure.refresh_tokens[0].0);
}

#[tokio::test]
async fn a_missing_tenant_service_account_fails_and_never_falls_back() {
    let _env = ENV.lock().await;
    let stub = stub().await;
    workload_identity(&stub, "missing-sa");
    let spec = AcrSpec {
        client_id: Some("team-a-client".into()),
        tenant_id: Some(TENANT.into()),
        identity: Some(IdentitySpec {
            service_account_ref: ServiceAccountRef {
                namespace: "team-a".into(),
                name: "gone".into(),
            },
        }),
        ..one_registry(&stub)
    };
    // This cluster answers every TokenRequest with an error, as the API
    // server does for a ServiceAccount that does not exist.
    let err = mint(&stub, spec, &TestCluster::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Cluster(_)), "{err}");
    assert!(err.to_string().contains("team-a/gone"), "{err}");
    let azure = stub.azure.lock().unwrap();
    assert!(
        azure.log.is_empty(),
        "nothing asked Entra or ACR: {:?}",
        azure.log
    );
}

#[tokio::test]
async fn an_entra_refusal_keeps_its_aadsts_code_and_no_token() {
    let _env = ENV.lock().await;
    // Entra trusts another subject than the controller's ServiceAccount.
    let stub = azure::serve(Azure {
        federated: vec![(CLIENT_ID.into(), "system:serviceaccount:other:other".into())],
        ..Azure::default()
    })
    .await;
    let assertion = workload_identity(&stub, "refused");
    let err = mint(&stub, one_registry(&stub), &NoCluster)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("AADSTS700213"), "{text}");
    assert!(text.contains(CLIENT_ID) && text.contains(TENANT), "{text}");
    assert!(
        !text.contains("Trace ID"),
        "Entra's description stays out: {text}"
    );
    assert_secret_free(&err, &[&assertion]);
}

#[tokio::test]
async fn exchange_refusals_are_named_by_status_with_no_token() {
    let _env = ENV.lock().await;
    let stub = stub().await;
    let assertion = workload_identity(&stub, "exchange");
    for (status, words) in [
        (axum::http::StatusCode::UNAUTHORIZED, ["401", "AcrPull"]),
        (axum::http::StatusCode::NOT_FOUND, ["404", "login server"]),
    ] {
        stub.azure.lock().unwrap().exchange_status = Some(status);
        let err = mint(&stub, one_registry(&stub), &NoCluster)
            .await
            .unwrap_err();
        let text = err.to_string();
        for w in words {
            assert!(text.contains(w), "{text}");
        }
        assert!(text.contains(&stub.registry()), "{text}");
        let issued: Vec<String> = stub
            .azure
            .lock()
            .unwrap()
            .access_tokens
            .iter()
            .map(|(t, _)| t.clone())
            .collect();
        let mut secrets: Vec<&str> = issued.iter().map(String::as_str).collect();
        secrets.push(&assertion);
        assert_secret_free(&err, &secrets);
    }
}

#[tokio::test]
async fn a_registry_that_does_not_resolve_is_named() {
    let _env = ENV.lock().await;
    let stub = stub().await;
    workload_identity(&stub, "unknown");
    let spec = AcrSpec {
        registry: Some("no-such-registry.invalid".into()),
        ..AcrSpec::default()
    };
    let err = mint(&stub, spec, &NoCluster).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("no-such-registry.invalid does not resolve"),
        "{text}"
    );
}

#[tokio::test]
async fn a_refresh_token_without_exp_is_malformed_not_assumed() {
    let _env = ENV.lock().await;
    let stub = stub().await;
    stub.azure.lock().unwrap().omit_exp = true;
    workload_identity(&stub, "no-exp");
    let err = mint(&stub, one_registry(&stub), &NoCluster)
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("exp"), "{err}");
    assert_secret_free(&err, &[]);
}

#[tokio::test]
async fn no_managed_identity_endpoint_ends_in_a_message_saying_what_was_awaited() {
    let _env = ENV.lock().await;
    let stub = azure::serve(Azure::default()).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    set_env(&[(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        &format!("http://{closed}"),
    )]);
    let trust = Trust::system()
        .with_pem(stub.ca_pem.as_bytes(), "the stub's CA")
        .unwrap();
    let mut ctx = BuildContext::new("acr-test").with_trust(trust);
    ctx.timeout = Duration::from_secs(3);
    let err = build(&CredentialSpec::Acr(one_registry(&stub)), &ctx)
        .unwrap()
        .mint(&NoCluster)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("no Microsoft Entra token within 3 s"),
        "{text}"
    );
    assert!(
        text.contains(&format!("http://{closed}: cannot connect")),
        "{text}"
    );
}
