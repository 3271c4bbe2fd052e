//! The HTTPS client a provider calls its own API with (Harbor's REST API,
//! ACR's token exchange), built per mint because the entry's `caSecretRef`
//! may have changed since the last one.

use std::time::Duration;

use crate::http_errors;
use crate::spec::SecretRef;
use crate::trust::Trust;
use crate::{Cluster, ProviderError};

/// A client that trusts `trust` plus the entry's CA Secret, gives up after
/// `timeout`, and follows no redirect: a redirect would carry the admin's
/// Basic auth or the exchanged token to a host nobody configured.
pub(crate) async fn build(
    provider: &'static str,
    trust: &Trust,
    ca: Option<&SecretRef>,
    timeout: Duration,
    cluster: &dyn Cluster,
) -> Result<reqwest::Client, ProviderError> {
    let trust = match ca {
        Some(r) => trust.with_secret(cluster, r).await?,
        None => trust.clone(),
    };
    trust
        .client_builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| http_errors::transport(provider, "building the HTTP client", &e, 0))
}
