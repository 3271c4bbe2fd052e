//! The thin layer that talks to the outside: the writer that carries out a
//! plan, the composed source Secret, the providers' minting state, the
//! cluster as providers see it, and the kubelet's pull failures coming in.

pub mod cluster_access;
pub mod credentials;
pub mod pull_feedback;
pub mod source;
pub mod status_patch;
pub mod writer;
