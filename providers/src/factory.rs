//! The one place a spec entry becomes a provider: adding a provider means
//! its own module plus one match arm here.

use crate::provider::{BuildContext, Provider, ProviderError};
use crate::spec::CredentialSpec;
use crate::static_creds::StaticProvider;

/// The one place a spec entry becomes a provider.
pub fn build(
    spec: &CredentialSpec,
    ctx: &BuildContext,
) -> Result<Box<dyn Provider>, ProviderError> {
    #[cfg(not(all(feature = "ecr", feature = "gar", feature = "harbor", feature = "acr")))]
    let _ = ctx;
    match spec {
        CredentialSpec::Static(s) => Ok(Box::new(StaticProvider::new(s.clone())?)),
        #[cfg(feature = "ecr")]
        CredentialSpec::Ecr(s) => Ok(Box::new(crate::aws::ecr::EcrProvider::new(s.clone(), ctx)?)),
        #[cfg(not(feature = "ecr"))]
        CredentialSpec::Ecr(_) => Err(ProviderError::NotCompiledIn("ecr")),
        #[cfg(feature = "ecr")]
        CredentialSpec::EcrPublic(s) => Ok(Box::new(
            crate::aws::ecr_public::EcrPublicProvider::new(s.clone(), ctx),
        )),
        #[cfg(not(feature = "ecr"))]
        CredentialSpec::EcrPublic(_) => Err(ProviderError::NotCompiledIn("ecr")),
        #[cfg(feature = "gar")]
        CredentialSpec::Gar(s) => Ok(Box::new(crate::gar::GarProvider::new(s.clone(), ctx)?)),
        #[cfg(not(feature = "gar"))]
        CredentialSpec::Gar(_) => Err(ProviderError::NotCompiledIn("gar")),
        #[cfg(feature = "harbor")]
        CredentialSpec::Harbor(s) => Ok(Box::new(crate::harbor::HarborProvider::new(
            s.clone(),
            ctx,
        )?)),
        #[cfg(not(feature = "harbor"))]
        CredentialSpec::Harbor(_) => Err(ProviderError::NotCompiledIn("harbor")),
        #[cfg(feature = "acr")]
        CredentialSpec::Acr(s) => Ok(Box::new(crate::azure::acr::AcrProvider::new(
            s.clone(),
            ctx,
        )?)),
        #[cfg(not(feature = "acr"))]
        CredentialSpec::Acr(_) => Err(ProviderError::NotCompiledIn("acr")),
    }
}
