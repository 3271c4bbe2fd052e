//! `regbridge mint`: the same providers and composition as the controller,
//! run once on a laptop or in a debug pod, with no cluster. It answers "does
//! my IRSA / Workload Identity / Harbor / Docker Hub setup work?". The config
//! is a `credentials:` list, or a `ClusterPullSecret` manifest.

use std::path::Path;

use chrono::Utc;
use regbridge_providers::registry::dockerconfig;
use regbridge_providers::spec::CredentialSpec;
use regbridge_providers::{BuildContext, NoCluster, Trust, Verification, Verifier};
use serde::Deserialize;

use crate::api::crd::rfc3339;
use crate::decide::compose::{Composed, compose};
use crate::io::credentials::{Credentials, RefreshOptions, as_entries};

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} is not a valid mint config: {reason}")]
    Parse { path: String, reason: String },
    #[error("credentials[{index}]: {reason}")]
    Entry { index: usize, reason: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MintConfig {
    credentials: Vec<CredentialSpec>,
}

/// Mints every entry once and composes the result.
pub async fn mint(path: &Path, trust: &Trust) -> Result<Composed, MintError> {
    let text = std::fs::read_to_string(path).map_err(|e| MintError::Read {
        path: path.display().to_string(),
        reason: e.kind().to_string(),
    })?;
    // Through a JSON value: serde_yaml reads enums only from YAML tags, and
    // the `credentials:` entries are single-key maps, as in the CRD.
    let parse_error = |reason: String| MintError::Parse {
        path: path.display().to_string(),
        reason,
    };
    let value: serde_json::Value =
        serde_yaml::from_str(&text).map_err(|e| parse_error(e.to_string()))?;
    let value = credentials_of_resource(value);
    let config: MintConfig =
        serde_json::from_value(value).map_err(|e| parse_error(e.to_string()))?;
    // Relative `file:` paths are relative to the config file.
    let base = path.parent().unwrap_or(Path::new("."));
    let specs: Vec<CredentialSpec> = config
        .credentials
        .into_iter()
        .map(|c| match c {
            CredentialSpec::Static(mut s) => {
                s.file = s
                    .file
                    .map(|f| if f.is_relative() { base.join(f) } else { f });
                CredentialSpec::Static(s)
            }
            other => other,
        })
        .collect();
    let mut creds = Credentials::default();
    creds
        .update_specs(&specs, &BuildContext::new("mint").with_trust(trust.clone()))
        .map_err(|(index, e)| MintError::Entry {
            index,
            reason: e.to_string(),
        })?;
    let now = Utc::now();
    let options = RefreshOptions {
        refresh_before: None,
        verifier: None,
        enforce: false,
    };
    creds
        .refresh_due(&NoCluster, now, &options, &mut || 0.0)
        .await;
    if let Some(bad) = creds
        .reports(now)
        .into_iter()
        .find(|r| r.last_error.is_some())
    {
        return Err(MintError::Entry {
            index: bad.index,
            reason: bad.last_error.unwrap_or_default(),
        });
    }
    Ok(compose(&as_entries(&creds.current(now))))
}

/// A `ClusterPullSecret` manifest stands for its `spec.credentials`, so
/// `mint` checks the very file a user is about to apply; anything else is
/// read as a mint config.
fn credentials_of_resource(value: serde_json::Value) -> serde_json::Value {
    if value.get("kind").and_then(|k| k.as_str()) != Some("ClusterPullSecret") {
        return value;
    }
    let credentials = value
        .pointer("/spec/credentials")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    serde_json::json!({ "credentials": credentials })
}

/// The human-readable report: hosts, then the document with every secret
/// replaced.
pub fn render_redacted(composed: &Composed) -> String {
    let mut out = String::new();
    out.push_str(&format!("{:<50} {:<10} EXPIRES\n", "REGISTRY", "PROVIDER"));
    for h in &composed.hosts {
        out.push_str(&format!(
            "{:<50} {:<10} {}\n",
            h.host,
            h.provider,
            h.expires_at.map(rfc3339).unwrap_or_else(|| "never".into())
        ));
    }
    for w in &composed.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    let mut doc: serde_json::Value =
        serde_json::from_slice(&composed.dockerconfigjson).expect("compose writes valid JSON");
    if let Some(auths) = doc.get_mut("auths").and_then(|a| a.as_object_mut()) {
        for entry in auths.values_mut() {
            for key in ["password", "auth"] {
                if let Some(v) = entry.get_mut(key) {
                    *v = serde_json::Value::String("<redacted>".into());
                }
            }
        }
    }
    out.push('\n');
    out.push_str(&serde_json::to_string_pretty(&doc).expect("JSON values serialize"));
    out.push('\n');
    out
}

/// One composed host and what its registry said about its credential.
#[derive(Debug)]
pub struct HostVerification {
    pub host: String,
    pub verification: Verification,
}

/// `mint --verify`: one handshake per host of the composed document, the
/// credential exactly as it would be distributed. In host order.
pub async fn verify(composed: &Composed, verifier: &Verifier) -> Vec<HostVerification> {
    let creds = dockerconfig::parse(&composed.dockerconfigjson)
        .expect("compose writes a document that parses");
    let results = verifier.verify_all(&creds).await;
    creds
        .into_iter()
        .zip(results)
        .map(|(cred, verification)| HostVerification {
            host: cred.host,
            verification,
        })
        .collect()
}

/// How many hosts rejected their credential: `mint --verify` fails on any.
pub fn rejected(results: &[HostVerification]) -> usize {
    results
        .iter()
        .filter(|r| r.verification.is_rejected())
        .count()
}

/// `HOST RESULT MESSAGE`, one line per host. Results carry no secrets.
pub fn render_verification(results: &[HostVerification]) -> String {
    let mut out = format!("{:<50} {:<12} MESSAGE\n", "HOST", "RESULT");
    for r in results {
        let line = format!(
            "{:<50} {:<12} {}",
            r.host,
            r.verification.result(),
            r.verification.message()
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("regbridge-mint-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn mint_composes_files_and_redacts_secrets() {
        let dir = tempdir("ok");
        write(
            &dir,
            "a.json",
            r#"{"auths":{"registry.example.com":{"username":"ci","password":"s3cr3t-pass"}}}"#,
        );
        let cfg = write(
            &dir,
            "mint.yaml",
            "credentials:\n  - static:\n      file: a.json\n",
        );
        let composed = mint(&cfg, &Trust::system()).await.unwrap();
        let text = render_redacted(&composed);
        assert!(text.contains("registry.example.com"));
        assert!(text.contains("static"));
        assert!(!text.contains("s3cr3t-pass"), "{text}");
        let raw = String::from_utf8(composed.dockerconfigjson).unwrap();
        assert!(
            raw.contains("s3cr3t-pass"),
            "--reveal prints the real document"
        );
    }

    #[tokio::test]
    async fn a_cluster_pull_secret_manifest_is_minted_from_its_credentials() {
        let dir = tempdir("cps");
        write(
            &dir,
            "a.json",
            r#"{"auths":{"registry.example.com":{"username":"ci","password":"p"}}}"#,
        );
        let cfg = write(
            &dir,
            "cps.yaml",
            "apiVersion: regbridge.dev/v1alpha1\nkind: ClusterPullSecret\nmetadata: {name: x}\n\
             spec:\n  namespaces: {include: [\"a\"]}\n  credentials:\n    - static: {file: a.json}\n",
        );
        let composed = mint(&cfg, &Trust::system()).await.unwrap();
        assert_eq!(composed.hosts.len(), 1);
    }

    #[test]
    fn verification_renders_host_result_message_and_counts_rejections() {
        let results = vec![
            HostVerification {
                host: "a.example".into(),
                verification: Verification::Verified,
            },
            HostVerification {
                host: "b.example".into(),
                verification: Verification::Rejected {
                    code: Some("UNAUTHORIZED".into()),
                    message: "authentication required".into(),
                },
            },
            HostVerification {
                host: "c.example".into(),
                verification: Verification::Unreachable {
                    reason: "https://c.example/v2/: timed out".into(),
                },
            },
        ];
        let text = render_verification(&results);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("HOST") && lines[0].contains("RESULT"));
        assert!(lines[1].starts_with("a.example") && lines[1].ends_with("Verified"));
        assert!(
            lines[2].contains("Rejected")
                && lines[2].contains("UNAUTHORIZED: authentication required")
        );
        assert!(lines[3].contains("Unreachable") && lines[3].contains("timed out"));
        assert_eq!(rejected(&results), 1);
    }

    #[tokio::test]
    async fn secret_ref_without_a_cluster_is_a_clear_error() {
        let dir = tempdir("ref");
        let cfg = write(
            &dir,
            "mint.yaml",
            "credentials:\n  - static:\n      secretRef: {namespace: regbridge, name: x}\n",
        );
        let err = mint(&cfg, &Trust::system()).await.unwrap_err().to_string();
        assert!(
            err.contains("credentials[0]") && err.contains("file:"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn unknown_keys_are_rejected_with_the_path() {
        let dir = tempdir("bad");
        let cfg = write(&dir, "mint.yaml", "credential: []\n");
        let err = mint(&cfg, &Trust::system()).await.unwrap_err().to_string();
        assert!(err.contains("mint.yaml"), "{err}");
    }
}
