//! Writes a resource's status, and only when it differs from what the
//! cache holds: a status write is itself a watch event.

use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

use crate::api::crd::{ClusterPullSecret, ClusterPullSecretStatus};
use crate::api::labels::FIELD_MANAGER;
use crate::ops::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
#[error("writing status of {resource}: {source}")]
pub struct StatusError {
    resource: String,
    #[source]
    source: kube::Error,
}

pub async fn write_status(
    client: &Client,
    metrics: &Metrics,
    cps: &ClusterPullSecret,
    status: ClusterPullSecretStatus,
) -> Result<(), StatusError> {
    if cps.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<ClusterPullSecret> = Api::all(client.clone());
    let body = serde_json::json!({ "status": status });
    let result = api
        .patch_status(
            &cps.name_any(),
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Merge(&body),
        )
        .await;
    metrics.write("clusterpullsecrets", "patch", result.is_ok());
    result.map(|_| ()).map_err(|source| StatusError {
        resource: cps.name_any(),
        source,
    })
}
