use std::fmt;

use chrono::{DateTime, Utc};

/// A value that must never reach a log line, an Event, a status field or an
/// error message. Its `Debug` says `<redacted>` and it has no `Display`, so the
/// only way to the bytes is the explicit [`Redacted::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted<T>(T);

impl<T> Redacted<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The wrapped value, for the few places that must write it out: the
    /// composed dockerconfigjson and the registry handshake.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T> From<T> for Redacted<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

/// One registry host's credential, as a provider minted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryCredential {
    /// The key it is written under in `auths`, exactly as kubelet will match it
    /// (`https://index.docker.io/v1/`, `123.dkr.ecr.eu-west-1.amazonaws.com`, ...).
    pub host: String,
    pub username: String,
    pub password: Redacted<String>,
    /// `None` for credentials that do not expire (static accounts).
    pub expires_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_contains_the_password() {
        let cred = RegistryCredential {
            host: "registry.example.com".into(),
            username: "robot".into(),
            password: Redacted::new("hunter2-very-secret".into()),
            expires_at: None,
        };
        let printed = format!("{cred:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("<redacted>"));
        assert!(printed.contains("robot"));
    }
}
