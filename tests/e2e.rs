//! End to end against a real cluster: runs when `REGBRIDGE_E2E_KUBECONFIG`
//! names a kubeconfig, and skips (saying so) otherwise. It creates and deletes
//! its own namespaces, all prefixed `rb-e2e-<random>-`, and its resource
//! selects only those, so it never touches anything else in the cluster.
//! The controller runs in this process against the cluster.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, CustomResourceExt};
use regbridge::controller::{self, Config};
use regbridge::crd::ClusterPullSecret;
use serde_json::json;

const T: Duration = Duration::from_secs(60);

async fn client() -> Option<Client> {
    let path = std::env::var_os("REGBRIDGE_E2E_KUBECONFIG")?;
    let kc = Kubeconfig::read_from(&path).expect("REGBRIDGE_E2E_KUBECONFIG is readable");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable");
    Some(Client::try_from(config).expect("client"))
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < T, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
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

#[tokio::test]
async fn e2e_distributes_and_cleans_up_on_a_real_cluster() {
    let Some(client) = client().await else {
        eprintln!("SKIP e2e: REGBRIDGE_E2E_KUBECONFIG is not set");
        return;
    };
    let tag = format!("rb-e2e-{}", std::process::id());
    let ctl_ns = format!("{tag}-ctl");
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    create(
        &crds,
        serde_json::to_value(ClusterPullSecret::crd()).unwrap(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // Established
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in [&ctl_ns, &format!("{tag}-a"), &format!("{tag}-b")] {
        create(
            &namespaces,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await;
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ctl_ns);
    create(
        &secrets,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "dockerhub"}, "type": "Opaque",
               "stringData": {"username": "e2e", "password": "e2e-password"}}),
    )
    .await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(controller::run(
        client.clone(),
        Config {
            namespace: ctl_ns.clone(),
            write_concurrency: 16,
            instance: "e2e".into(),
        },
        Default::default(),
        Default::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let cps_api: Api<ClusterPullSecret> = Api::all(client.clone());
    let name = tag.clone();
    create(
        &cps_api,
        json!({"apiVersion": "regbridge.dev/v1alpha1", "kind": "ClusterPullSecret", "metadata": {"name": name},
               "spec": {"secretName": "regcred",
                        "credentials": [{"static": {"secretRef": {"namespace": ctl_ns, "name": "dockerhub"}}}],
                        "namespaces": {"include": [format!("{tag}-*")], "exclude": [ctl_ns.clone()]}}}),
    )
    .await;
    for ns in [format!("{tag}-a"), format!("{tag}-b")] {
        let s: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        eventually("Secret and default SA reference", || async {
            let has_secret = s.get_opt("regcred").await.ok().flatten().is_some();
            let referenced = sa
                .get_opt("default")
                .await
                .ok()
                .flatten()
                .and_then(|a| a.image_pull_secrets)
                .is_some_and(|l| l.iter().any(|r| r.name == "regcred"));
            has_secret && referenced
        })
        .await;
    }
    cps_api
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    eventually("cleanup", || async {
        let s: Api<Secret> = Api::namespaced(client.clone(), &format!("{tag}-a"));
        cps_api.get_opt(&name).await.ok().flatten().is_none()
            && s.get_opt("regcred").await.ok().flatten().is_none()
    })
    .await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    for ns in [ctl_ns, format!("{tag}-a"), format!("{tag}-b")] {
        let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    }
}
