//! Types only: the `ClusterPullSecret` resource as the API server stores it,
//! the labels and annotations regbridge writes, and the YAML it prints.
//! Everything else may depend on this; it depends on nothing in the crate.

pub mod crd;
pub(crate) mod labels;
pub(crate) mod yaml;
