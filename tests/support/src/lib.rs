//! A running controller against the in-process API stand-in, plus builders
//! for the objects tests create. Shared by the controller, scale and e2e
//! tests.

pub mod e2e;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use regbridge::ops::health::Health;
use regbridge::ops::metrics::Metrics;
use regbridge::reconcile::{self, Config};
use regbridge_standin::{Resource, StandIn};
use serde_json::{Value, json};

pub const CONTROLLER_NS: &str = "regbridge";
pub const PASSWORD: &str = "hunter2-never-logged";

pub struct Harness {
    pub server: StandIn,
    pub client: kube::Client,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    /// A stand-in with the CRD and the controller's namespace, and the
    /// controller running against it.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(seed: impl FnOnce(&StandIn)) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let server = StandIn::start().await;
        server
            .create(&Resource::CRDS, None, installed_crd())
            .expect("CRD");
        namespace(&server, CONTROLLER_NS, json!({}));
        seed(&server);
        let config = kube::Config::new(server.url().parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let mut h = Self {
            server,
            client,
            health: Arc::default(),
            metrics: Arc::default(),
            stop: None,
            task: None,
        };
        h.run_controller().await;
        h
    }

    /// Starts the controller, as a new process would: fresh caches, health
    /// and metrics. Returns once its caches have synced.
    async fn run_controller(&mut self) {
        self.health = Arc::new(Health::default());
        self.metrics = Arc::new(Metrics::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        self.task = Some(tokio::spawn(reconcile::run(
            self.client.clone(),
            Config {
                namespace: CONTROLLER_NS.into(),
                write_concurrency: 32,
                trust: regbridge_providers::Trust::system(),
                instance: "test".into(),
            },
            self.health.clone(),
            self.metrics.clone(),
            async move {
                let _ = stopped.await;
            },
        )));
        self.stop = Some(stop);
        let health = self.health.clone();
        wait_for("caches to sync", Duration::from_secs(10), || {
            health.ready(Instant::now()).is_ok()
        })
        .await;
    }

    /// Stops the controller and starts it again against the same server.
    pub async fn restart(&mut self) {
        self.shut_down().await;
        self.run_controller().await;
    }

    async fn shut_down(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let stopped = tokio::time::timeout(Duration::from_secs(5), t).await;
            assert!(
                stopped.is_ok(),
                "the controller shuts down within 5 s when asked"
            );
        }
    }

    pub async fn stop(mut self) {
        self.shut_down().await;
    }

    /// Creates the ClusterPullSecret `name` with `spec`.
    pub fn create_resource(&self, name: &str, spec: Value) {
        self.server
            .create(
                &Resource::CLUSTER_PULL_SECRETS,
                None,
                cluster_pull_secret(name, spec),
            )
            .expect("the ClusterPullSecret is created");
    }

    pub fn secret(&self, ns: &str, name: &str) -> Option<Value> {
        self.server.get(&Resource::SECRETS, Some(ns), name)
    }

    pub fn pull_secrets(&self, ns: &str, sa: &str) -> Vec<String> {
        self.server
            .get(&Resource::SERVICE_ACCOUNTS, Some(ns), sa)
            .and_then(|s| s.get("imagePullSecrets").cloned())
            .and_then(|l| l.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e.get("name").and_then(Value::as_str).map(String::from))
            .collect()
    }

    pub fn cps(&self, name: &str) -> Option<Value> {
        self.server.get(&Resource::CLUSTER_PULL_SECRETS, None, name)
    }

    pub fn condition(&self, name: &str, type_: &str) -> Option<(String, String)> {
        let cps = self.cps(name)?;
        let conds = cps.pointer("/status/conditions")?.as_array()?.clone();
        conds.iter().find(|c| c["type"] == type_).map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
    }
}

/// Polls until `cond` holds, failing the test with `what` after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn namespace(server: &StandIn, name: &str, labels: Value) {
    server
        .create(
            &Resource::NAMESPACES,
            None,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}),
        )
        .expect("namespace");
}

/// A namespace plus its `default` ServiceAccount, as kube-controller-manager
/// would add it.
pub fn namespace_with_default_sa(server: &StandIn, name: &str, labels: Value) {
    namespace(server, name, labels);
    service_account(server, name, "default", &[]);
}

pub fn service_account(server: &StandIn, ns: &str, name: &str, pull_secrets: &[&str]) {
    let mut sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}});
    if !pull_secrets.is_empty() {
        sa["imagePullSecrets"] = pull_secrets.iter().map(|n| json!({"name": n})).collect();
    }
    server
        .create(&Resource::SERVICE_ACCOUNTS, Some(ns), sa)
        .expect("service account");
}

/// Seeds the Docker Hub source Secret.
pub fn seed_dockerhub(server: &StandIn) {
    server
        .create(
            &Resource::SECRETS,
            Some(CONTROLLER_NS),
            dockerhub_secret("me", PASSWORD),
        )
        .expect("source Secret");
}

/// A running controller with the Docker Hub source, `namespaces` (each with
/// a default SA), and the resource `company` with `spec` created.
pub async fn with_dockerhub(spec: Value, namespaces: &[&str]) -> Harness {
    let h = Harness::start_with(|s| {
        seed_dockerhub(s);
        for ns in namespaces {
            namespace_with_default_sa(s, ns, json!({}));
        }
    })
    .await;
    h.create_resource("company", spec);
    h
}

/// The Docker Hub account in the controller's namespace.
pub fn dockerhub_secret(user: &str, password: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "dockerhub", "namespace": CONTROLLER_NS,
                     "labels": {"argocd.argoproj.io/instance": "platform"},
                     "annotations": {"team": "platform"}},
        "type": "Opaque",
        "data": {"username": STANDARD.encode(user), "password": STANDARD.encode(password)}
    })
}

pub fn cluster_pull_secret(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "regbridge.dev/v1alpha1", "kind": "ClusterPullSecret",
           "metadata": {"name": name}, "spec": spec})
}

pub fn dockerhub_spec() -> Value {
    json!({
        "secretName": "regcred",
        "credentials": [{"static": {"secretRef": {"namespace": CONTROLLER_NS, "name": "dockerhub"}}}],
        // A made-up Docker Hub account: proving it would mean reaching Docker
        // Hub, which tests never do. tests/verify_controller.rs covers
        // verification against a registry on loopback.
        "verify": "Off",
        "namespaces": {"exclude": ["kube-*"]},
    })
}

/// The decoded `.dockerconfigjson` of a Secret.
pub fn docker_config(secret: &Value) -> Value {
    let b64 = secret
        .pointer("/data/.dockerconfigjson")
        .and_then(Value::as_str)
        .unwrap_or_default();
    serde_json::from_slice(&STANDARD.decode(b64).unwrap_or_default()).unwrap_or(Value::Null)
}

/// A test peer's address from the environment. Unset: the test is skipped,
/// loudly, unless `REGBRIDGE_REQUIRE_PEERS=1` (tests/run.sh) makes it a
/// failure.
pub fn peer(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().trim_end_matches('/').to_owned()),
        _ => {
            assert!(
                std::env::var("REGBRIDGE_REQUIRE_PEERS").as_deref() != Ok("1"),
                "{var} is unset, and REGBRIDGE_REQUIRE_PEERS=1 makes a missing peer a failure"
            );
            eprintln!("\n*** SKIP: {var} is unset (tests/run.sh starts the peers) ***\n");
            None
        }
    }
}

/// The MutatingWebhookConfiguration the chart renders into the plain
/// manifests, read at run time from this checkout.
pub fn chart_webhook_configuration() -> Value {
    let manifests = std::fs::read_to_string(repo().join("deploy/manifests/regbridge.yaml"))
        .expect("the rendered manifests");
    serde_yaml::Deserializer::from_str(&manifests)
        .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
        .find(|doc: &Value| doc["kind"] == "MutatingWebhookConfiguration")
        .expect("the chart renders a MutatingWebhookConfiguration")
}

/// A kubeconfig at `dir/kubeconfig` naming the API server at `server`,
/// with no credentials (the stand-in asks for none).
pub fn write_kubeconfig(dir: &std::path::Path, server: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: s, cluster: {{server: \"{server}\"}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: c, context: {{cluster: s, user: u}}}}]\n\
             current-context: c\n"
        ),
    )
    .unwrap();
    path
}

/// This checkout, read at run time (cargo runs the root package's tests with
/// its `CARGO_MANIFEST_DIR`): a test binary built in another checkout sharing
/// the target dir must still look in this one. Otherwise two folders up from
/// this crate, `tests/support`.
pub fn repo() -> std::path::PathBuf {
    match std::env::var_os("CARGO_MANIFEST_DIR") {
        Some(dir) => dir.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .nth(2)
            .expect("tests/support has two parents")
            .to_path_buf(),
    }
}

/// Each file's documents as kubectl and Helm read them (YAML 1.1, through
/// `tests/yaml11.py`), keyed by the path as given.
pub fn kubectl_yaml(paths: &[std::path::PathBuf]) -> serde_json::Map<String, Value> {
    let out = std::process::Command::new("python3")
        .arg(repo().join("tests/yaml11.py"))
        .args(paths)
        .output()
        .expect("python3 runs tests/yaml11.py (tests/run.sh installs PyYAML)");
    assert!(
        out.status.success(),
        "tests/yaml11.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("tests/yaml11.py prints JSON")
}

/// The CRD as `kubectl apply -f deploy/crds/clusterpullsecret.yaml` sends it.
pub fn installed_crd() -> Value {
    let path = repo().join("deploy/crds/clusterpullsecret.yaml");
    let mut files = kubectl_yaml(std::slice::from_ref(&path));
    let docs = files.remove(&path.display().to_string()).expect("parsed");
    docs[0].clone()
}
