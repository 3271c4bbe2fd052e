//! HTTP failures of the providers that speak plain HTTP (GAR, Harbor, ACR),
//! reduced to a category. reqwest's own `Display` names the URL, and a
//! response body can echo a secret, so neither is passed on.

use crate::ProviderError;

pub(crate) fn transport(
    provider: &'static str,
    what: &str,
    err: &reqwest::Error,
    timeout_secs: u64,
) -> ProviderError {
    if err.is_timeout() {
        return ProviderError::Timeout {
            provider,
            seconds: timeout_secs.max(1),
        };
    }
    let category = if err.is_connect() {
        "cannot connect"
    } else if err.is_decode() {
        "unreadable response body"
    } else if err.is_body() {
        "the response body broke off"
    } else if err.is_redirect() {
        "too many redirects"
    } else if err.is_builder() {
        "the request could not be built"
    } else {
        "request failed"
    };
    ProviderError::Remote {
        provider,
        reason: format!("{what}: {category}"),
    }
}

/// A non-success status, named by code and reason phrase only.
#[cfg(any(feature = "gar", feature = "harbor"))]
pub(crate) fn status(
    provider: &'static str,
    what: &str,
    status: reqwest::StatusCode,
) -> ProviderError {
    ProviderError::Remote {
        provider,
        reason: format!("{what}: answered {status}"),
    }
}
