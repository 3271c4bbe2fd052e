//! The end-to-end scenarios, written against nothing but a `kube::Client`,
//! so the same code runs against a real cluster (`tests/e2e.rs`, when
//! `REGBRIDGE_E2E_KUBECONFIG` is set) and against the API stand-in
//! (`tests/e2e_standin.rs`, always). Everything lives in namespaces named
//! `<tag>-*`, and each resource selects only its own.
//!
//! The controller and the webhook run in this process. The webhook's
//! configuration is the chart's, pointed by `url` at this process and
//! narrowed to the namespaces labelled with the tag, so the API server
//! calls it for nothing else in the cluster.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use regbridge::api::crd::ClusterPullSecret;
use regbridge::ops::health::Health;
use regbridge::ops::metrics::Metrics;
use regbridge::reconcile::{self, Config};
use regbridge::webhook::tls::TLS_SECRET;
use regbridge::webhook::{self, WebhookConfig};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(60);
/// The label that narrows the webhook configuration to this run's namespaces.
const E2E_LABEL: &str = "regbridge.dev/e2e";

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

/// Creates `obj`, or leaves the existing one; returns what the server
/// stored when it created it.
async fn create<K>(api: &Api<K>, obj: Value) -> Option<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(obj).unwrap();
    match api.create(&PostParams::default(), &obj).await {
        Ok(created) => Some(created),
        Err(kube::Error::Api(s)) if s.code == 409 => None,
        Err(e) => panic!("create failed: {e}"),
    }
}

/// Names in an `imagePullSecrets` list.
fn names(list: Option<Vec<k8s_openapi::api::core::v1::LocalObjectReference>>) -> Vec<String> {
    list.unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect()
}

async fn pull_secrets(client: &Client, ns: &str, sa: &str) -> Vec<String> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    names(
        api.get_opt(sa)
            .await
            .ok()
            .flatten()
            .and_then(|a| a.image_pull_secrets),
    )
}

async fn has_secret(client: &Client, ns: &str, name: &str) -> bool {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    api.get_opt(name).await.ok().flatten().is_some()
}

/// A namespace with `labels`, and its `default` ServiceAccount. On a real
/// cluster kube-controller-manager adds the SA; creating it is then a
/// harmless 409.
async fn namespace(client: &Client, name: &str, labels: Value) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    create(
        &namespaces,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}),
    )
    .await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    create(
        &sas,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
    )
    .await;
}

/// A ClusterPullSecret of the static `dockerhub` credential in `ctl`.
fn resource(name: &str, ctl: &str, namespaces: Value, service_accounts: &[&str]) -> Value {
    json!({"apiVersion": "regbridge.dev/v1alpha1", "kind": "ClusterPullSecret", "metadata": {"name": name},
           "spec": {"secretName": "regcred",
                    "credentials": [{"static": {"secretRef": {"namespace": ctl, "name": "dockerhub"}}}],
                    "verify": "Off",
                    "serviceAccounts": service_accounts,
                    "namespaces": namespaces}})
}

/// Deletes the resource and waits until it is gone (its finalizer ran) and
/// `cleaned` holds.
async fn delete_and_wait<F, Fut>(resources: &Api<ClusterPullSecret>, name: &str, mut cleaned: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    resources
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    eventually("cleanup after deletion", || {
        let check = cleaned();
        async move { resources.get_opt(name).await.ok().flatten().is_none() && check.await }
    })
    .await;
}

/// Something running in this process until it is told to stop.
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    fn spawn<F, Fut>(f: F) -> Self
    where
        F: FnOnce(oneshot::Receiver<()>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        Self {
            stop,
            task: tokio::spawn(f(stopped)),
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

fn controller(client: &Client, ctl: &str) -> Running {
    let (client, ctl) = (client.clone(), ctl.to_owned());
    Running::spawn(|stopped| async move {
        reconcile::run(
            client,
            Config {
                namespace: ctl,
                write_concurrency: 16,
                trust: regbridge_providers::Trust::system(),
                instance: "e2e".into(),
            },
            Default::default(),
            Default::default(),
            async move {
                let _ = stopped.await;
            },
        )
        .await
    })
}

/// Where the API server reaches the webhook this process serves: an
/// address of this machine it can route to, and a port (0: any free one).
pub struct WebhookEndpoint {
    pub host: IpAddr,
    pub port: u16,
}

/// Where the API server can reach this process: `REGBRIDGE_E2E_WEBHOOK_HOST`
/// when set; loopback for an API server on loopback; otherwise the address
/// this machine uses to reach the API server, which the API server can
/// usually route back to (a kind node reaching its host, a VM its peer).
fn webhook_endpoint(server: &axum::http::Uri) -> WebhookEndpoint {
    let port = std::env::var("REGBRIDGE_E2E_WEBHOOK_PORT")
        .ok()
        .map(|p| p.parse().expect("REGBRIDGE_E2E_WEBHOOK_PORT is a port"))
        .unwrap_or(0);
    if let Ok(host) = std::env::var("REGBRIDGE_E2E_WEBHOOK_HOST") {
        let host = host
            .parse()
            .expect("REGBRIDGE_E2E_WEBHOOK_HOST is an IP address");
        return WebhookEndpoint { host, port };
    }
    let api = (
        server.host().expect("the cluster URL has a host"),
        server.port_u16().unwrap_or(443),
    )
        .to_socket_addrs()
        .expect("the API server's address resolves")
        .next()
        .expect("the API server has an address");
    let host = if api.ip().is_loopback() {
        api.ip()
    } else {
        let unspecified = match api {
            std::net::SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            std::net::SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        // A connected UDP socket sends nothing; it only picks the route.
        let probe = UdpSocket::bind((unspecified, 0)).expect("a UDP socket");
        probe.connect(api).expect("a route to the API server");
        probe.local_addr().expect("a local address").ip()
    };
    WebhookEndpoint { host, port }
}

/// A client for the cluster the kubeconfig at `path` names, and where its
/// API server can reach this process.
pub async fn connect(path: &std::path::Path) -> (Client, WebhookEndpoint) {
    let kc = Kubeconfig::read_from(path).expect("the kubeconfig is readable");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("the kubeconfig is usable");
    let endpoint = webhook_endpoint(&config.cluster_url);
    (Client::try_from(config).expect("a client"), endpoint)
}

/// Every scenario, one after another: each runs its own controller, and two
/// at once would both reconcile every resource.
pub async fn run_all(client: Client, tag: &str, endpoint: WebhookEndpoint) {
    let ctl = format!("{tag}-ctl");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    // As `kubectl apply -f deploy/crds/` sends it.
    create(&crds, crate::installed_crd()).await;
    eventually("the CRD established", || async {
        crds.get_opt("clusterpullsecrets.regbridge.dev")
            .await
            .ok()
            .flatten()
            .and_then(|c| c.status?.conditions)
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            })
    })
    .await;
    namespace(&client, &ctl, json!({})).await;
    let ctl_secrets: Api<Secret> = Api::namespaced(client.clone(), &ctl);
    create(
        &ctl_secrets,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "dockerhub"}, "type": "Opaque",
               "stringData": {"username": "e2e", "password": "e2e-password"}}),
    )
    .await;

    let mut created = distribution(&client, tag, &ctl).await;
    created.extend(first_pods(&client, tag, &ctl, endpoint).await);

    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in created.into_iter().chain([ctl]) {
        let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    }
}

/// Distribution, a foreign Secret, a concurrent writer, opting out and
/// deletion. Returns the namespaces it created.
async fn distribution(client: &Client, tag: &str, ctl: &str) -> Vec<String> {
    let (a, b, c) = (format!("{tag}-a"), format!("{tag}-b"), format!("{tag}-c"));
    for ns in [&a, &b, &c] {
        namespace(client, ns, json!({})).await;
    }
    // A Secret of the same name that regbridge must never touch.
    let c_secrets: Api<Secret> = Api::namespaced(client.clone(), &c);
    create(
        &c_secrets,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred"}, "type": "Opaque",
               "stringData": {"owner": "someone-else"}}),
    )
    .await;

    let running = controller(client, ctl);
    let resources: Api<ClusterPullSecret> = Api::all(client.clone());
    let name = tag.to_string();
    create(
        &resources,
        resource(
            &name,
            ctl,
            json!({"include": [format!("{tag}-*")], "exclude": [ctl]}),
            &["default"],
        ),
    )
    .await;

    // Distribution: a Secret and a default SA reference in a and b.
    for ns in [&a, &b] {
        eventually("Secret and default SA reference", || async {
            has_secret(client, ns, "regcred").await
                && pull_secrets(client, ns, "default")
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
        !pull_secrets(client, &c, "default")
            .await
            .contains(&"regcred".to_string())
    );

    // A concurrent writer's entry survives, in order.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &a);
    let mut list = pull_secrets(client, &a, "default").await;
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
        !has_secret(client, &b, "regcred").await
            && !pull_secrets(client, &b, "default")
                .await
                .contains(&"regcred".to_string())
    })
    .await;

    // Deletion: exactly what regbridge added goes away.
    delete_and_wait(&resources, &name, || async {
        !has_secret(client, &a, "regcred").await
    })
    .await;
    assert_eq!(
        pull_secrets(client, &a, "default").await,
        ["theirs"],
        "the other writer's entry stays"
    );
    assert!(
        has_secret(client, &c, "regcred").await,
        "the foreign Secret stays"
    );
    assert!(
        !has_secret(client, ctl, &name).await,
        "the composed source is removed"
    );
    running.stop().await;
    vec![a, b, c]
}

/// The chart's webhook configuration under `name`, pointed at `url` and
/// narrowed to the namespaces labelled with `tag`. Everything else (rules, failurePolicy,
/// timeout, matchConditions, the namespaceSelector's exclusions) is the
/// chart's own, so the API server checks what users install.
fn webhook_configuration(name: &str, tag: &str, url: &str) -> Value {
    let mut config = crate::chart_webhook_configuration();
    config["metadata"] = json!({ "name": name });
    for hook in config["webhooks"].as_array_mut().unwrap() {
        hook["clientConfig"] = json!({"url": url});
        hook["namespaceSelector"]["matchExpressions"]
            .as_array_mut()
            .unwrap()
            .push(json!({"key": E2E_LABEL, "operator": "In", "values": [tag]}));
    }
    config
}

/// A pod that never runs: nothing in the cluster matches its node selector.
fn pod(name: &str, service_account: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"serviceAccountName": service_account,
                    "nodeSelector": {"regbridge.dev/e2e-never": "scheduled"},
                    "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}})
}

fn service_account(name: &str, pull_secrets: &[&str]) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name},
           "imagePullSecrets": pull_secrets.iter().map(|n| json!({"name": n})).collect::<Vec<_>>()})
}

/// How many pods `first_pods` creates right after their ServiceAccounts
/// (`REGBRIDGE_E2E_FIRST_PODS`, default 1,000: the target).
fn first_pod_count() -> usize {
    std::env::var("REGBRIDGE_E2E_FIRST_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// The admission webhook, called by the API server: a namespace, its
/// ServiceAccount and a pod created back to back; writes that drop the
/// reference; many pods each created right after its ServiceAccount.
/// Returns the namespaces it created.
async fn first_pods(
    client: &Client,
    tag: &str,
    ctl: &str,
    endpoint: WebhookEndpoint,
) -> Vec<String> {
    let labels = json!({ E2E_LABEL: tag });
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(endpoint.host, endpoint.port))
        .await
        .expect("a port for the webhook");
    let url = format!(
        "https://{}{}",
        listener.local_addr().unwrap(),
        webhook::PATH
    );
    let configuration = format!("{tag}-webhook");
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    // The configuration first: the webhook puts its CA into it on start.
    create(
        &configurations,
        webhook_configuration(&configuration, tag, &url),
    )
    .await;
    let webhook_run = {
        let client = client.clone();
        let config = WebhookConfig {
            namespace: ctl.to_owned(),
            service: "regbridge-webhook".into(),
            secret: TLS_SECRET.into(),
            configuration: configuration.clone(),
            extra_names: vec![endpoint.host.to_string()],
            tls_dir: None,
        };
        Running::spawn(|stopped| async move {
            let served = webhook::run(
                client,
                config,
                listener,
                Arc::new(Health::default()),
                Arc::new(Metrics::default()),
                async move {
                    let _ = stopped.await;
                },
            );
            served.await.expect("the webhook serves");
        })
    };
    let running = controller(client, ctl);
    let resources: Api<ClusterPullSecret> = Api::all(client.clone());
    let name = format!("{tag}-webhook");
    create(
        &resources,
        resource(
            &name,
            ctl,
            json!({"include": [format!("{tag}-w-*")]}),
            &["*"],
        ),
    )
    .await;

    // The API server calls the webhook once it has the configuration and
    // its caBundle: probe until a new ServiceAccount comes back with the
    // reference, so nothing below races the set-up.
    let probe = format!("{tag}-w-probe");
    namespace(client, &probe, labels.clone()).await;
    let probes: Api<ServiceAccount> = Api::namespaced(client.clone(), &probe);
    let mut attempt = 0;
    eventually(
        &format!("the API server calling the webhook at {url} (set REGBRIDGE_E2E_WEBHOOK_HOST to an address of this machine it can reach)"),
        || {
            attempt += 1;
            let obj = service_account(&format!("probe-{attempt}"), &[]);
            let probes = probes.clone();
            async move {
                let sa = create(&probes, obj).await.expect("a new probe");
                names(sa.image_pull_secrets).contains(&"regcred".to_string())
            }
        },
    )
    .await;

    // A namespace, its ServiceAccount and a pod, back to back: the pod has
    // the reference from birth, and so does the ServiceAccount.
    let fresh = format!("{tag}-w-fresh");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    create(
        &namespaces,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": fresh, "labels": labels}}),
    )
    .await
    .expect("a new namespace");
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &fresh);
    let sa = create(&sas, service_account("app", &[]))
        .await
        .expect("a new ServiceAccount");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &fresh);
    let first = create(&pods, pod("first", "app")).await.expect("a new pod");
    assert_eq!(names(sa.image_pull_secrets), ["regcred"]);
    assert_eq!(
        names(first.spec.unwrap().image_pull_secrets),
        ["regcred"],
        "the first pod has the reference from birth"
    );

    // The reference may come before the Secret; the controller follows.
    eventually("the Secret in the new namespace", || {
        has_secret(client, &fresh, "regcred")
    })
    .await;

    // A pod listing its own pull secret gets the managed one appended.
    let mut own = pod("own-list", "app");
    own["spec"]["imagePullSecrets"] = json!([{"name": "theirs"}]);
    let own = create(&pods, own).await.expect("a new pod");
    assert_eq!(
        names(own.spec.unwrap().image_pull_secrets),
        ["theirs", "regcred"]
    );

    // Writes that drop the reference get it back in the same request.
    let gitops = create(&sas, service_account("gitops", &["theirs"]))
        .await
        .expect("a new ServiceAccount");
    assert_eq!(names(gitops.image_pull_secrets), ["theirs", "regcred"]);
    let merged = sas
        .patch(
            "gitops",
            &PatchParams::default(),
            &Patch::Merge(&json!({"imagePullSecrets": [{"name": "theirs"}]})),
        )
        .await
        .unwrap();
    assert_eq!(
        names(merged.image_pull_secrets),
        ["theirs", "regcred"],
        "a merge patch dropping the reference"
    );
    let applied = sas
        .patch(
            "gitops",
            &PatchParams::apply("e2e-gitops").force(),
            &Patch::Apply(&service_account("gitops", &["theirs"])),
        )
        .await
        .unwrap();
    assert_eq!(
        names(applied.image_pull_secrets),
        ["theirs", "regcred"],
        "a server-side apply dropping the reference"
    );

    // Many pods, each created right after its ServiceAccount.
    let many = format!("{tag}-w-many");
    namespace(client, &many, labels.clone()).await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &many);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &many);
    let count = first_pod_count();
    let started = Instant::now();
    let mut without = Vec::new();
    for i in 0..count {
        create(&sas, service_account(&format!("sa-{i}"), &[]))
            .await
            .expect("a new ServiceAccount");
        let p = create(&pods, pod(&format!("pod-{i}"), &format!("sa-{i}")))
            .await
            .expect("a new pod");
        if !names(p.spec.unwrap().image_pull_secrets).contains(&"regcred".to_string()) {
            without.push(i);
        }
    }
    eprintln!(
        "first pods: {count} created right after their ServiceAccounts in {:.1} s, {} without the reference",
        started.elapsed().as_secs_f64(),
        without.len()
    );
    assert!(
        without.is_empty(),
        "pods without the reference: {without:?}"
    );

    // Deleting the resource takes back exactly what regbridge added,
    // including what the webhook added, and the webhook does not put it back.
    delete_and_wait(&resources, &name, || async {
        pull_secrets(client, &fresh, "gitops").await == ["theirs"]
            && pull_secrets(client, &fresh, "app").await.is_empty()
    })
    .await;

    running.stop().await;
    webhook_run.stop().await;
    let _ = configurations
        .delete(&configuration, &DeleteParams::default())
        .await;
    vec![probe, fresh, many]
}
