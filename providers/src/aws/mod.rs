//! AWS: ECR and ECR Public through the pod's own identity, a role, or a
//! tenant's ServiceAccount.

mod common;
pub(crate) mod ecr;
pub(crate) mod ecr_public;
mod errors;
