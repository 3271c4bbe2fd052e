//! One `ClusterPullSecret`'s reconcile, run by kube-runtime's controller.
//! `entry` is what the controller calls (the finalizer around the rest),
//! `apply` the pipeline of a live resource, `cleanup` the teardown of a
//! deleted one, `report` what they announce, `context` what they share, and
//! `triggers` what sets a reconcile off and how the controller is assembled.

mod apply;
mod cleanup;
mod context;
mod entry;
mod report;
mod triggers;

pub use self::context::Config;
pub use self::triggers::run;
