//! Probes and metrics over HTTP. Readiness reflects the caches: false until
//! every registered watch has listed once, and false again while any watch
//! has been failing for longer than `STUCK_AFTER`, so a silently stuck
//! controller shows.
//!
//! Sync is tracked from each watch's own `InitDone` rather than
//! `Store::wait_until_ready`: that future wakes only its latest waiter, and
//! kube's controller runner already waits on the main store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::ops::metrics::Metrics;

pub(crate) const STUCK_AFTER: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Health {
    /// A replica waiting for the Lease runs no watches; it is ready to take
    /// over, and must count as available so that nodes can still be drained.
    standby: std::sync::atomic::AtomicBool,
    /// Each registered watch, and whether it has listed once.
    synced: Mutex<HashMap<&'static str, bool>>,
    /// Since when each failing watch has been failing.
    failing: Mutex<HashMap<&'static str, Instant>>,
}

impl Health {
    pub fn set_standby(&self, standby: bool) {
        self.standby
            .store(standby, std::sync::atomic::Ordering::SeqCst);
    }

    /// A watch readiness waits for.
    pub fn register(&self, watch: &'static str) {
        self.synced
            .lock()
            .expect("health lock")
            .entry(watch)
            .or_insert(false);
    }

    /// The watch has delivered its initial list.
    pub fn watch_synced(&self, watch: &'static str) {
        self.synced.lock().expect("health lock").insert(watch, true);
    }

    pub fn watch_failed(&self, watch: &'static str) {
        self.failing
            .lock()
            .expect("health lock")
            .entry(watch)
            .or_insert_with(Instant::now);
    }

    pub fn watch_ok(&self, watch: &'static str) {
        self.failing.lock().expect("health lock").remove(watch);
    }

    /// `Err` names why the process is not ready.
    pub fn ready(&self, now: Instant) -> Result<(), String> {
        if self.standby.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        {
            let synced = self.synced.lock().expect("health lock");
            let mut pending: Vec<&str> = synced
                .iter()
                .filter(|(_, ok)| !**ok)
                .map(|(w, _)| *w)
                .collect();
            if synced.is_empty() {
                return Err("no watch started yet".into());
            }
            if !pending.is_empty() {
                pending.sort();
                return Err(format!("caches not synced: {}", pending.join(", ")));
            }
        }
        let failing = self.failing.lock().expect("health lock");
        let mut stuck: Vec<&str> = failing
            .iter()
            .filter(|(_, since)| now.duration_since(**since) > STUCK_AFTER)
            .map(|(w, _)| *w)
            .collect();
        stuck.sort();
        if stuck.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "watches failing for over {}s: {}",
                STUCK_AFTER.as_secs(),
                stuck.join(", ")
            ))
        }
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

pub fn router(health: Arc<Health>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .with_state(AppState { health, metrics })
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    match s.health.ready(Instant::now()) {
        Ok(()) => (StatusCode::OK, "ok".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    axum::serve(listener, router(health, metrics)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn probes_and_metrics_are_served_over_http() {
        let health = Arc::new(Health::default());
        let metrics = Arc::new(Metrics::default());
        metrics.write("secrets", "create", true);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(health.clone(), metrics);
        tokio::spawn(async move { axum::serve(listener, app).await });
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let unready = get(addr, "/readyz").await;
        assert!(unready.starts_with("HTTP/1.1 503"), "{unready}");
        health.register("namespaces");
        health.watch_synced("namespaces");
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let scraped = get(addr, "/metrics").await;
        assert!(
            scraped.contains(
                r#"regbridge_api_writes_total{kind="secrets",verb="create",result="ok"} 1"#
            ),
            "{scraped}"
        );
        assert!(scraped.contains("application/openmetrics-text"));
    }

    #[test]
    fn not_ready_until_every_registered_watch_synced() {
        let h = Health::default();
        assert!(h.ready(Instant::now()).is_err());
        h.register("namespaces");
        h.register("secrets");
        h.watch_synced("namespaces");
        let err = h.ready(Instant::now()).unwrap_err();
        assert!(
            err.contains("secrets") && !err.contains("namespaces"),
            "{err}"
        );
        h.watch_synced("secrets");
        assert!(h.ready(Instant::now()).is_ok());
    }

    #[test]
    fn a_standby_replica_is_ready() {
        let h = Health::default();
        h.set_standby(true);
        assert!(h.ready(Instant::now()).is_ok());
        h.set_standby(false);
        assert!(
            h.ready(Instant::now()).is_err(),
            "the leader waits for its caches"
        );
    }

    #[test]
    fn a_watch_failing_for_over_a_minute_makes_it_unready() {
        let h = Health::default();
        h.register("namespaces");
        h.watch_synced("namespaces");
        h.watch_failed("namespaces");
        let now = Instant::now();
        assert!(h.ready(now).is_ok(), "a brief failure is tolerated");
        let err = h
            .ready(now + STUCK_AFTER + Duration::from_secs(1))
            .unwrap_err();
        assert!(err.contains("namespaces"));
        h.watch_ok("namespaces");
        assert!(h.ready(now + STUCK_AFTER * 2).is_ok(), "recovery clears it");
    }
}
