//! Composition: the credentials of every entry merged into one
//! dockerconfigjson. Pure, so the bytes are a function of the inputs alone
//! and an unchanged input never causes a write.

use chrono::{DateTime, Utc};
use regbridge_providers::RegistryCredential;
use regbridge_providers::registry::{dockerconfig, key};

/// What one credentials entry contributed.
pub struct EntryCredentials<'a> {
    pub provider: &'static str,
    pub credentials: &'a [RegistryCredential],
}

/// One host in the composed Secret, for status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComposedHost {
    pub host: String,
    /// Which `credentials:` entry it came from.
    pub entry: usize,
    pub provider: &'static str,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Composed {
    pub dockerconfigjson: Vec<u8>,
    pub hosts: Vec<ComposedHost>,
    /// One line per host that a later entry also yielded.
    pub warnings: Vec<String>,
}

/// Merges entries in order. The same registry (as kubelet reads keys,
/// [`key::same`]) from two entries: the first wins and a warning says so.
pub fn compose(entries: &[EntryCredentials<'_>]) -> Composed {
    let mut kept: Vec<(usize, &RegistryCredential, &'static str)> = Vec::new();
    let mut warnings = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        for cred in entry.credentials {
            match kept.iter().find(|(_, c, _)| key::same(&c.host, &cred.host)) {
                Some((first, _, _)) => warnings.push(format!(
                    "registry {} from credentials[{index}] ({}) is ignored: credentials[{first}] already provides it",
                    cred.host, entry.provider
                )),
                None => kept.push((index, cred, entry.provider)),
            }
        }
    }
    let creds: Vec<RegistryCredential> = kept.iter().map(|(_, c, _)| (*c).clone()).collect();
    let mut hosts: Vec<ComposedHost> = kept
        .iter()
        .map(|(entry, c, provider)| ComposedHost {
            host: c.host.clone(),
            entry: *entry,
            provider,
            expires_at: c.expires_at,
        })
        .collect();
    hosts.sort_by(|a, b| a.host.cmp(&b.host));
    Composed {
        dockerconfigjson: dockerconfig::render(&creds),
        hosts,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regbridge_providers::Redacted;

    fn cred(host: &str, pass: &str) -> RegistryCredential {
        RegistryCredential {
            host: host.into(),
            username: "u".into(),
            password: Redacted::new(pass.into()),
            expires_at: None,
        }
    }

    #[test]
    fn every_host_of_every_entry_lands_in_one_document() {
        let a = [cred("a.io", "1"), cred("b.io", "2")];
        let b = [cred("c.io", "3")];
        let out = compose(&[
            EntryCredentials {
                provider: "static",
                credentials: &a,
            },
            EntryCredentials {
                provider: "ecr",
                credentials: &b,
            },
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.dockerconfigjson).unwrap();
        assert_eq!(v["auths"].as_object().unwrap().len(), 3);
        assert_eq!(
            out.hosts.iter().map(|h| h.provider).collect::<Vec<_>>(),
            ["static", "static", "ecr"]
        );
        assert!(out.warnings.is_empty());
    }

    #[test]
    fn duplicate_host_first_entry_wins_and_warns() {
        let first = [cred("https://index.docker.io/v1/", "first")];
        let second = [cred("index.docker.io", "second")];
        let out = compose(&[
            EntryCredentials {
                provider: "static",
                credentials: &first,
            },
            EntryCredentials {
                provider: "static",
                credentials: &second,
            },
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.dockerconfigjson).unwrap();
        assert_eq!(
            v["auths"]["https://index.docker.io/v1/"]["password"],
            "first"
        );
        assert!(v["auths"].get("index.docker.io").is_none());
        assert_eq!(out.warnings.len(), 1);
        assert!(out.warnings[0].contains("credentials[1]"));
        assert!(
            !out.warnings[0].contains("second"),
            "warnings never carry secrets"
        );
    }

    #[test]
    fn composition_is_deterministic() {
        let a = [cred("z.io", "1"), cred("a.io", "2")];
        let e = [EntryCredentials {
            provider: "static",
            credentials: &a,
        }];
        assert_eq!(compose(&e).dockerconfigjson, compose(&e).dockerconfigjson);
    }

    #[test]
    fn keys_kubelet_keeps_apart_are_both_kept() {
        // `/v1` without its slash is a path to kubelet, and case is kept.
        let first = [cred("index.docker.io", "a"), cred("Reg.example", "b")];
        let second = [cred("index.docker.io/v1", "c"), cred("reg.example", "d")];
        let out = compose(&[
            EntryCredentials {
                provider: "static",
                credentials: &first,
            },
            EntryCredentials {
                provider: "static",
                credentials: &second,
            },
        ]);
        assert_eq!(out.hosts.len(), 4);
        assert!(out.warnings.is_empty());
    }
}
