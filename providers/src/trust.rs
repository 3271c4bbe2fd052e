//! What every HTTPS client of regbridge trusts, built in one place for the
//! registry handshake and the providers alike.
//!
//! - **The system store**, as the node and a laptop see it: rustls-native-certs
//!   reads the platform's bundle (`/etc/ssl/certs` on Debian and in the
//!   distroless image) and honours `SSL_CERT_FILE` and `SSL_CERT_DIR`, as
//!   OpenSSL, docker and containerd do. If it yields nothing (an image with
//!   no bundle), the public web PKI compiled into the binary stands in.
//! - **Extra CAs for every client**: `--ca-file` (`REGBRIDGE_CA_FILE`), which
//!   the chart's `extraCA` value mounts from a ConfigMap or Secret.
//! - **Extra CAs for one entry**: its `caSecretRef`, trusted for that entry's
//!   registry hosts (and, for Harbor, its API).

use std::sync::{Arc, OnceLock};

use crate::source::{Cluster, SourceError};
use crate::spec::SecretRef;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrustError {
    #[error("{what} is not a PEM certificate bundle")]
    NotPem { what: String },
    #[error("{what} holds no certificate")]
    Empty { what: String },
    #[error("reading {what}: {reason}")]
    Read { what: String, reason: String },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{what} has no `ca.crt` key")]
    NoKey { what: String },
}

/// A set of trusted roots. Cheap to clone.
#[derive(Clone, Default)]
pub struct Trust {
    /// PEM bundles trusted besides the system store, as given.
    extra_pem: Arc<Vec<Vec<u8>>>,
    extra: Arc<Vec<reqwest::Certificate>>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("system_roots", &system_roots().len())
            .field("extra_roots", &self.extra.len())
            .finish()
    }
}

/// The system store, read once: neither the files nor the environment that
/// names them change while the process runs.
fn system_roots() -> &'static [reqwest::Certificate] {
    static ROOTS: OnceLock<Vec<reqwest::Certificate>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "reading the system certificate store");
        }
        // A bundle may hold a certificate rustls refuses as a root; one such
        // must not make every client fail to build.
        let roots: Vec<reqwest::Certificate> = found
            .certs
            .iter()
            .filter(|der| rustls::RootCertStore::empty().add((*der).clone()).is_ok())
            .filter_map(|der| reqwest::Certificate::from_der(der).ok())
            .collect();
        if roots.is_empty() {
            tracing::warn!("the system certificate store is empty; trusting the public web PKI built into regbridge");
        }
        roots
    })
}

impl Trust {
    /// The system store alone.
    pub fn system() -> Self {
        Self::default()
    }

    /// Also trusts the certificates of the PEM bundle `pem`, which `what`
    /// names in errors.
    pub fn with_pem(&self, pem: &[u8], what: &str) -> Result<Self, TrustError> {
        let not_pem = || TrustError::NotPem { what: what.into() };
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|_| not_pem())?;
        if certs.is_empty() {
            return Err(TrustError::Empty { what: what.into() });
        }
        let mut extra = (*self.extra).clone();
        extra.extend(certs);
        let mut extra_pem = (*self.extra_pem).clone();
        extra_pem.push(pem.to_vec());
        let trust = Self {
            extra_pem: Arc::new(extra_pem),
            extra: Arc::new(extra),
        };
        // A certificate rustls refuses as a root shows here, naming its
        // source, rather than in every client built from it.
        trust.client_builder().build().map_err(|_| not_pem())?;
        Ok(trust)
    }

    /// Also trusts the PEM bundle in the file at `path` (`--ca-file`).
    pub fn with_file(&self, path: &std::path::Path) -> Result<Self, TrustError> {
        let what = path.display().to_string();
        let pem = std::fs::read(path).map_err(|e| TrustError::Read {
            what: what.clone(),
            reason: e.kind().to_string(),
        })?;
        self.with_pem(&pem, &what)
    }

    /// Also trusts `ca.crt` of the Secret `reference` (a `caSecretRef`).
    pub async fn with_secret(
        &self,
        cluster: &dyn Cluster,
        reference: &SecretRef,
    ) -> Result<Self, TrustError> {
        let what = format!("CA Secret {}/{}", reference.namespace, reference.name);
        let secret = cluster
            .secret(reference)
            .await
            .map_err(|e: SourceError| TrustError::Read {
                what: what.clone(),
                reason: e.to_string(),
            })?
            .ok_or_else(|| TrustError::NotFound { what: what.clone() })?;
        let pem = secret
            .data
            .get("ca.crt")
            .ok_or_else(|| TrustError::NoKey { what: what.clone() })?;
        self.with_pem(pem, &format!("{what} key ca.crt"))
    }

    /// An HTTP client builder that trusts exactly these roots (and follows
    /// [`crate::connect_to`], which tests use to stand in for remote hosts).
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let system = system_roots();
        let mut builder = reqwest::Client::builder().tls_built_in_root_certs(system.is_empty());
        for cert in system.iter().chain(self.extra.iter()) {
            builder = builder.add_root_certificate(cert.clone());
        }
        crate::connect_to::apply(builder)
    }

    /// The same roots for the AWS SDK's HTTPS client: the SDK reads the
    /// system store itself (the same rustls-native-certs), plus these PEMs.
    #[cfg(feature = "ecr")]
    pub(crate) fn aws_tls_context(&self) -> aws_smithy_http_client::tls::TlsContext {
        use aws_smithy_http_client::tls::{TlsContext, TrustStore};
        let store = self
            .extra_pem
            .iter()
            .fold(TrustStore::default(), |store, pem| {
                store.with_pem_certificate(pem.clone())
            });
        TlsContext::builder()
            .with_trust_store(store)
            .build()
            .expect("TlsContextBuilder::build has no failure case")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_without_certificates_is_refused_naming_its_source() {
        let err = Trust::system()
            .with_pem(b"not pem at all", "--ca-file /etc/ca.pem")
            .unwrap_err();
        assert_eq!(
            err,
            TrustError::Empty {
                what: "--ca-file /etc/ca.pem".into()
            }
        );
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let err = Trust::system()
            .with_file(std::path::Path::new("/nonexistent/ca.pem"))
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
