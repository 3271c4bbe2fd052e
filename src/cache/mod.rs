//! What the controller knows about the cluster: the watches, the compact
//! views they keep of namespaces, ServiceAccounts and managed Secrets, and
//! which namespaces each resource selects. Decisions read these; nothing here
//! writes to the API server.

pub mod index;
pub mod selection;
pub mod selections;
pub mod watches;
