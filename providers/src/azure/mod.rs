//! Azure: the `acr` provider (Azure Container Registry), the Microsoft
//! Entra token it exchanges, and the transport that keeps azure_core on
//! regbridge's own HTTP and TLS stack.

pub(crate) mod acr;
mod entra;
mod transport;

/// The provider's name in errors, status and metrics.
const NAME: &str = "acr";
