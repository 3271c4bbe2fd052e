//! Registry credential providers for regbridge.
//!
//! Every provider turns one `credentials:` entry of a `ClusterPullSecret` (or of a
//! `regbridge mint --config` file) into short-lived registry credentials. The
//! controller and `mint` only ever see the [`Provider`] trait and the [`build`]
//! factory, so adding a provider touches its own module plus one match arm.
//!
//! The spec types live here and are always compiled, so the CRD schema is the
//! same whatever cargo features a build enables; only the implementations that
//! pull in cloud SDKs sit behind features.

#[cfg(any(feature = "harbor", feature = "acr"))]
mod api_client;
#[cfg(feature = "ecr")]
mod aws;
#[cfg(feature = "acr")]
mod azure;
mod body;
pub mod connect_to;
mod credential;
pub mod duration;
mod factory;
#[cfg(feature = "gar")]
mod gar;
#[cfg(feature = "harbor")]
mod harbor;
#[cfg(any(feature = "gar", feature = "harbor", feature = "acr"))]
mod http_errors;
mod provider;
pub mod registry;
mod source;
pub mod spec;
mod static_creds;
pub mod trust;

pub use credential::{Redacted, RegistryCredential};
pub use factory::build;
pub use provider::{BuildContext, Provider, ProviderError};
pub use registry::verify::{Verification, Verifier, VerifyError};
pub use source::{Cluster, NoCluster, SecretData, SourceError};
pub use trust::{Trust, TrustError};
