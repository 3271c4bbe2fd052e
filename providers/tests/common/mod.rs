//! Helpers shared by the provider integration tests: finding a peer, and a
//! `Cluster` that answers from memory.

#![allow(dead_code)] // each test binary uses its own subset

pub mod azure;
pub mod google_sts;
pub mod harbor;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;

use async_trait::async_trait;
use regbridge_providers::spec::{SecretRef, ServiceAccountRef};
use regbridge_providers::{Cluster, Redacted, SecretData, SourceError};

/// The peer's address from `var`, or `None` after a loud SKIP line. With
/// `REGBRIDGE_REQUIRE_PEERS=1` a missing peer fails the test instead.
pub fn peer(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().trim_end_matches('/').to_owned()),
        _ => {
            if std::env::var("REGBRIDGE_REQUIRE_PEERS").as_deref() == Ok("1") {
                panic!(
                    "{var} is unset, and REGBRIDGE_REQUIRE_PEERS=1 makes a missing peer a failure"
                );
            }
            // Straight to the stream, past the test harness's output capture.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIP: {var} is unset, so this peer test did not run (tests/run.sh starts the peers) ***\n"
            );
            None
        }
    }
}

/// A cluster held in memory: Secrets by namespace/name, and a fixed token for
/// every TokenRequest, recording who asked for which audience.
#[derive(Default)]
pub struct TestCluster {
    pub secrets: BTreeMap<(String, String), SecretData>,
    pub token: Option<String>,
    pub token_requests: Mutex<Vec<(ServiceAccountRef, String)>>,
}

impl TestCluster {
    pub fn with_secret(mut self, namespace: &str, name: &str, pairs: &[(&str, &[u8])]) -> Self {
        self.secrets.insert(
            (namespace.into(), name.into()),
            SecretData {
                type_: Some("Opaque".into()),
                data: pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_vec()))
                    .collect(),
            },
        );
        self
    }

    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.into());
        self
    }
}

#[async_trait]
impl Cluster for TestCluster {
    async fn secret(&self, reference: &SecretRef) -> Result<Option<SecretData>, SourceError> {
        Ok(self
            .secrets
            .get(&(reference.namespace.clone(), reference.name.clone()))
            .cloned())
    }

    async fn service_account_token(
        &self,
        sa: &ServiceAccountRef,
        audience: &str,
    ) -> Result<Redacted<String>, SourceError> {
        self.token_requests
            .lock()
            .unwrap()
            .push((sa.clone(), audience.into()));
        self.token
            .clone()
            .map(Redacted::new)
            .ok_or(SourceError::Token {
                namespace: sa.namespace.clone(),
                name: sa.name.clone(),
                reason: "this test cluster has no token".into(),
            })
    }
}

pub fn secret_ref(namespace: &str, name: &str) -> SecretRef {
    SecretRef {
        namespace: namespace.into(),
        name: name.into(),
    }
}
