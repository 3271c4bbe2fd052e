//! `regbridge mint --config deploy/examples/aks-workload-identity-acr.yaml
//! --verify`, run as a user runs it inside an AKS pod, against loopback
//! stand-ins for Microsoft Entra and ACR (`providers/tests/common/azure.rs`):
//! there is no Azure here, and a test must not need a cloud account, so the
//! stubs follow the published APIs exactly (Entra's token endpoint with a
//! federated client assertion, ACR's `/oauth2/exchange` and `/oauth2/token`).
//! Behind the ACR stand-in is the real `docker-registry` with token auth
//! that tests/run.sh starts (`REGBRIDGE_TOKEN_REGISTRY_*`), so `--verify`
//! proves the minted entry with the registry handshake.
//!
//! The example file is used as shipped. The environment is what the AKS
//! Workload Identity webhook injects (`AZURE_FEDERATED_TOKEN_FILE`,
//! `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`), plus the stubs' CA as `--ca-file`
//! and `REGBRIDGE_CONNECT_TO`, which sends `login.microsoftonline.com` and
//! `myregistry.azurecr.io` to the stubs while TLS still checks those names.

#[path = "../providers/tests/common/azure.rs"]
mod azure;
use regbridge_test_support as support;

use std::path::PathBuf;
use std::process::Output;

use azure::{Azure, CLIENT_ID, LOGIN_HOST, REGISTRY_NAME, Stub, TENANT};
use chrono::{DateTime, SecondsFormat};
use support::{peer, repo};

fn workdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("regbridge-acr-mint-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A stub whose Entra trusts the controller's ServiceAccount for
/// `CLIENT_ID`, with the token-auth registry behind it when there is one.
async fn stub(subject: &str) -> Stub {
    azure::serve(Azure {
        federated: vec![(CLIENT_ID.into(), subject.into())],
        backend: azure::Backend::from_env(),
        ..Azure::default()
    })
    .await
}

/// `regbridge mint --verify` on the shipped example, with the pod's
/// Workload Identity environment; returns the output and the projected
/// token it used.
async fn mint_example(stub: &Stub, tag: &str) -> (Output, String) {
    let dir = workdir(tag);
    let token = azure::projected_token("regbridge", "regbridge");
    std::fs::write(dir.join("azure-identity-token"), &token).unwrap();
    std::fs::write(dir.join("ca.crt"), &stub.ca_pem).unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_regbridge"));
    command
        .args(["mint", "--verify", "--verify-timeout", "10", "--config"])
        .arg(repo().join("deploy/examples/aks-workload-identity-acr.yaml"));
    for var in [
        "AZURE_AUTHORITY_HOST",
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        "IDENTITY_ENDPOINT",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REGBRIDGE_MINT_VERIFY",
    ] {
        command.env_remove(var);
    }
    let out = command
        .env(
            "AZURE_FEDERATED_TOKEN_FILE",
            dir.join("azure-identity-token"),
        )
        .env("AZURE_CLIENT_ID", CLIENT_ID)
        .env("AZURE_TENANT_ID", TENANT)
        .env("REGBRIDGE_CA_FILE", dir.join("ca.crt"))
        .env("REGBRIDGE_CONNECT_TO", stub.connect_to())
        .output()
        .await
        .expect("the regbridge binary runs");
    (out, token)
}

/// The whitespace-separated columns of the line that starts with `first`,
/// after the header line that starts with `header`.
fn columns(stdout: &str, header: &str, first: &str) -> Vec<String> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with(header))
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no {first} line under {header} in:\n{stdout}"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn the_aks_example_mints_and_verifies_with_the_tokens_own_expiry() {
    if peer("REGBRIDGE_TOKEN_REGISTRY_URL").is_none() {
        return;
    }
    let stub = stub("system:serviceaccount:regbridge:regbridge").await;
    let (out, token) = mint_example(&stub, "ok").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");

    let azure = stub.azure.lock().unwrap();
    let entra = azure.seen("/oauth2/v2.0/token");
    assert_eq!(entra.len(), 1);
    assert_eq!(entra[0].host, LOGIN_HOST, "Entra at its real name");
    assert_eq!(entra[0].path, format!("/{TENANT}/oauth2/v2.0/token"));
    assert_eq!(
        entra[0].form["client_assertion"], token,
        "the projected token file is the client assertion"
    );
    let exchange = azure.seen("/oauth2/exchange");
    assert_eq!(exchange.len(), 1);
    assert_eq!(exchange[0].host, REGISTRY_NAME);
    assert_eq!(exchange[0].form["service"], REGISTRY_NAME);

    // The expiry shown is the refresh token's own `exp`.
    let (refresh, _, exp) = azure.refresh_tokens[0].clone();
    let expected = DateTime::from_timestamp(exp, 0)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    assert_eq!(
        columns(&stdout, "REGISTRY", REGISTRY_NAME),
        [REGISTRY_NAME, "acr", &expected]
    );
    // The handshake went through ACR's token realm with that refresh token,
    // and the registry behind it accepted the bearer token.
    assert_eq!(
        columns(&stdout, "HOST", REGISTRY_NAME),
        [REGISTRY_NAME, "Verified"]
    );
    assert!(!azure.seen("/oauth2/token").is_empty(), "{:?}", azure.log);
    for text in [&stdout, &stderr] {
        assert!(!text.contains(&refresh), "{text}");
        assert!(!text.contains(&token), "{text}");
    }
}

/// An Entra refusal and a refused exchange each fail `mint` with a message
/// that names the cause, and print no token.
#[tokio::test]
async fn refusals_fail_mint_with_the_cause_and_no_token() {
    // Entra knows another subject than this pod's ServiceAccount.
    let refusing = stub("system:serviceaccount:elsewhere:other").await;
    let (out, token) = mint_example(&refusing, "entra").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("AADSTS700213"), "{stderr}");
    assert!(
        stderr.contains(&format!("workload identity {CLIENT_ID}")),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&token) && !stderr.contains("eyJ"),
        "{stderr}"
    );

    let unauthorized = stub("system:serviceaccount:regbridge:regbridge").await;
    unauthorized.azure.lock().unwrap().exchange_status = Some(axum::http::StatusCode::UNAUTHORIZED);
    let (out, _) = mint_example(&unauthorized, "exchange").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("myregistry.azurecr.io refused the token exchange: answered 401"),
        "{stderr}"
    );
    assert!(!stderr.contains("eyJ"), "{stderr}");
}
