//! End to end against a real registry: a dockerconfigjson rendered by
//! `dockerconfig::render`, from credentials the `static` provider minted,
//! lets `skopeo` push to and inspect a real `docker-registry` (Docker
//! Distribution with htpasswd auth, `REGBRIDGE_REGISTRY_URL`); a wrong
//! password, or no entry for the host, is refused.
//!
//! The same for an `acr` entry: the provider mints through loopback
//! stand-ins for Microsoft Entra and ACR (`common/azure.rs`, which follow the
//! published APIs: there is no Azure here), and skopeo pushes and pulls with
//! the refresh token through ACR's token realm, in front of a real
//! `docker-registry` with token auth (`REGBRIDGE_TOKEN_REGISTRY_URL`).
//!
//! The image is built locally as an OCI layout (one small layer), since this
//! environment cannot pull images from the network.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use regbridge_providers::registry::dockerconfig;
use regbridge_providers::spec::{AcrSpec, CredentialSpec, StaticSpec};
use regbridge_providers::{
    BuildContext, NoCluster, Redacted, RegistryCredential, Trust, Verification, Verifier, build,
};

use common::azure::{self, Azure, CLIENT_ID, TENANT};
use common::{TestCluster, peer, secret_ref};

struct Registry {
    host: String,
    user: String,
    password: String,
}

fn registry() -> Option<Registry> {
    let url = peer("REGBRIDGE_REGISTRY_URL")?;
    let host = url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .to_owned();
    let var = |name: &str| {
        std::env::var(name)
            .unwrap_or_else(|_| panic!("{name} must be set with REGBRIDGE_REGISTRY_URL"))
    };
    Some(Registry {
        host,
        user: var("REGBRIDGE_REGISTRY_USER"),
        password: var("REGBRIDGE_REGISTRY_PASSWORD"),
    })
}

fn workdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("regbridge-skopeo-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A one-layer OCI image layout at `dir/image`, tagged `latest`.
fn make_image(dir: &Path) -> PathBuf {
    let script = r#"
set -euo pipefail
cd "$1"
mkdir -p rootfs image/blobs/sha256
echo "hello from regbridge" > rootfs/hello.txt
tar -C rootfs -cf layer.tar hello.txt
put() { local d; d=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "image/blobs/sha256/$d"; echo "$d"; }
size() { stat -c %s "$1"; }
layer=$(put layer.tar)
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"config":{}}' "$layer" > config.json
config=$(put config.json)
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
  "$config" "$(size config.json)" "$layer" "$(size layer.tar)" > manifest.json
manifest=$(put manifest.json)
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' \
  "$manifest" "$(size manifest.json)" > image/index.json
echo '{"imageLayoutVersion":"1.0.0"}' > image/oci-layout
"#;
    let out = Command::new("bash")
        .args(["-c", script, "make-image"])
        .arg(dir)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "making the image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("image")
}

fn skopeo(dir: &Path, args: &[&str]) -> Output {
    // A policy that accepts anything, so the host's policy.json does not matter.
    let policy = dir.join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    Command::new("skopeo")
        .arg("--policy")
        .arg(&policy)
        .args(args)
        .env("HOME", dir) // no stray ~/.docker/config.json or containers auth
        .env_remove("REGISTRY_AUTH_FILE")
        .output()
        .expect("skopeo is installed (tests/run.sh installs it)")
}

fn write_authfile(dir: &Path, name: &str, creds: &[RegistryCredential]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, dockerconfig::render(creds)).unwrap();
    path
}

/// The registry's credentials as a regbridge user keeps them: a Secret with
/// `username`, `password` and `server`, minted by the `static` provider.
async fn minted(reg: &Registry) -> Vec<RegistryCredential> {
    let cluster = TestCluster::default().with_secret(
        "regbridge",
        "e2e-registry",
        &[
            ("username", reg.user.as_bytes()),
            ("password", reg.password.as_bytes()),
            ("server", reg.host.as_bytes()),
        ],
    );
    let spec = CredentialSpec::Static(StaticSpec {
        secret_ref: Some(secret_ref("regbridge", "e2e-registry")),
        ..StaticSpec::default()
    });
    build(&spec, &BuildContext::new("e2e"))
        .unwrap()
        .mint(&cluster)
        .await
        .expect("static mint")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn rendered_dockerconfigjson_authenticates_to_a_real_registry_and_a_wrong_password_does_not()
{
    let Some(reg) = registry() else { return };
    let dir = workdir("auth");
    let image = make_image(&dir);
    let creds = minted(&reg).await;
    assert_eq!(creds[0].host, reg.host);
    let good = write_authfile(&dir, "good.json", &creds);
    let target = format!("docker://{}/regbridge/hello:latest", reg.host);

    let push = skopeo(
        &dir,
        &[
            "copy",
            "--dest-tls-verify=false",
            "--dest-authfile",
            good.to_str().unwrap(),
            &format!("oci:{}:latest", image.display()),
            &target,
        ],
    );
    assert!(
        push.status.success(),
        "push with the rendered authfile: {}",
        text(&push)
    );

    let inspect = skopeo(
        &dir,
        &[
            "inspect",
            "--tls-verify=false",
            "--authfile",
            good.to_str().unwrap(),
            &target,
        ],
    );
    assert!(
        inspect.status.success(),
        "inspect with the rendered authfile: {}",
        text(&inspect)
    );
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(info["Layers"].as_array().map(Vec::len), Some(1), "{info}");

    let wrong = vec![RegistryCredential {
        password: Redacted::new(format!("{}-revoked", reg.password)),
        ..creds[0].clone()
    }];
    let bad = write_authfile(&dir, "wrong.json", &wrong);
    let refused = skopeo(
        &dir,
        &[
            "inspect",
            "--tls-verify=false",
            "--authfile",
            bad.to_str().unwrap(),
            &target,
        ],
    );
    assert!(
        !refused.status.success(),
        "a wrong password must be refused"
    );
    let msg = text(&refused).to_lowercase();
    assert!(
        msg.contains("unauthorized") || msg.contains("authentication required"),
        "{msg}"
    );

    let other_host = vec![RegistryCredential {
        host: "registry.invalid".into(),
        ..creds[0].clone()
    }];
    let none = write_authfile(&dir, "other.json", &other_host);
    let anonymous = skopeo(
        &dir,
        &[
            "inspect",
            "--tls-verify=false",
            "--authfile",
            none.to_str().unwrap(),
            &target,
        ],
    );
    assert!(
        !anonymous.status.success(),
        "no entry for the host means no access"
    );
}

/// The controller's Workload Identity as the AKS webhook sets it up, aimed
/// at the stub's Entra. No other test in this binary reads these variables.
fn workload_identity(dir: &Path, stub: &azure::Stub) {
    let token = dir.join("azure-identity-token");
    std::fs::write(&token, azure::projected_token("regbridge", "regbridge")).unwrap();
    // SAFETY: the only test here that touches the environment.
    unsafe {
        std::env::set_var("AZURE_FEDERATED_TOKEN_FILE", &token);
        std::env::set_var("AZURE_CLIENT_ID", CLIENT_ID);
        std::env::set_var("AZURE_TENANT_ID", TENANT);
        std::env::set_var("AZURE_AUTHORITY_HOST", stub.authority());
    }
}

/// Multi-threaded: skopeo runs as a blocking child while the stub answers.
#[tokio::test(flavor = "multi_thread")]
async fn an_acr_refresh_token_pushes_and_pulls_through_token_auth_and_a_revoked_one_does_not() {
    if peer("REGBRIDGE_TOKEN_REGISTRY_URL").is_none() {
        return;
    }
    let stub = azure::serve(Azure {
        federated: vec![(
            CLIENT_ID.into(),
            "system:serviceaccount:regbridge:regbridge".into(),
        )],
        backend: azure::Backend::from_env(),
        ..Azure::default()
    })
    .await;
    let dir = workdir("acr");
    workload_identity(&dir, &stub);
    let trust = Trust::system()
        .with_pem(stub.ca_pem.as_bytes(), "the stub's CA")
        .unwrap();
    let spec = CredentialSpec::Acr(AcrSpec {
        registry: Some(stub.registry()),
        ..AcrSpec::default()
    });
    let creds = build(&spec, &BuildContext::new("e2e").with_trust(trust.clone()))
        .unwrap()
        .mint(&NoCluster)
        .await
        .expect("acr mint");
    assert_eq!(creds[0].username, azure::ACR_USER);

    let verifier = Verifier::new(std::time::Duration::from_secs(10))
        .with_trust(trust)
        .unwrap();
    assert_eq!(verifier.verify(&creds[0]).await, Verification::Verified);

    // skopeo trusts the stub's CA through a certificate directory.
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.crt"), &stub.ca_pem).unwrap();
    let certs = certs.to_str().unwrap();
    let image = make_image(&dir);
    let good = write_authfile(&dir, "acr.json", &creds);
    let target = format!("docker://{}/team-a/hello:latest", stub.registry());
    let push = skopeo(
        &dir,
        &[
            "copy",
            "--dest-cert-dir",
            certs,
            "--dest-authfile",
            good.to_str().unwrap(),
            &format!("oci:{}:latest", image.display()),
            &target,
        ],
    );
    assert!(push.status.success(), "push: {}", text(&push));
    let inspect = skopeo(
        &dir,
        &[
            "inspect",
            "--cert-dir",
            certs,
            "--authfile",
            good.to_str().unwrap(),
            &target,
        ],
    );
    assert!(inspect.status.success(), "inspect: {}", text(&inspect));
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(info["Layers"].as_array().map(Vec::len), Some(1), "{info}");
    let realm = stub.azure.lock().unwrap().seen("/oauth2/token");
    assert!(
        realm.iter().any(|s| s
            .form
            .get("scope")
            .is_some_and(|s| s.contains("team-a/hello"))),
        "skopeo went through ACR's token realm: {realm:?}"
    );

    let revoked = vec![RegistryCredential {
        password: Redacted::new(format!("{}x", creds[0].password.expose())),
        ..creds[0].clone()
    }];
    let bad = write_authfile(&dir, "revoked.json", &revoked);
    let refused = skopeo(
        &dir,
        &[
            "inspect",
            "--cert-dir",
            certs,
            "--authfile",
            bad.to_str().unwrap(),
            &target,
        ],
    );
    assert!(
        !refused.status.success(),
        "a revoked refresh token is refused"
    );
    assert!(
        text(&refused).to_lowercase().contains("unauthorized"),
        "{}",
        text(&refused)
    );
}
