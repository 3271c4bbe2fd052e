//! The `ecr` provider through the real `aws-config`, `aws-sdk-ecr` and
//! `aws-sdk-sts` against `moto_server` (`REGBRIDGE_MOTO_URL`), reached the way
//! a user would redirect the SDK: `AWS_ENDPOINT_URL`.
//!
//! The SDK reads its configuration from process-global environment variables,
//! so every scenario takes `ENV` for its whole run and sets the complete
//! environment it needs; the scenarios in this binary run one at a time.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;
use regbridge_providers::spec::{CredentialSpec, EcrSpec, IdentitySpec, ServiceAccountRef};
use regbridge_providers::{BuildContext, NoCluster, ProviderError, RegistryCredential, build};

use common::{TestCluster, peer};

static ENV: Mutex<()> = Mutex::new(());

/// What the AWS environment looks like for one scenario.
enum Identity<'a> {
    /// Static keys in `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    Keys,
    /// IRSA: `AWS_ROLE_ARN` plus a token file.
    Irsa {
        role: &'a str,
        token_file: &'a std::path::Path,
    },
    /// Nothing at all in the default chain.
    None,
}

/// Sets the whole AWS environment for a scenario. Callers hold `ENV`.
fn set_env(endpoint: &str, identity: Identity<'_>) {
    let scratch = std::env::temp_dir().join("regbridge-no-such-aws-file");
    // SAFETY: every test in this binary holds `ENV` while it touches or reads
    // the environment, so no other thread reads it concurrently.
    unsafe {
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_ROLE_SESSION_NAME",
            "AWS_PROFILE",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_ENDPOINT_URL_ECR",
            "AWS_ENDPOINT_URL_STS",
        ] {
            std::env::remove_var(var);
        }
        std::env::set_var("AWS_ENDPOINT_URL", endpoint);
        std::env::set_var("AWS_CONFIG_FILE", &scratch);
        std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", &scratch);
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        match identity {
            Identity::Keys => {
                std::env::set_var("AWS_ACCESS_KEY_ID", "AKIAREGBRIDGETEST");
                std::env::set_var("AWS_SECRET_ACCESS_KEY", "controller-secret-key-do-not-leak");
            }
            Identity::Irsa { role, token_file } => {
                std::env::set_var("AWS_ROLE_ARN", role);
                std::env::set_var("AWS_WEB_IDENTITY_TOKEN_FILE", token_file);
                std::env::set_var("AWS_ROLE_SESSION_NAME", "regbridge-irsa-test");
            }
            Identity::None => {}
        }
    }
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn spec(region: &str) -> EcrSpec {
    EcrSpec {
        region: region.into(),
        ..Default::default()
    }
}

async fn mint(
    spec: EcrSpec,
    cluster: &dyn regbridge_providers::Cluster,
) -> Result<Vec<RegistryCredential>, ProviderError> {
    let mut ctx = BuildContext::new("ecr-test");
    ctx.timeout = Duration::from_secs(20);
    build(&CredentialSpec::Ecr(spec), &ctx)?.mint(cluster).await
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    ENV.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn irsa_web_identity_from_env_mints_a_token_for_the_role_account() {
    let Some(moto) = peer("REGBRIDGE_MOTO_URL") else {
        return;
    };
    let _env = lock();
    let dir = tempdir("irsa");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "projected-sa-token-from-kubelet").unwrap();
    set_env(
        &moto,
        Identity::Irsa {
            role: "arn:aws:iam::111122223333:role/regbridge",
            token_file: &token_file,
        },
    );
    let creds = run(mint(spec("eu-west-1"), &NoCluster)).expect("IRSA mint");
    assert_eq!(creds.len(), 1, "{creds:?}");
    let c = &creds[0];
    assert_eq!(c.username, "AWS");
    assert!(
        c.host.ends_with(".dkr.ecr.eu-west-1.amazonaws.com"),
        "{}",
        c.host
    );
    assert!(
        !c.host.contains("://"),
        "the scheme is stripped: {}",
        c.host
    );
    assert!(!c.password.expose().is_empty());
}

#[test]
fn without_any_identity_the_error_says_so_and_nothing_else() {
    let Some(moto) = peer("REGBRIDGE_MOTO_URL") else {
        return;
    };
    let _env = lock();
    set_env(&moto, Identity::None);
    let err = run(mint(spec("eu-west-1"), &NoCluster)).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            ProviderError::Remote {
                provider: "ecr",
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains("GetAuthorizationToken"), "{text}");
    assert!(text.contains("no usable AWS credentials"), "{text}");
}

#[test]
fn role_arn_is_assumed_on_top_of_the_base_identity() {
    let Some(moto) = peer("REGBRIDGE_MOTO_URL") else {
        return;
    };
    let _env = lock();
    set_env(&moto, Identity::Keys);
    let base = run(mint(spec("eu-west-1"), &NoCluster)).expect("base mint");
    let assumed = run(mint(
        EcrSpec {
            role_arn: Some("arn:aws:iam::444455556666:role/ecr-pull".into()),
            external_id: Some("tenant-a".into()),
            ..spec("eu-west-1")
        },
        &NoCluster,
    ))
    .expect("assumed-role mint");
    assert_eq!(assumed.len(), 1);
    assert!(
        assumed[0]
            .host
            .ends_with(".dkr.ecr.eu-west-1.amazonaws.com")
    );
    // moto issues tokens for the account of the calling principal: the
    // assumed role's account, not the base keys' account.
    assert_ne!(
        base[0].password, assumed[0].password,
        "the assumed role must be the caller"
    );
    assert!(
        assumed[0].host.starts_with("444455556666."),
        "{}",
        assumed[0].host
    );
}

#[test]
fn registry_ids_yield_one_host_per_registry() {
    let Some(moto) = peer("REGBRIDGE_MOTO_URL") else {
        return;
    };
    let _env = lock();
    set_env(&moto, Identity::Keys);
    let creds = run(mint(
        EcrSpec {
            registry_ids: vec!["111111111111".into(), "222222222222".into()],
            ..spec("us-west-2")
        },
        &NoCluster,
    ))
    .expect("mint");
    let hosts: Vec<_> = creds.iter().map(|c| c.host.as_str()).collect();
    assert_eq!(
        hosts,
        [
            "111111111111.dkr.ecr.us-west-2.amazonaws.com",
            "222222222222.dkr.ecr.us-west-2.amazonaws.com"
        ]
    );
}

#[test]
fn per_tenant_identity_exchanges_the_service_account_token_for_the_role() {
    let Some(moto) = peer("REGBRIDGE_MOTO_URL") else {
        return;
    };
    let _env = lock();
    // The controller itself has no AWS identity at all: the tenant's token is
    // all that is used.
    set_env(&moto, Identity::None);
    let cluster = TestCluster::default().with_token("team-a-ecr-puller-token");
    let sa = ServiceAccountRef {
        namespace: "team-a".into(),
        name: "ecr-puller".into(),
    };
    let creds = run(mint(
        EcrSpec {
            role_arn: Some("arn:aws:iam::777788889999:role/team-a-pull".into()),
            identity: Some(IdentitySpec {
                service_account_ref: sa.clone(),
            }),
            ..spec("eu-central-1")
        },
        &cluster,
    ))
    .expect("tenant mint");
    assert_eq!(creds.len(), 1);
    assert!(
        creds[0]
            .host
            .starts_with("777788889999.dkr.ecr.eu-central-1"),
        "{}",
        creds[0].host
    );
    let asked = cluster.token_requests.lock().unwrap().clone();
    assert_eq!(asked, vec![(sa, "sts.amazonaws.com".to_owned())]);
}

#[test]
fn per_tenant_identity_without_a_token_fails_with_the_service_account_named() {
    let Some(moto) = peer("REGBRIDGE_MOTO_URL") else {
        return;
    };
    let _env = lock();
    set_env(&moto, Identity::Keys);
    let err = run(mint(
        EcrSpec {
            role_arn: Some("arn:aws:iam::777788889999:role/team-a-pull".into()),
            identity: Some(IdentitySpec {
                service_account_ref: ServiceAccountRef {
                    namespace: "team-a".into(),
                    name: "ecr-puller".into(),
                },
            }),
            ..spec("eu-central-1")
        },
        &TestCluster::default(),
    ))
    .unwrap_err();
    assert!(err.to_string().contains("team-a/ecr-puller"), "{err}");
}

#[test]
fn past_expiry_from_moto_is_reported_as_is() {
    let Some(moto) = peer("REGBRIDGE_MOTO_URL") else {
        return;
    };
    let _env = lock();
    set_env(&moto, Identity::Keys);
    let creds = run(mint(spec("eu-west-1"), &NoCluster)).expect("mint");
    let expires = creds[0].expires_at.expect("ECR always reports an expiry");
    // moto answers a fixed 2015-01-01; the scheduler, not the provider,
    // decides what to do with an expiry in the past.
    assert!(expires < Utc::now(), "{expires}");
    assert_eq!(expires.timestamp(), 1_420_070_400);
}

#[test]
fn unreachable_endpoint_is_a_categorised_error_without_secrets() {
    let _env = lock();
    // A port nothing listens on: bind, read the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    set_env(&format!("http://127.0.0.1:{port}"), Identity::Keys);
    let err = run(mint(spec("eu-west-1"), &NoCluster)).unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains("controller-secret-key-do-not-leak"),
        "{text}"
    );
    assert!(!text.contains("AKIAREGBRIDGETEST"), "{text}");
    assert!(
        text.contains("cannot reach") || matches!(err, ProviderError::Timeout { .. }),
        "{text}"
    );
}

#[test]
fn debug_of_minted_credentials_redacts_the_password() {
    let Some(moto) = peer("REGBRIDGE_MOTO_URL") else {
        return;
    };
    let _env = lock();
    set_env(&moto, Identity::Keys);
    let creds = run(mint(spec("eu-west-1"), &NoCluster)).expect("mint");
    let printed = format!("{creds:?}");
    assert!(
        !printed.contains(creds[0].password.expose().as_str()),
        "{printed}"
    );
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("regbridge-ecr-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
