//! The end-to-end scenarios, written against nothing but a `kube::Client`,
//! so the same code runs against a real cluster (`tests/e2e.rs`, when
//! `REGBRIDGE_E2E_KUBECONFIG` is set) and against the API stand-in
//! (`tests/e2e_standin.rs`, always). Everything lives in namespaces named
//! `<tag>-*`, and the resource selects only those.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt};
use regbridge::controller::{self, Config};
use regbridge::crd::ClusterPullSecret;
use serde_json::json;

const T: Duration = Duration::from_secs(60);

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < T, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create<K>(api: &Api<K>, obj: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(obj).unwrap();
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create failed: {e}"),
    }
}

async fn pull_secrets(client: &Client, ns: &str, sa: &str) -> Vec<String> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    api.get_opt(sa)
        .await
        .ok()
        .flatten()
        .and_then(|a| a.image_pull_secrets)
        .map(|l| l.into_iter().map(|r| r.name).collect())
        .unwrap_or_default()
}

async fn has_secret(client: &Client, ns: &str, name: &str) -> bool {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    api.get_opt(name).await.ok().flatten().is_some()
}

/// A namespace and its `default` ServiceAccount. On a real cluster
/// kube-controller-manager adds the SA; creating it is then a harmless 409.
async fn namespace(client: &Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    create(
        &namespaces,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )
    .await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    create(
        &sas,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
    )
    .await;
}

pub async fn run_scenarios(client: Client, tag: &str) {
    let ctl = format!("{tag}-ctl");
    let (a, b, c) = (format!("{tag}-a"), format!("{tag}-b"), format!("{tag}-c"));
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    create(
        &crds,
        serde_json::to_value(ClusterPullSecret::crd()).unwrap(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // Established
    for ns in [&ctl, &a, &b, &c] {
        namespace(&client, ns).await;
    }
    let ctl_secrets: Api<Secret> = Api::namespaced(client.clone(), &ctl);
    create(
        &ctl_secrets,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "dockerhub"}, "type": "Opaque",
               "stringData": {"username": "e2e", "password": "e2e-password"}}),
    )
    .await;
    // A Secret of the same name that regbridge must never touch.
    let c_secrets: Api<Secret> = Api::namespaced(client.clone(), &c);
    create(
        &c_secrets,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred"}, "type": "Opaque",
               "stringData": {"owner": "someone-else"}}),
    )
    .await;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(controller::run(
        client.clone(),
        Config {
            namespace: ctl.clone(),
            write_concurrency: 16,
            instance: "e2e".into(),
        },
        Default::default(),
        Default::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let resources: Api<ClusterPullSecret> = Api::all(client.clone());
    let name = tag.to_string();
    create(
        &resources,
        json!({"apiVersion": "regbridge.dev/v1alpha1", "kind": "ClusterPullSecret", "metadata": {"name": name},
               "spec": {"secretName": "regcred",
                        "credentials": [{"static": {"secretRef": {"namespace": ctl, "name": "dockerhub"}}}],
                        "verify": "Off",
                        "namespaces": {"include": [format!("{tag}-*")], "exclude": [ctl.clone()]}}}),
    )
    .await;

    // Distribution: a Secret and a default SA reference in a and b.
    for ns in [&a, &b] {
        eventually("Secret and default SA reference", || async {
            has_secret(&client, ns, "regcred").await
                && pull_secrets(&client, ns, "default")
                    .await
                    .contains(&"regcred".to_string())
        })
        .await;
    }

    // Conflict: c's foreign Secret is untouched, reported, and not referenced.
    eventually("conflict on status", || async {
        resources
            .get_opt(&name)
            .await
            .ok()
            .flatten()
            .and_then(|r| r.status)
            .is_some_and(|s| s.conflicts.contains(&c))
    })
    .await;
    let foreign = c_secrets.get("regcred").await.unwrap();
    assert_eq!(foreign.type_.as_deref(), Some("Opaque"));
    assert!(
        foreign.metadata.labels.unwrap_or_default().is_empty(),
        "foreign Secret untouched"
    );
    assert!(
        !pull_secrets(&client, &c, "default")
            .await
            .contains(&"regcred".to_string())
    );

    // A concurrent writer's entry survives, in order.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &a);
    let mut list = pull_secrets(&client, &a, "default").await;
    list.push("theirs".into());
    let body =
        json!({"imagePullSecrets": list.iter().map(|n| json!({"name": n})).collect::<Vec<_>>()});
    sas.patch("default", &PatchParams::default(), &Patch::Merge(&body))
        .await
        .unwrap();

    // Deselection by annotation: b loses its copy and the reference.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let opt_out = json!({"metadata": {"annotations": {"regbridge.dev/exclude": "true"}}});
    namespaces
        .patch(&b, &PatchParams::default(), &Patch::Merge(&opt_out))
        .await
        .unwrap();
    eventually("deselected namespace cleaned", || async {
        !has_secret(&client, &b, "regcred").await
            && !pull_secrets(&client, &b, "default")
                .await
                .contains(&"regcred".to_string())
    })
    .await;

    // Deletion: exactly what regbridge added goes away.
    resources
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    eventually("cleanup after deletion", || async {
        resources.get_opt(&name).await.ok().flatten().is_none()
            && !has_secret(&client, &a, "regcred").await
    })
    .await;
    assert_eq!(
        pull_secrets(&client, &a, "default").await,
        ["theirs"],
        "the other writer's entry stays"
    );
    assert!(
        has_secret(&client, &c, "regcred").await,
        "the foreign Secret stays"
    );
    assert!(
        !has_secret(&client, &ctl, &name).await,
        "the composed source is removed"
    );

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    for ns in [ctl, a, b, c] {
        let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    }
}
