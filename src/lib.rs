//! regbridge: keeps registry pull credentials fresh and distributes them to
//! the namespaces and ServiceAccounts that need them.
pub mod admission;
pub mod apply_plan;
pub mod cli;
pub mod cluster_access;
pub mod compose;
pub mod controller;
pub mod crd;
pub mod credentials;
pub mod distribute;
#[doc(hidden)]
pub mod fixtures;
pub mod health;
pub mod index;
pub mod labels;
pub mod leader;
pub mod metrics;
pub mod mint;
pub mod pull_failures;
pub mod pull_feedback;
pub mod refresh;
pub mod selection;
pub mod selection_cache;
pub mod serviceaccount_patch;
pub mod status;
pub mod telemetry;
pub mod webhook;
pub mod webhook_tls;
pub mod yaml;
