//! The registry side: the dockerconfigjson format kubelet reads, and the
//! registry handshake that proves a minted credential is accepted.

pub mod dockerconfig;
pub mod verify;
