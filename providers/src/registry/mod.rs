//! The registry side: how kubelet reads a key, the dockerconfigjson format
//! it reads, and the registry handshake that proves a minted credential is
//! accepted.

pub mod dockerconfig;
pub mod key;
pub mod verify;
