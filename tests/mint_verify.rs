//! `regbridge mint --verify` as a user runs it, against the real
//! `docker-registry` with htpasswd that tests/run.sh starts
//! (`REGBRIDGE_REGISTRY_URL`, `_USER`, `_PASSWORD`): one line per host,
//! `HOST RESULT MESSAGE`, and a non-zero exit only when a host rejects its
//! credential.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Registry {
    host: String,
    user: String,
    password: String,
}

/// The registry peer whose address is in `url_var`, or `None` after a loud
/// SKIP (a failure with `REGBRIDGE_REQUIRE_PEERS=1`).
fn registry_at(url_var: &str) -> Option<Registry> {
    let url = match std::env::var(url_var) {
        Ok(v) if !v.trim().is_empty() => v.trim().trim_end_matches('/').to_owned(),
        _ => {
            if std::env::var("REGBRIDGE_REQUIRE_PEERS").as_deref() == Ok("1") {
                panic!(
                    "{url_var} is unset, and REGBRIDGE_REQUIRE_PEERS=1 makes a missing peer a failure"
                );
            }
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIP: {url_var} is unset, so this peer test did not run (tests/run.sh starts the peers) ***\n"
            );
            return None;
        }
    };
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set"));
    Some(Registry {
        host: url.trim_start_matches("http://").to_owned(),
        user: var("REGBRIDGE_REGISTRY_USER"),
        password: var("REGBRIDGE_REGISTRY_PASSWORD"),
    })
}

fn registry() -> Option<Registry> {
    registry_at("REGBRIDGE_REGISTRY_URL")
}

fn workdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "regbridge-mint-verify-{tag}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A docker config file with these `(key, user, password)` entries, and a
/// mint config that reads it.
fn mint_config(dir: &Path, entries: &[(&str, &str, &str)]) -> PathBuf {
    let auths: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(key, user, password)| {
            (
                key.to_string(),
                serde_json::json!({"username": user, "password": password}),
            )
        })
        .collect();
    std::fs::write(
        dir.join("config.json"),
        serde_json::json!({ "auths": auths }).to_string(),
    )
    .unwrap();
    let config = dir.join("mint.yaml");
    std::fs::write(
        &config,
        "credentials:\n  - static:\n      file: config.json\n",
    )
    .unwrap();
    config
}

fn mint_verify(config: &Path) -> Output {
    mint_verify_with(config, &[])
}

/// `regbridge mint --verify` with these variables set over an environment
/// that trusts only the system store.
fn mint_verify_with(config: &Path, env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_regbridge"));
    command
        .args(["mint", "--verify", "--verify-timeout", "10", "--config"])
        .arg(config);
    for var in [
        "REGBRIDGE_MINT_VERIFY",
        "REGBRIDGE_CA_FILE",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    ] {
        command.env_remove(var);
    }
    command
        .envs(env.iter().copied())
        .output()
        .expect("the regbridge binary runs")
}

/// The `RESULT` and `MESSAGE` columns of `host`'s line.
fn row<'a>(stdout: &'a str, host: &str) -> (&'a str, &'a str) {
    let table = stdout
        .split_once("\nHOST ")
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("no HOST RESULT MESSAGE table in:\n{stdout}"));
    let line = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(host))
        .unwrap_or_else(|| panic!("no line for {host} in:\n{stdout}"));
    let rest = line[host.len()..].trim_start();
    let (result, message) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    (result, message.trim())
}

#[test]
fn verified_and_unreachable_hosts_exit_zero() {
    let Some(reg) = registry() else { return };
    let dir = workdir("ok");
    let good = format!("http://{}", reg.host);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let config = mint_config(
        &dir,
        &[
            (&good, &reg.user, &reg.password),
            (&closed, "u", "closed-port-pw"),
        ],
    );
    let out = mint_verify(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(row(&stdout, &good), ("Verified", ""));
    let (result, message) = row(&stdout, &closed);
    assert_eq!(result, "Unreachable", "{stdout}");
    assert!(message.contains("cannot connect"), "{message}");
    assert!(!stdout.contains(&reg.password), "{stdout}");
}

#[test]
fn a_rejected_host_is_reported_and_fails_the_command() {
    let Some(reg) = registry() else { return };
    let dir = workdir("rejected");
    let good = format!("http://{}", reg.host);
    // The same registry under another name, with a wrong password.
    let port = reg.host.rsplit_once(':').map(|(_, p)| p).unwrap_or("80");
    let wrong = format!("http://localhost:{port}");
    let wrong_password = format!("{}-wrong", reg.password);
    let config = mint_config(
        &dir,
        &[
            (&good, &reg.user, &reg.password),
            (&wrong, &reg.user, &wrong_password),
        ],
    );
    let out = mint_verify(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert_eq!(row(&stdout, &good).0, "Verified", "{stdout}");
    let (result, message) = row(&stdout, &wrong);
    assert_eq!(result, "Rejected", "{stdout}");
    assert!(message.starts_with("UNAUTHORIZED:"), "{message}");
    assert!(stderr.contains("1 of 2 hosts rejected"), "{stderr}");
    for text in [&stdout, &stderr] {
        assert!(!text.contains(&wrong_password), "{text}");
    }
}

/// A registry behind a private CA (`REGBRIDGE_TLS_REGISTRY_URL`, its CA in
/// `REGBRIDGE_TLS_REGISTRY_CA`) is trusted the ways a node or a laptop
/// trusts it: the system store as `SSL_CERT_FILE` names it, or the bundle
/// the chart's `extraCA` mounts, which the controller reads as
/// `REGBRIDGE_CA_FILE`. Without either, it is `Unreachable` for an unknown
/// issuer.
#[test]
fn a_private_ca_is_trusted_through_the_system_store_or_the_ca_file() {
    let Some(reg) = registry_at("REGBRIDGE_TLS_REGISTRY_URL") else {
        return;
    };
    let ca = PathBuf::from(std::env::var("REGBRIDGE_TLS_REGISTRY_CA").expect("the CA's path"));
    let dir = workdir("private-ca");
    let config = mint_config(&dir, &[(&reg.host, &reg.user, &reg.password)]);

    let out = mint_verify_with(&config, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "an unreachable host does not fail: {stdout}"
    );
    let (result, message) = row(&stdout, &reg.host);
    assert_eq!(result, "Unreachable", "{stdout}");
    assert!(message.contains("UnknownIssuer"), "{message}");

    for var in ["SSL_CERT_FILE", "REGBRIDGE_CA_FILE"] {
        let out = mint_verify_with(&config, &[(var, &ca)]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{var}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(row(&stdout, &reg.host), ("Verified", ""), "{var}: {stdout}");
        assert!(!stdout.contains(&reg.password), "{stdout}");
    }

    // Trusting the CA does not make a wrong password pass.
    let wrong = format!("{}-wrong", reg.password);
    let config = mint_config(&dir, &[(&reg.host, &reg.user, &wrong)]);
    let out = mint_verify_with(&config, &[("REGBRIDGE_CA_FILE", &ca)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert_eq!(row(&stdout, &reg.host).0, "Rejected", "{stdout}");
}

/// `--ca-file` naming a file that is not there stops the command, naming
/// the flag and the file, before anything is minted.
#[test]
fn a_missing_ca_file_is_an_error_naming_it() {
    let dir = workdir("missing-ca");
    let config = mint_config(&dir, &[("registry.example", "u", "p")]);
    let missing = dir.join("no-such-ca.pem");
    let out = mint_verify_with(&config, &[("REGBRIDGE_CA_FILE", &missing)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--ca-file"), "{stderr}");
    assert!(stderr.contains("no-such-ca.pem"), "{stderr}");
}
