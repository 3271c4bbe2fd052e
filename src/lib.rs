//! regbridge: keeps registry pull credentials fresh and distributes them to
//! the namespaces and ServiceAccounts that need them.
pub mod compose;
pub mod crd;
pub mod distribute;
#[doc(hidden)]
pub mod fixtures;
pub mod labels;
pub mod selection;
pub mod serviceaccount_patch;
