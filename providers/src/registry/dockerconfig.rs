//! The `kubernetes.io/dockerconfigjson` format: reading the entries of an
//! existing one and writing the composed one.
//!
//! Errors describe where the input is malformed, never what it contains:
//! serde_json's own messages can quote the offending value, which may be a
//! password.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::{Redacted, RegistryCredential};

/// The key a dockerconfigjson Secret keeps its JSON under.
pub const DATA_KEY: &str = ".dockerconfigjson";
/// The Secret type kubelet reads pull credentials from.
pub const SECRET_TYPE: &str = "kubernetes.io/dockerconfigjson";
/// Docker Hub's conventional key.
pub const DOCKER_HUB: &str = "https://index.docker.io/v1/";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DockerConfigError {
    #[error("not valid JSON ({category} at line {line}, column {column})")]
    Json {
        category: &'static str,
        line: usize,
        column: usize,
    },
    #[error("has no `auths` object")]
    NoAuths,
    #[error("entry for {host} has neither username/password nor a decodable `auth`")]
    Incomplete { host: String },
}

#[derive(Serialize, Deserialize)]
struct File {
    auths: Option<BTreeMap<String, Entry>>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
}

/// The entries of a dockerconfigjson document, in key order. `auth`, when
/// present and decodable, wins over username/password, as it does in kubelet.
pub fn parse(bytes: &[u8]) -> Result<Vec<RegistryCredential>, DockerConfigError> {
    let file: File = serde_json::from_slice(bytes).map_err(|e| DockerConfigError::Json {
        category: match e.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected structure",
            serde_json::error::Category::Eof => "unexpected end",
        },
        line: e.line(),
        column: e.column(),
    })?;
    let auths = file.auths.ok_or(DockerConfigError::NoAuths)?;
    auths
        .into_iter()
        .map(|(host, entry)| {
            let (username, password) = match entry.auth.as_deref().and_then(decode_auth) {
                Some(pair) => pair,
                None => match (entry.username, entry.password) {
                    (Some(u), Some(p)) => (u, p),
                    _ => return Err(DockerConfigError::Incomplete { host }),
                },
            };
            Ok(RegistryCredential {
                host,
                username,
                password: Redacted::new(password),
                expires_at: None,
            })
        })
        .collect()
}

fn decode_auth(auth: &str) -> Option<(String, String)> {
    let raw = STANDARD.decode(auth.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

/// The dockerconfigjson bytes for these credentials, with `username`,
/// `password` and `auth` for every host (some runtimes read only `auth`).
/// Keys are sorted, so equal input always gives byte-identical output and a
/// steady state makes no writes. Callers pass each host once.
pub fn render(creds: &[RegistryCredential]) -> Vec<u8> {
    let auths: BTreeMap<String, Entry> = creds
        .iter()
        .map(|c| {
            let password = c.password.expose();
            let auth = STANDARD.encode(format!("{}:{}", c.username, password));
            (
                c.host.clone(),
                Entry {
                    username: Some(c.username.clone()),
                    password: Some(password.clone()),
                    auth: Some(auth),
                },
            )
        })
        .collect();
    serde_json::to_vec(&File { auths: Some(auths) }).expect("string maps always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(host: &str, user: &str, pass: &str) -> RegistryCredential {
        RegistryCredential {
            host: host.into(),
            username: user.into(),
            password: Redacted::new(pass.into()),
            expires_at: None,
        }
    }

    #[test]
    fn render_writes_username_password_and_auth_for_every_host() {
        let out = render(&[
            cred("b.example", "bob", "pw:b"),
            cred("a.example", "al", "pa"),
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["auths"]["a.example"]["username"], "al");
        assert_eq!(v["auths"]["a.example"]["password"], "pa");
        assert_eq!(v["auths"]["a.example"]["auth"], STANDARD.encode("al:pa"));
        assert_eq!(v["auths"]["b.example"]["auth"], STANDARD.encode("bob:pw:b"));
        // sorted keys: a before b
        let text = String::from_utf8(out).unwrap();
        assert!(text.find("a.example").unwrap() < text.find("b.example").unwrap());
    }

    #[test]
    fn render_then_parse_round_trips() {
        let input = vec![cred("ghcr.io", "u", "p:with:colons")];
        assert_eq!(parse(&render(&input)).unwrap(), input);
    }

    #[test]
    fn auth_wins_over_username_and_password() {
        let doc = format!(
            r#"{{"auths":{{"r.example":{{"username":"x","password":"y","auth":"{}"}}}}}}"#,
            STANDARD.encode("real:secret")
        );
        let got = parse(doc.as_bytes()).unwrap();
        assert_eq!(got[0].username, "real");
        assert_eq!(got[0].password.expose(), "secret");
    }

    #[test]
    fn entry_without_any_credential_is_incomplete() {
        let err = parse(br#"{"auths":{"r.example":{"username":"only"}}}"#).unwrap_err();
        assert_eq!(
            err,
            DockerConfigError::Incomplete {
                host: "r.example".into()
            }
        );
    }

    #[test]
    fn malformed_json_error_does_not_quote_the_input() {
        let err = parse(br#"{"auths": {"r": {"password": 12345678}}}"#).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("12345678"), "{text}");
        let err = parse(b"{\"auths\": \"topsecretvalue\"}").unwrap_err();
        assert!(!err.to_string().contains("topsecretvalue"));
    }

    #[test]
    fn missing_auths_is_reported() {
        assert_eq!(parse(b"{}").unwrap_err(), DockerConfigError::NoAuths);
    }
}
