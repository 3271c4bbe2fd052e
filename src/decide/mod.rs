//! Pure decisions: functions of cached state and minted credentials that
//! return what should be true (a composed payload, a plan of writes, a status,
//! a refresh time, an admission patch). No I/O and no clock of their own, so
//! each is unit-tested on plain values. `io` carries their output out.

pub mod admission;
pub mod compose;
pub mod distribute;
pub mod entries;
pub mod pull_failures;
pub mod refresh;
pub mod sa_patch;
pub mod status;
pub mod validate;
pub mod verdicts;
