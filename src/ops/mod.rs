//! Running as a service: health and readiness, Prometheus metrics, logs,
//! and leader election. Depends only on `api`, so every other layer can
//! report through it.

pub mod health;
pub mod leader;
pub mod metrics;
pub mod telemetry;
