//! Builders for the objects tests feed the pure planners.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;

use crate::cache::index::{NamespaceView, ServiceAccountView};
use k8s_openapi::api::core::v1::{
    LocalObjectReference, Namespace, NamespaceStatus, Secret, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

pub struct NsBuilder(Namespace);

pub fn ns(name: &str) -> NsBuilder {
    NsBuilder(Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        status: Some(NamespaceStatus {
            phase: Some("Active".into()),
            ..Default::default()
        }),
        ..Default::default()
    })
}

impl NsBuilder {
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(k.into(), v.into());
        self
    }
    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(k.into(), v.into());
        self
    }
    pub fn terminating(mut self) -> Self {
        self.0.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        self.0.status = Some(NamespaceStatus {
            phase: Some("Terminating".into()),
            ..Default::default()
        });
        self
    }
    pub fn object(self) -> Namespace {
        self.0
    }
    pub fn build(self) -> NamespaceView {
        NamespaceView::from(&self.0)
    }
}

pub struct SaBuilder(ServiceAccount);

pub fn sa(namespace: &str, name: &str) -> SaBuilder {
    SaBuilder(ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        ..Default::default()
    })
}

impl SaBuilder {
    pub fn pull_secrets(mut self, names: &[&str]) -> Self {
        self.0.image_pull_secrets = Some(
            names
                .iter()
                .map(|n| LocalObjectReference {
                    name: n.to_string(),
                })
                .collect(),
        );
        self
    }
    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(k.into(), v.into());
        self
    }
    pub fn object(self) -> ServiceAccount {
        self.0
    }
    pub fn build(self) -> ServiceAccountView {
        ServiceAccountView::from(&self.0)
    }
}

/// A Secret as the managed-secrets cache holds it.
pub fn secret(namespace: &str, name: &str, labels: &[(&str, &str)], payload: &[u8]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            resource_version: Some("7".into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        data: Some(
            [(
                ".dockerconfigjson".to_string(),
                ByteString(payload.to_vec()),
            )]
            .into(),
        ),
        ..Default::default()
    }
}
