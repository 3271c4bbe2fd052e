//! The webhook's serving certificate: a self-signed CA and a certificate
//! for the webhook Service, generated with `rcgen`, kept in one Secret in
//! the controller's namespace and shared by every replica. Whoever creates
//! the Secret first wins; the others read it (409 on create, then get). A
//! certificate within [`RENEW_BEFORE_DAYS`] of its expiry is replaced the
//! same way, with the Secret's resourceVersion guarding the update.
//!
//! The CA also goes into the `MutatingWebhookConfiguration`'s `caBundle`.

use std::sync::{Arc, RwLock};

use chrono::{DateTime, Datelike, Duration, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tracing::info;

use crate::api::labels::{FIELD_MANAGER, MANAGED_BY, MANAGED_BY_VALUE};

/// The Secret holding the CA and serving certificate (default of
/// `--webhook-secret`).
pub const TLS_SECRET: &str = "regbridge-webhook-tls";
/// The `MutatingWebhookConfiguration` whose `caBundle` regbridge keeps
/// (default of `--webhook-configuration`).
pub const WEBHOOK_CONFIGURATION: &str = "regbridge";
/// When the certificates expire, RFC 3339, on the Secret.
pub const NOT_AFTER_ANNOTATION: &str = "regbridge.dev/not-after";
/// How long generated certificates are valid.
pub const VALIDITY_DAYS: i64 = 365;
/// Renew when the certificate expires within this many days.
pub const RENEW_BEFORE_DAYS: i64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating the webhook certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("Secret {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Secret {namespace}/{name} lacks {key}")]
    Incomplete {
        namespace: String,
        name: String,
        key: &'static str,
    },
    #[error("webhook certificate unusable: {0}")]
    Unusable(String),
}

/// The PEM-encoded CA, serving certificate and key. `Debug` omits the key.
#[derive(Clone, PartialEq, Eq)]
pub struct CertBundle {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: DateTime<Utc>,
}

impl std::fmt::Debug for CertBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertBundle")
            .field("not_after", &self.not_after)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl CertBundle {
    /// Whether it must be replaced at `now`.
    pub fn needs_renewal(&self, now: DateTime<Utc>) -> bool {
        self.not_after - now < Duration::days(RENEW_BEFORE_DAYS)
    }

    /// When to look again: at the renewal point, at most a day from now.
    pub fn renewal_in(&self, now: DateTime<Utc>) -> std::time::Duration {
        let at = self.not_after - Duration::days(RENEW_BEFORE_DAYS);
        (at - now)
            .clamp(Duration::minutes(1), Duration::days(1))
            .to_std()
            .unwrap_or(std::time::Duration::from_secs(60))
    }
}

/// The names the serving certificate is valid for: the Service's DNS names
/// plus `extra` (hosts or IP addresses of a `url` configuration).
pub fn dns_names(service: &str, namespace: &str, extra: &[String]) -> Vec<String> {
    let mut names = vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ];
    names.extend(extra.iter().cloned());
    names
}

/// A new CA and a serving certificate for `names`, valid from yesterday for
/// `validity` from `now`.
pub fn generate(
    names: &[String],
    now: DateTime<Utc>,
    validity: Duration,
) -> Result<CertBundle, TlsError> {
    let date = |t: DateTime<Utc>| rcgen::date_time_ymd(t.year(), t.month() as u8, t.day() as u8);
    let not_after = now + validity;
    // Whole days in the certificate; record the day it ends on.
    let not_after_day = not_after
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .map(|d| d.and_utc())
        .unwrap_or(not_after);
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "regbridge webhook CA");
    ca_params.not_before = date(now - Duration::days(1));
    ca_params.not_after = date(not_after);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().map_or("regbridge", |n| n),
    );
    params.not_before = date(now - Duration::days(1));
    params.not_after = date(not_after);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca)?;
    Ok(CertBundle {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after: not_after_day,
    })
}

/// The first PEM block of `pem`: a bundle's own CA, without the one it
/// carried over from before.
fn first_certificate(pem: &str) -> String {
    const END: &str = "-----END CERTIFICATE-----";
    match pem.find(END) {
        Some(i) => format!("{}\n", &pem[..i + END.len()]),
        None => pem.to_owned(),
    }
}

fn secret_object(namespace: &str, name: &str, bundle: &CertBundle) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some([(MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned())].into()),
            annotations: Some(
                [(
                    NOT_AFTER_ANNOTATION.to_owned(),
                    bundle.not_after.to_rfc3339(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("ca.crt".to_owned(), bytes(&bundle.ca_pem)),
                ("tls.crt".to_owned(), bytes(&bundle.cert_pem)),
                ("tls.key".to_owned(), bytes(&bundle.key_pem)),
            ]
            .into(),
        ),
        ..Default::default()
    }
}

/// The bundle a Secret holds. A Secret without a readable expiry counts as
/// expired, so it gets replaced.
fn bundle_of(namespace: &str, secret: &Secret) -> Result<CertBundle, TlsError> {
    let name = secret.name_any();
    let get = |key: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .ok_or_else(|| TlsError::Incomplete {
                namespace: namespace.into(),
                name: name.clone(),
                key,
            })
    };
    let not_after = secret
        .annotations()
        .get(NOT_AFTER_ANNOTATION)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    Ok(CertBundle {
        ca_pem: get("ca.crt")?,
        cert_pem: get("tls.crt")?,
        key_pem: get("tls.key")?,
        not_after,
    })
}

/// Reads the shared certificate Secret, creating or renewing it when needed,
/// and returns what every replica should serve.
pub async fn ensure(
    client: &Client,
    namespace: &str,
    secret: &str,
    names: &[String],
    now: DateTime<Utc>,
) -> Result<CertBundle, TlsError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let err = |source| TlsError::Api {
        namespace: namespace.into(),
        name: secret.into(),
        source,
    };
    // Two rounds: a lost race (409) means another replica just wrote it.
    for _ in 0..3 {
        match api.get_opt(secret).await.map_err(err)? {
            None => {
                let bundle = generate(names, now, Duration::days(VALIDITY_DAYS))?;
                match api
                    .create(
                        &PostParams::default(),
                        &secret_object(namespace, secret, &bundle),
                    )
                    .await
                {
                    Ok(_) => {
                        info!(namespace, secret, "created the webhook certificate");
                        return Ok(bundle);
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(err(e)),
                }
            }
            Some(existing) => {
                let current = bundle_of(namespace, &existing);
                if let Ok(b) = &current
                    && !b.needs_renewal(now)
                {
                    return current;
                }
                let mut bundle = generate(names, now, Duration::days(VALIDITY_DAYS))?;
                // Trust the outgoing CA too until it expires: a replica that
                // has not reloaded yet still serves a certificate it signed.
                if let Ok(old) = &current
                    && old.not_after > now
                {
                    bundle.ca_pem = format!("{}{}", bundle.ca_pem, first_certificate(&old.ca_pem));
                }
                let mut next = secret_object(namespace, secret, &bundle);
                next.metadata.resource_version = existing.resource_version();
                match api.replace(secret, &PostParams::default(), &next).await {
                    Ok(_) => {
                        info!(namespace, secret, not_after = %bundle.not_after, "renewed the webhook certificate");
                        return Ok(bundle);
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(err(e)),
                }
            }
        }
    }
    // Still racing: serve whatever is there now.
    let existing = api.get(secret).await.map_err(err)?;
    bundle_of(namespace, &existing)
}

/// Puts `ca_pem` into every webhook's `caBundle` of the configuration, with
/// one JSON merge patch guarded by its resourceVersion. `Ok(false)` when
/// there is no such configuration (`--webhook` served without the chart's
/// object): the caller decides how loudly to say so.
pub(crate) async fn publish_ca_bundle(
    client: &Client,
    configuration: &str,
    ca_pem: &str,
) -> Result<bool, kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(config) = api.get_opt(configuration).await? else {
        return Ok(false);
    };
    let bundle = ByteString(ca_pem.as_bytes().to_vec());
    let mut webhooks = config.webhooks.clone().unwrap_or_default();
    if webhooks
        .iter()
        .all(|w| w.client_config.ca_bundle.as_ref() == Some(&bundle))
    {
        return Ok(true);
    }
    for w in &mut webhooks {
        w.client_config.ca_bundle = Some(bundle.clone());
    }
    // A merge patch replaces lists whole, so it carries every webhook as
    // read, and the resourceVersion makes a concurrent change fail (409).
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": config.resource_version() },
        "webhooks": webhooks,
    });
    api.patch(
        configuration,
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        },
        &Patch::Merge(&patch),
    )
    .await?;
    info!(configuration, "updated the webhook caBundle");
    Ok(true)
}

/// Serves whichever certificate was loaded last, so a renewal takes effect
/// without restarting the listener.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

fn certified_key(bundle_cert: &str, bundle_key: &str) -> Result<CertifiedKey, TlsError> {
    let unusable = |e: &dyn std::fmt::Display| TlsError::Unusable(e.to_string());
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(bundle_cert.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| unusable(&e))?;
    let key = PrivateKeyDer::from_pem_slice(bundle_key.as_bytes()).map_err(|e| unusable(&e))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| unusable(&e))?;
    Ok(CertifiedKey::new(certs, signer))
}

impl CertResolver {
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        Ok(Self {
            current: RwLock::new(Arc::new(certified_key(cert_pem, key_pem)?)),
        })
    }

    pub fn set(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let next = Arc::new(certified_key(cert_pem, key_pem)?);
        *self.current.write().expect("cert lock") = next;
        Ok(())
    }

    /// A rustls server configuration serving this resolver's certificate
    /// over HTTP/1.1, with the ring provider.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Unusable(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("cert lock").clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_bundle_loads_into_rustls_and_expires_when_recorded() {
        let now = Utc::now();
        let b = generate(
            &dns_names("regbridge-webhook", "regbridge", &[]),
            now,
            Duration::days(VALIDITY_DAYS),
        )
        .unwrap();
        assert!(b.ca_pem.contains("BEGIN CERTIFICATE"));
        assert!(
            !format!("{b:?}").contains("PRIVATE KEY"),
            "Debug redacts the key"
        );
        assert!(!b.needs_renewal(now));
        assert!(b.needs_renewal(now + Duration::days(VALIDITY_DAYS - RENEW_BEFORE_DAYS + 1)));
        let r = Arc::new(CertResolver::new(&b.cert_pem, &b.key_pem).unwrap());
        r.server_config().unwrap();
    }

    #[test]
    fn a_secret_without_an_expiry_is_renewed() {
        let b = generate(&["x".into()], Utc::now(), Duration::days(2)).unwrap();
        let mut s = secret_object("ns", "tls", &b);
        s.metadata.annotations = None;
        assert!(bundle_of("ns", &s).unwrap().needs_renewal(Utc::now()));
    }
}
