//! AWS SDK errors, reduced to something safe to show.
//!
//! The SDK's own `Display` of an error can be long and can carry request
//! detail. Status, Events and logs get only the operation, the service's error
//! code (`AccessDeniedException`, `ExpiredTokenException`, ...) or a category
//! of transport failure, which is what a user needs to act on.

use std::error::Error as StdError;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_ecr::error::{ProvideErrorMetadata, SdkError};

use crate::ProviderError;

/// `provider` is the name shown to users (`ecr`, `ecrPublic`), `operation`
/// the API call (`GetAuthorizationToken`, `AssumeRoleWithWebIdentity`).
pub(crate) fn sdk_error<E, R>(
    provider: &'static str,
    operation: &str,
    err: &SdkError<E, R>,
) -> ProviderError
where
    E: ProvideErrorMetadata + StdError + 'static,
    R: std::fmt::Debug + 'static,
{
    let category = match err {
        SdkError::ServiceError(_) => {
            format!("service error {}", err.code().unwrap_or("(no error code)"))
        }
        SdkError::TimeoutError(_) => {
            return ProviderError::Remote {
                provider,
                reason: format!("{operation}: the SDK's own timeout elapsed"),
            };
        }
        SdkError::DispatchFailure(d) if d.is_timeout() => "connection timed out".into(),
        SdkError::DispatchFailure(d) if d.is_io() => "cannot reach the endpoint (I/O error)".into(),
        SdkError::ResponseError(_) => "unparseable response".into(),
        SdkError::ConstructionFailure(_) | SdkError::DispatchFailure(_) => {
            match credentials_cause(err) {
                Some(c) => format!("no usable AWS credentials ({c})"),
                None => "request could not be sent".into(),
            }
        }
        _ => "unknown SDK failure".into(),
    };
    ProviderError::Remote {
        provider,
        reason: format!("{operation}: {category}"),
    }
}

/// The credential chain's failure category, if that is what stopped the call.
fn credentials_cause(err: &(dyn StdError + 'static)) -> Option<&'static str> {
    let mut next: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            return Some(match c {
                CredentialsError::CredentialsNotLoaded(_) => "none found in the default chain",
                CredentialsError::ProviderTimedOut(_) => "credential provider timed out",
                CredentialsError::InvalidConfiguration(_) => "credential configuration is invalid",
                CredentialsError::ProviderError(_) => "credential provider failed",
                _ => "credential provider error",
            });
        }
        next = e.source();
    }
    None
}
