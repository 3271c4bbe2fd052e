//! regbridge: keeps registry pull credentials fresh and distributes them to
//! the namespaces and ServiceAccounts that need them.
//!
//! The folders are layers, and dependencies only point down (a test in
//! `tests/layering.rs` keeps it so):
//!
//! - `api`: the resource's types and the labels regbridge writes;
//! - `ops`: health, metrics, logs, leader election;
//! - `cache`: watches and what they keep;
//! - `decide`: pure decisions over cached state;
//! - `io`: the API calls and provider calls that carry decisions out;
//! - `reconcile`: one resource's pipeline, its cleanup, and what triggers it;
//! - `webhook`: the admission server.
//!
//! `cli` and `mint` serve the binary's commands.

pub mod api;
pub mod cache;
pub mod cli;
pub(crate) mod decide;
#[cfg(test)]
mod fixtures;
pub(crate) mod io;
pub mod mint;
pub mod ops;
pub mod reconcile;
pub mod webhook;
