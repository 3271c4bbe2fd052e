//! The shipped RBAC is proven by running under it. The real controller, with
//! leader election, runs against the API stand-in through every code path
//! that calls the API: distribution, a foreign Secret (conflict), a contended
//! ServiceAccount patch, a source rotation, repeated Events, per-tenant token
//! requests, and cleanup through the finalizer. Every request it made is then
//! mapped to the RBAC check the API server would do (verb, API group,
//! resource[/subresource], namespace, name) and checked against the rules in
//! `deploy/manifests/regbridge.yaml`; and every verb those rules grant must
//! have been used by some request. Token requests are checked against the
//! rendering with `perTenantIdentity`, which must grant them for the listed
//! ServiceAccounts only.

use regbridge_test_support as support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use regbridge::ops::health::Health;
use regbridge::ops::metrics::Metrics;
use regbridge::reconcile::{self, Config};
use regbridge_standin::{Fault, Method, RequestRecord, Resource, StandIn};
use serde_json::{Value, json};
use support::*;

const T: Duration = Duration::from_secs(20);

fn repo() -> PathBuf {
    // Read at run time: a binary built in another checkout sharing the
    // target dir must still look in this one.
    PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
}

/// What the API server authorizes a resource request by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Attributes {
    verb: String,
    group: String,
    /// `resource` or `resource/subresource`.
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

impl std::fmt::Display for Attributes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}/{} in {}",
            self.verb,
            if self.group.is_empty() {
                "core"
            } else {
                &self.group
            },
            self.resource,
            self.namespace.as_deref().unwrap_or("(cluster)")
        )
    }
}

/// The request's RBAC attributes, or `None` for a non-resource URL.
fn attributes(r: &RequestRecord) -> Option<Attributes> {
    let parts: Vec<&str> = r.path.split('/').filter(|p| !p.is_empty()).collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, resource, name, sub) = match rest {
        ["namespaces", ns, resource, tail @ ..] => {
            (Some(ns.to_string()), *resource, tail.first(), tail.get(1))
        }
        [resource, tail @ ..] => (None, *resource, tail.first(), tail.get(1)),
        [] => return None,
    };
    let watch = matches!(r.query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (r.method.as_str(), name.is_some()) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        (m, _) => panic!("unexpected method {m} {}", r.path),
    };
    Some(Attributes {
        verb: verb.into(),
        group: group.into(),
        resource: match sub {
            Some(s) => format!("{resource}/{s}"),
            None => resource.into(),
        },
        namespace,
        name: name.map(|n| n.to_string()),
    })
}

/// One RBAC rule, as granted through one binding.
#[derive(Debug)]
struct Grant {
    /// `ClusterRole/x via ClusterRoleBinding/y`, for messages.
    source: String,
    /// `None`: every namespace and cluster-scoped resources (ClusterRoleBinding).
    namespace: Option<String>,
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    resource_names: Vec<String>,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

impl Grant {
    fn allows(&self, a: &Attributes) -> bool {
        let any = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
        let scope_ok = match (&self.namespace, &a.namespace) {
            (None, _) => true,
            (Some(granted), Some(asked)) => granted == asked,
            (Some(_), None) => false,
        };
        let name_ok = self.resource_names.is_empty()
            || a.name
                .as_ref()
                .is_some_and(|n| self.resource_names.contains(n));
        scope_ok
            && name_ok
            && any(&self.groups, &a.group)
            && any(&self.resources, &a.resource)
            && any(&self.verbs, &a.verb)
    }

    /// Every (group, resource, verb) this rule grants.
    fn triples(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for g in &self.groups {
            for r in &self.resources {
                for v in &self.verbs {
                    out.push((g.clone(), r.clone(), v.clone()));
                }
            }
        }
        out
    }
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The rules that reach the controller's ServiceAccount in a rendered manifest.
fn grants(manifest: &str) -> Vec<Grant> {
    let docs = documents(manifest);
    let of = |kind: &'static str| docs.iter().filter(move |d| d["kind"] == kind);
    let deployment = of("Deployment").next().expect("a Deployment");
    let sa_name = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName")
        .to_string();
    let sa_ns = deployment["metadata"]["namespace"]
        .as_str()
        .expect("namespace")
        .to_string();
    let binds_us = |b: &Value| {
        b["subjects"].as_array().into_iter().flatten().any(|s| {
            s["kind"] == "ServiceAccount"
                && s["name"] == sa_name.as_str()
                && s["namespace"] == sa_ns.as_str()
        })
    };
    let role = |kind: &'static str, name: &str, ns: Option<&str>| {
        of(kind)
            .find(|r| {
                r["metadata"]["name"] == name
                    && ns.is_none_or(|ns| r["metadata"]["namespace"] == ns)
            })
            .unwrap_or_else(|| panic!("{kind} {name} is bound but not defined"))
            .clone()
    };
    let mut out = Vec::new();
    for (binding_kind, b) in of("ClusterRoleBinding")
        .map(|b| ("ClusterRoleBinding", b))
        .chain(of("RoleBinding").map(|b| ("RoleBinding", b)))
        .filter(|(_, b)| binds_us(b))
    {
        let ref_kind = b["roleRef"]["kind"].as_str().unwrap();
        let ref_name = b["roleRef"]["name"].as_str().unwrap();
        let binding_ns = b["metadata"]["namespace"].as_str().map(String::from);
        let r = match ref_kind {
            "ClusterRole" => role("ClusterRole", ref_name, None),
            "Role" => role("Role", ref_name, binding_ns.as_deref()),
            k => panic!("roleRef kind {k}"),
        };
        for rule in r["rules"].as_array().into_iter().flatten() {
            out.push(Grant {
                source: format!(
                    "{ref_kind}/{ref_name} via {binding_kind}/{}",
                    b["metadata"]["name"].as_str().unwrap()
                ),
                namespace: binding_ns.clone(),
                groups: strings(&rule["apiGroups"]),
                resources: strings(&rule["resources"]),
                verbs: strings(&rule["verbs"]),
                resource_names: strings(&rule["resourceNames"]),
            });
        }
    }
    assert!(!out.is_empty(), "no rule reaches {sa_ns}/{sa_name}");
    out
}

/// A rendering with `perTenantIdentity.enabled`, from `tests/run.sh check_chart`.
fn per_tenant_manifest() -> Option<String> {
    let dir = std::env::var_os("REGBRIDGE_CHART_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("tests/.peers/chart"));
    let path = dir.join("per-tenant.yaml");
    match std::fs::read_to_string(&path) {
        Ok(t) => Some(t),
        Err(e) if std::env::var("REGBRIDGE_REQUIRE_PEERS").as_deref() == Ok("1") => {
            panic!(
                "{}: {e}; run `tests/run.sh check_chart` first",
                path.display()
            )
        }
        Err(_) => {
            eprintln!(
                "per-tenant rendering missing ({}); its check is skipped",
                path.display()
            );
            None
        }
    }
}

/// Points the AWS SDK at moto when it runs (`tests/run.sh`), else at a closed
/// port: either way the per-tenant path requests its token first.
fn aws_environment() {
    let endpoint =
        std::env::var("REGBRIDGE_MOTO_URL").unwrap_or_else(|_| "http://127.0.0.1:9".into());
    let scratch = std::env::temp_dir().join("regbridge-rbac-no-aws-config");
    // SAFETY: set before this test starts any thread of its own; the only
    // other test in this binary reads no environment.
    unsafe {
        std::env::set_var("AWS_ENDPOINT_URL", &endpoint);
        std::env::set_var("AWS_CONFIG_FILE", &scratch);
        std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", &scratch);
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        for var in [
            "AWS_ENDPOINT_URL_ECR",
            "AWS_ENDPOINT_URL_STS",
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
        ] {
            std::env::remove_var(var);
        }
    }
}

fn has_request(server: &StandIn, method: &str, path_end: &str) -> bool {
    server
        .requests()
        .iter()
        .any(|r| r.method == method && r.path.ends_with(path_end))
}

/// Drives every code path that calls the API and returns the request log.
async fn run_scenario() -> Vec<RequestRecord> {
    aws_environment();
    let server = StandIn::start().await;
    server
        .create(&Resource::CRDS, None, installed_crd())
        .expect("CRD");
    namespace(&server, CONTROLLER_NS, json!({}));
    server
        .create(
            &Resource::SECRETS,
            Some(CONTROLLER_NS),
            dockerhub_secret("me", PASSWORD),
        )
        .unwrap();
    namespace(&server, "a", json!({}));
    service_account(&server, "a", "default", &["keep-me"]);
    service_account(&server, "a", "builder", &[]);
    namespace_with_default_sa(&server, "theirs", json!({}));
    server
        .create(
            &Resource::SECRETS,
            Some("theirs"),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred", "namespace": "theirs"},
                   "type": "Opaque", "data": {"k": "dmFsdWU="}}),
        )
        .unwrap();
    namespace_with_default_sa(&server, "team-a", json!({}));
    service_account(&server, "team-a", "puller", &[]);
    // The first patch of a's default SA is refused as if another writer got
    // in first, so the writer re-reads it.
    server.inject_fault(
        Fault::new("/namespaces/a/serviceaccounts/default", 422)
            .method(Method::PATCH)
            .times(1)
            .reason("Invalid"),
    );

    let client = kube::Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let config = Config {
        namespace: CONTROLLER_NS.into(),
        write_concurrency: 8,
        trust: regbridge_providers::Trust::system(),
        instance: "rbac-test".into(),
    };
    server
        .create(
            &Resource::MUTATING_WEBHOOK_CONFIGURATIONS,
            None,
            chart_webhook_configuration(),
        )
        .expect("the chart's webhook configuration");
    let task = {
        let client = client.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let work = || {
                let stop = stop.clone();
                reconcile::run(
                    client.clone(),
                    config.clone(),
                    Arc::new(Health::default()),
                    Arc::new(Metrics::default()),
                    async move {
                        while !stop.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    },
                )
            };
            regbridge::ops::leader::while_leader(
                client.clone(),
                CONTROLLER_NS,
                "regbridge-leader",
                "rbac-test",
                &regbridge::ops::health::Health::default(),
                work,
            )
            .await
        })
    };

    // The admission webhook, as every replica runs it: its caches, the
    // shared certificate Secret (created) and the chart's configuration,
    // whose caBundle it fills in.
    let webhook = {
        let client = client.clone();
        let stop = stop.clone();
        tokio::spawn(regbridge::webhook::run(
            client,
            regbridge::webhook::WebhookConfig {
                namespace: CONTROLLER_NS.into(),
                service: "regbridge-webhook".into(),
                secret: regbridge::webhook::tls::TLS_SECRET.into(),
                configuration: regbridge::webhook::tls::WEBHOOK_CONFIGURATION.into(),
                extra_names: vec![],
                tls_dir: None,
            },
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            Arc::new(Health::default()),
            Arc::new(Metrics::default()),
            async move {
                while !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        ))
    };

    let mut spec = dockerhub_spec();
    spec["serviceAccounts"] = json!(["*"]);
    spec["namespaces"] = json!({"exclude": ["kube-*", "team-a"]});
    server
        .create(
            &Resource::CLUSTER_PULL_SECRETS,
            None,
            cluster_pull_secret("company", spec),
        )
        .unwrap();
    let tenant = json!({
        "secretName": "tenant-pull",
        "verify": "Off", // moto's ECR hosts are not real registries
        "credentials": [{"ecr": {
            "region": "eu-west-1",
            "roleArn": "arn:aws:iam::123456789012:role/team-a-pull",
            "identity": {"serviceAccountRef": {"namespace": "team-a", "name": "puller"}},
        }}],
        "namespaces": {"include": ["team-a"]},
    });
    server
        .create(
            &Resource::CLUSTER_PULL_SECRETS,
            None,
            cluster_pull_secret("tenant", tenant),
        )
        .unwrap();

    let pulls = |ns: &str, sa: &str| {
        server
            .get(&Resource::SERVICE_ACCOUNTS, Some(ns), sa)
            .and_then(|s| s.get("imagePullSecrets").cloned())
            .unwrap_or(json!([]))
    };
    wait_for("distribution to a", T, || {
        server
            .get(&Resource::SECRETS, Some("a"), "regcred")
            .is_some()
            && pulls("a", "default") == json!([{"name": "keep-me"}, {"name": "regcred"}])
            && pulls("a", "builder") == json!([{"name": "regcred"}])
    })
    .await;
    wait_for("the conflict in theirs on status", T, || {
        server
            .get(&Resource::CLUSTER_PULL_SECRETS, None, "company")
            .is_some_and(|c| c.pointer("/status/namespaces/conflicting") == Some(&json!(1)))
    })
    .await;
    wait_for("a token request for team-a/puller", T, || {
        has_request(
            &server,
            "POST",
            "/namespaces/team-a/serviceaccounts/puller/token",
        )
    })
    .await;

    // A rotated source: the composed Secret and the copies are updated in place.
    server
        .update(
            &Resource::SECRETS,
            Some(CONTROLLER_NS),
            dockerhub_secret("me", "rotated"),
        )
        .unwrap();
    wait_for("copies updated", T, || {
        server
            .get(&Resource::SECRETS, Some("a"), "regcred")
            .is_some_and(|s| docker_config(&s).to_string().contains("rotated"))
    })
    .await;

    // A kubelet's failed pull on a served registry: the controller reads the
    // pod to diagnose it.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    server
        .create(
            &Resource::EVENTS,
            Some("a"),
            json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "pull-1", "namespace": "a"},
                   "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": "web-1", "namespace": "a"},
                   "reason": "Failed", "type": "Warning", "firstTimestamp": now, "lastTimestamp": now,
                   "source": {"component": "kubelet", "host": "node-1"},
                   "reportingComponent": "kubelet", "reportingInstance": "node-1",
                   "message": "Failed to pull image \"nginx:1.27\": 401 Unauthorized"}),
        )
        .unwrap();
    wait_for("the pod of a failed pull is read", T, || {
        has_request(&server, "GET", "/namespaces/a/pods/web-1")
    })
    .await;

    // The same Warning twice: the second time the Recorder patches the Event's series.
    let set_include = |include: Value| {
        let mut cps = server
            .get(&Resource::CLUSTER_PULL_SECRETS, None, "company")
            .unwrap();
        cps["spec"]["namespaces"]["include"] = include;
        server
            .update(&Resource::CLUSTER_PULL_SECRETS, None, cps)
            .unwrap();
    };
    let ready_reason = || {
        server
            .get(&Resource::CLUSTER_PULL_SECRETS, None, "company")
            .and_then(|c| {
                c.pointer("/status/conditions")?
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "Ready")
                    .map(|c| c["reason"].as_str().unwrap_or_default().to_string())
            })
            .unwrap_or_default()
    };
    for include in [json!(["team-[a"]), json!([]), json!(["team-[a"])] {
        let invalid = include != json!([]);
        set_include(include);
        wait_for("Ready reason follows the spec", T, || {
            (ready_reason() == "InvalidSelector") == invalid
        })
        .await;
    }
    wait_for("a repeated Event is patched", T, || {
        server
            .requests()
            .iter()
            .any(|r| r.method == "PATCH" && r.path.starts_with("/apis/events.k8s.io/"))
    })
    .await;
    set_include(json!([]));

    // Deletion: the finalizer removes the copies, the references and the source.
    server
        .delete(&Resource::CLUSTER_PULL_SECRETS, None, "company")
        .unwrap();
    wait_for("cleanup through the finalizer", T, || {
        server
            .get(&Resource::CLUSTER_PULL_SECRETS, None, "company")
            .is_none()
            && server
                .get(&Resource::SECRETS, Some("a"), "regcred")
                .is_none()
            && server
                .get(&Resource::SECRETS, Some(CONTROLLER_NS), "company")
                .is_none()
            && pulls("a", "default") == json!([{"name": "keep-me"}])
    })
    .await;
    assert!(
        server
            .get(&Resource::SECRETS, Some("theirs"), "regcred")
            .is_some(),
        "the foreign Secret survives"
    );
    // Leases are renewed every LEASE_SECONDS - LEASE_GRACE seconds.
    wait_for("a Lease patch", T, || {
        server
            .requests()
            .iter()
            .any(|r| r.method == "PATCH" && r.path.contains("/leases/"))
    })
    .await;

    // The webhook certificate near its expiry: one replica replaces it.
    wait_for("the webhook certificate", T, || {
        server
            .get(
                &Resource::SECRETS,
                Some(CONTROLLER_NS),
                regbridge::webhook::tls::TLS_SECRET,
            )
            .is_some()
    })
    .await;
    let later = chrono::Utc::now() + chrono::Duration::days(regbridge::webhook::tls::VALIDITY_DAYS);
    regbridge::webhook::tls::ensure(
        &client,
        CONTROLLER_NS,
        regbridge::webhook::tls::TLS_SECRET,
        &regbridge::webhook::tls::dns_names("regbridge-webhook", CONTROLLER_NS, &[]),
        later,
    )
    .await
    .expect("renewed");

    wait_for("the caBundle published", Duration::from_secs(10), || {
        server
            .get(
                &Resource::MUTATING_WEBHOOK_CONFIGURATIONS,
                None,
                regbridge::webhook::tls::WEBHOOK_CONFIGURATION,
            )
            .is_some_and(|c| c["webhooks"][0]["clientConfig"]["caBundle"].is_string())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), webhook).await;
    server.requests()
}

/// With `perTenantIdentity.enabled`, the rendering lists `team-a/puller`
/// (the scenario's), `team-a/builder` and `team-b/on` (`tests/chart_render.py`).
/// A token for any other ServiceAccount, kube-system's above all, is refused,
/// and no rule grants tokens cluster-wide.
fn tokens_only_for_the_listed_service_accounts(grants: &[Grant]) {
    let token = |namespace: &str, name: &str| Attributes {
        verb: "create".into(),
        group: "".into(),
        resource: "serviceaccounts/token".into(),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
    };
    let allowed = |a: &Attributes| grants.iter().any(|g| g.allows(a));
    for (ns, name) in [
        ("team-a", "puller"),
        ("team-a", "builder"),
        ("team-b", "on"),
    ] {
        assert!(allowed(&token(ns, name)), "{ns}/{name} is listed");
    }
    for (ns, name) in [
        ("kube-system", "default"),
        ("kube-system", "clusterrole-aggregation-controller"),
        (CONTROLLER_NS, "regbridge"),
        ("team-a", "default"),
        ("team-b", "puller"),
        ("team-c", "puller"),
    ] {
        assert!(
            !allowed(&token(ns, name)),
            "a token for the unlisted {ns}/{name} is granted"
        );
    }
    for g in grants.iter().filter(|g| {
        g.resources
            .iter()
            .any(|r| r == "serviceaccounts/token" || r == "*")
    }) {
        assert!(
            g.namespace.is_some() && !g.resource_names.is_empty(),
            "{}: tokens beyond named ServiceAccounts in one namespace",
            g.source
        );
    }
}

/// Verbs granted but legitimately unused by the scenario, each with the reason.
/// Keep this empty unless a code path cannot run against the stand-in.
const NOT_EXERCISED: &[(&str, &str, &str, &str)] = &[];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_allowed_by_the_shipped_rbac_and_every_grant_is_used() {
    let requests = run_scenario().await;
    let manifest = std::fs::read_to_string(repo().join("deploy/manifests/regbridge.yaml")).unwrap();
    let shipped = grants(&manifest);
    let tenant_grants = per_tenant_manifest().map(|m| grants(&m));

    let mut denied = BTreeSet::new();
    let mut used: BTreeSet<(usize, String, String, String)> = BTreeSet::new();
    let mut non_resource = BTreeSet::new();
    let mut tenant_requests = 0;
    for r in &requests {
        let Some(a) = attributes(r) else {
            non_resource.insert(r.path.clone());
            continue;
        };
        let allowed: Vec<usize> = (0..shipped.len())
            .filter(|&i| shipped[i].allows(&a))
            .collect();
        for &i in &allowed {
            used.insert((i, a.group.clone(), a.resource.clone(), a.verb.clone()));
        }
        if !allowed.is_empty() {
            continue;
        }
        if a.resource == "serviceaccounts/token" && a.verb == "create" {
            // Granted only with perTenantIdentity.enabled.
            tenant_requests += 1;
            if let Some(g) = &tenant_grants {
                assert!(
                    g.iter().any(|g| g.allows(&a)),
                    "{a} is denied even with perTenantIdentity.enabled"
                );
            }
            continue;
        }
        denied.insert(format!("{a}    ({} {})", r.method, r.path));
    }
    assert!(
        denied.is_empty(),
        "requests the shipped RBAC denies:\n{}",
        denied.into_iter().collect::<Vec<_>>().join("\n")
    );
    assert!(tenant_requests > 0, "the per-tenant path requested a token");
    if let Some(g) = &tenant_grants {
        tokens_only_for_the_listed_service_accounts(g);
    }
    // Non-resource URLs fall under system:discovery, bound to every authenticated user.
    for p in &non_resource {
        let p = p.trim_end_matches('/');
        assert!(
            ["/api", "/apis", "/version"].contains(&p) || p.starts_with("/openapi"),
            "non-resource URL outside system:discovery: {p}"
        );
    }

    let mut unused = Vec::new();
    for (i, g) in shipped.iter().enumerate() {
        for (group, resource, verb) in g.triples() {
            let exempt = NOT_EXERCISED
                .iter()
                .any(|(eg, er, ev, _)| *eg == group && *er == resource && *ev == verb);
            if !exempt && !used.contains(&(i, group.clone(), resource.clone(), verb.clone())) {
                unused.push(format!("{verb} {group}/{resource} ({})", g.source));
            }
        }
    }
    assert!(
        unused.is_empty(),
        "granted but never requested (least privilege):\n{}",
        unused.join("\n")
    );
}

#[test]
fn requests_map_to_rbac_attributes() {
    let req = |method: &str, path: &str, query: &[(&str, &str)]| RequestRecord {
        method: method.into(),
        path: path.into(),
        query: query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        content_type: None,
        body: None,
    };
    let show = |r: RequestRecord| attributes(&r).map(|a| a.to_string());
    assert_eq!(
        show(req("GET", "/api/v1/secrets", &[("labelSelector", "x=y")])).as_deref(),
        Some("list core/secrets in (cluster)")
    );
    assert_eq!(
        show(req(
            "GET",
            "/api/v1/namespaces/regbridge/secrets",
            &[("watch", "true")]
        ))
        .as_deref(),
        Some("watch core/secrets in regbridge")
    );
    assert_eq!(
        show(req(
            "PATCH",
            "/apis/regbridge.dev/v1alpha1/clusterpullsecrets/x/status",
            &[]
        ))
        .as_deref(),
        Some("patch regbridge.dev/clusterpullsecrets/status in (cluster)")
    );
    assert_eq!(
        show(req(
            "POST",
            "/api/v1/namespaces/t/serviceaccounts/p/token",
            &[]
        ))
        .as_deref(),
        Some("create core/serviceaccounts/token in t")
    );
    assert_eq!(
        show(req("PUT", "/api/v1/namespaces/a/secrets/regcred", &[])).as_deref(),
        Some("update core/secrets in a")
    );
    assert_eq!(
        show(req("DELETE", "/api/v1/namespaces/a/secrets/regcred", &[])).as_deref(),
        Some("delete core/secrets in a")
    );
    assert_eq!(show(req("GET", "/version", &[])), None);
    // A Role's grant stops at its namespace; a ClusterRoleBinding's does not.
    let events = Grant {
        source: "test".into(),
        namespace: Some("default".into()),
        groups: vec!["events.k8s.io".into()],
        resources: vec!["events".into()],
        verbs: vec!["create".into()],
        resource_names: vec![],
    };
    let ev = |ns: &str| {
        attributes(&req(
            "POST",
            &format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"),
            &[],
        ))
        .unwrap()
    };
    assert!(events.allows(&ev("default")));
    assert!(!events.allows(&ev("regbridge")));
}
