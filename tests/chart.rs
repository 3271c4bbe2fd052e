//! The Helm chart as Helm renders it. `tests/run.sh` (step `check_chart`)
//! lints the chart and renders it with default and non-default values through
//! Helm's own engine (`tests/chart_render.py`) into `tests/.peers/chart/`, or
//! the directory in `REGBRIDGE_CHART_DIR`. These tests read those files; they
//! skip when the files are missing, unless `REGBRIDGE_REQUIRE_PEERS=1`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::CommandFactory;
use regbridge::api::crd::ClusterPullSecret;
use regbridge::cli::Cli;
use serde_json::{Value, json};

const NAMESPACE: &str = "regbridge";

fn repo() -> PathBuf {
    // Read at run time: a binary built in another checkout sharing the
    // target dir must still look in this one.
    PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
}

/// The rendered file `name`, or `None` when the renders are absent and not required.
fn rendered(name: &str) -> Option<String> {
    let dir = std::env::var_os("REGBRIDGE_CHART_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("tests/.peers/chart"));
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if std::env::var("REGBRIDGE_REQUIRE_PEERS").as_deref() == Ok("1") => {
            panic!(
                "{}: {e}; run `tests/run.sh check_chart` first",
                path.display()
            )
        }
        Err(_) => {
            eprintln!(
                "skipped: {} is missing (tests/run.sh check_chart renders it)",
                path.display()
            );
            None
        }
    }
}

/// Every document of a multi-document YAML stream, empty ones dropped.
fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| {
            let v: Value = serde::Deserialize::deserialize(doc).expect("valid YAML");
            v
        })
        .filter(|v| !v.is_null())
        .collect()
}

struct Rendering {
    docs: Vec<Value>,
}

impl Rendering {
    fn load(name: &str) -> Option<Self> {
        let docs = documents(&rendered(name)?);
        for d in &docs {
            for field in ["apiVersion", "kind"] {
                assert!(
                    d[field].is_string(),
                    "{name}: a document without {field}: {d}"
                );
            }
            assert!(
                d.pointer("/metadata/name").is_some_and(Value::is_string),
                "{name}: a document without metadata.name: {d}"
            );
        }
        Some(Self { docs })
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let found = self.all(kind);
        assert_eq!(found.len(), 1, "exactly one {kind}");
        found[0]
    }

    /// The one `kind` whose name ends with `suffix`.
    fn named(&self, kind: &str, suffix: &str) -> &Value {
        let found: Vec<&Value> = self
            .all(kind)
            .into_iter()
            .filter(|d| {
                d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(suffix))
            })
            .collect();
        assert_eq!(found.len(), 1, "exactly one {kind} named *{suffix}");
        found[0]
    }

    fn container(&self) -> &Value {
        let containers = &self.one("Deployment")["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers.as_array().map(Vec::len), Some(1));
        &containers[0]
    }

    fn env(&self) -> BTreeMap<String, Value> {
        self.container()["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
            .collect()
    }

    fn grants(&self, group: &str, resource: &str, verb: &str) -> bool {
        ["ClusterRole", "Role"].iter().any(|kind| {
            self.all(kind).iter().any(|role| {
                role["rules"].as_array().into_iter().flatten().any(|r| {
                    let has = |key: &str, want: &str| {
                        r[key].as_array().into_iter().flatten().any(|v| v == want)
                    };
                    has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
                })
            })
        })
    }
}

fn chart_yaml() -> Value {
    let text = std::fs::read_to_string(repo().join("deploy/helm/regbridge/Chart.yaml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

#[test]
fn chart_passes_helm_lint() {
    let Some(text) = rendered("lint.json") else {
        return;
    };
    let lint: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(lint["TotalChartsLinted"], 1);
    assert!(lint["Errors"].is_null(), "lint errors: {lint:#}");
    // Helm's severities: 1 info, 2 warning, 3 error.
    for m in lint["Messages"].as_array().into_iter().flatten() {
        assert!(
            m["Severity"].as_u64().unwrap_or(3) < 2,
            "lint warning or error: {m}"
        );
    }
}

#[test]
fn default_rendering_is_the_checked_in_plain_manifest() {
    let Some(text) = rendered("default.yaml") else {
        return;
    };
    let path = repo().join("deploy/manifests/regbridge.yaml");
    let on_disk = std::fs::read_to_string(&path).unwrap();
    assert!(
        on_disk == text,
        "{} is stale: regenerate it with `tests/run.sh check_chart && cp tests/.peers/chart/default.yaml {}`",
        path.display(),
        path.display()
    );
    let r = Rendering::load("default.yaml").unwrap();
    assert_eq!(r.one("Namespace")["metadata"]["name"], NAMESPACE);
    assert_eq!(
        r.one("CustomResourceDefinition")["metadata"]["name"],
        "clusterpullsecrets.regbridge.dev"
    );
}

#[test]
fn deployment_meets_the_restricted_pod_security_standard() {
    for name in ["default.yaml", "custom.yaml"] {
        let Some(r) = Rendering::load(name) else {
            return;
        };
        let pod = &r.one("Deployment")["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{name}"
        );
        for forbidden in ["hostNetwork", "hostPID", "hostIPC"] {
            assert!(pod.get(forbidden).is_none(), "{name}: {forbidden}");
        }
        for v in pod["volumes"].as_array().into_iter().flatten() {
            assert!(v.get("hostPath").is_none(), "{name}: hostPath volume");
        }
        let sc = &r.container()["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(sc["runAsNonRoot"], true, "{name}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}");
        assert!(sc["capabilities"].get("add").is_none(), "{name}");
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        assert!(sc.get("privileged").is_none_or(|p| p == false), "{name}");
        let res = &r.container()["resources"];
        for k in ["requests", "limits"] {
            assert!(res[k]["cpu"].is_string(), "{name}: {k}.cpu");
            assert!(res[k]["memory"].is_string(), "{name}: {k}.memory");
        }
    }
}

#[test]
fn default_deployment_runs_two_replicas_with_leader_election_and_probes() {
    let Some(r) = Rendering::load("default.yaml") else {
        return;
    };
    let d = r.one("Deployment");
    assert_eq!(d["metadata"]["namespace"], NAMESPACE);
    assert_eq!(d["spec"]["replicas"], 2);
    let c = r.container();
    let app_version = chart_yaml()["appVersion"].as_str().unwrap().to_string();
    assert_eq!(
        c["image"],
        format!("ghcr.io/regbridge/regbridge:{app_version}"),
        "the image tag defaults to appVersion"
    );
    assert_eq!(c["args"], json!(["run"]));
    let port = &c["ports"][0];
    assert_eq!(port["name"], "http-metrics");
    assert_eq!(port["containerPort"], 8080);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http-metrics");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http-metrics");

    let env = r.env();
    assert_eq!(env["REGBRIDGE_NAMESPACE"]["value"], NAMESPACE);
    assert_eq!(
        env["REGBRIDGE_INSTANCE"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(env["REGBRIDGE_LOG_FORMAT"]["value"], "json");
    assert_eq!(env["REGBRIDGE_METRICS_ADDR"]["value"], "0.0.0.0:8080");
    assert_eq!(env["REGBRIDGE_LEADER_ELECTION"]["value"], "true");

    let pdb = r.one("PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        d["spec"]["selector"]["matchLabels"]
    );
    let svc = r.named("Service", "-metrics");
    assert_eq!(
        svc["spec"]["selector"],
        d["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http-metrics");
    assert!(r.all("ServiceMonitor").is_empty(), "off by default");
    assert!(r.all("ClusterPullSecret").is_empty(), "none by default");
    let sa = r.one("ServiceAccount");
    assert!(sa["metadata"].get("annotations").is_none());
    assert_eq!(
        d["spec"]["template"]["spec"]["serviceAccountName"],
        sa["metadata"]["name"]
    );
    assert!(
        !r.grants("", "serviceaccounts/token", "create"),
        "token requests only with perTenantIdentity.enabled"
    );
}

/// Every `REGBRIDGE_*` variable the chart sets is one `regbridge run` reads.
#[test]
fn every_env_var_the_chart_sets_is_a_flag_of_regbridge_run() {
    let cmd = Cli::command();
    let mut known: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    let run = cmd.find_subcommand("run").expect("run subcommand");
    known.extend(
        run.get_arguments()
            .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned())),
    );
    for name in ["default.yaml", "custom.yaml"] {
        let Some(r) = Rendering::load(name) else {
            return;
        };
        for var in r.env().keys().filter(|k| k.starts_with("REGBRIDGE_")) {
            assert!(
                known.contains(var),
                "{name}: {var} is not read by regbridge run"
            );
        }
    }
}

#[test]
fn custom_values_reach_every_optional_part() {
    let Some(r) = Rendering::load("custom.yaml") else {
        return;
    };
    let d = r.one("Deployment");
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["metadata"]["name"], "pull-bridge");
    assert_eq!(
        r.container()["image"],
        "registry.example.com/mirror/regbridge:0.1.0-rc1"
    );
    let env = r.env();
    assert_eq!(env["REGBRIDGE_LOG_FORMAT"]["value"], "text");
    assert_eq!(env["REGBRIDGE_METRICS_ADDR"]["value"], "0.0.0.0:9090");
    assert_eq!(env["REGBRIDGE_LEASE_NAME"]["value"], "pull-bridge-leader");
    assert_eq!(env["AWS_REGION"]["value"], "eu-west-1");
    assert_eq!(r.container()["ports"][0]["containerPort"], 9090);

    let sa = r.one("ServiceAccount");
    assert_eq!(sa["metadata"]["name"], "pull-bridge-controller");
    assert_eq!(
        sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::111122223333:role/regbridge"
    );
    assert_eq!(
        sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"],
        "regbridge@my-project.iam.gserviceaccount.com"
    );
    // AKS Workload Identity: the client ID on the ServiceAccount, and the
    // label, a string, on the pods.
    assert_eq!(
        sa["metadata"]["annotations"]["azure.workload.identity/client-id"],
        "c0ffee00-0000-4000-8000-000000000001"
    );
    assert_eq!(
        d["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"],
        "true"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["serviceAccountName"],
        "pull-bridge-controller"
    );
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        for b in r.all(kind) {
            assert_eq!(
                b["subjects"],
                json!([{"kind": "ServiceAccount", "name": "pull-bridge-controller", "namespace": NAMESPACE}]),
                "{kind} {}",
                b["metadata"]["name"]
            );
        }
    }
    assert_eq!(r.one("PodDisruptionBudget")["spec"]["minAvailable"], 2);

    let svc = r.named("Service", "-metrics");
    let sm = r.one("ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack");
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"],
        svc["spec"]["ports"][0]["name"]
    );
    assert_eq!(sm["spec"]["endpoints"][0]["interval"], "15s");
    let wanted = sm["spec"]["selector"]["matchLabels"].as_object().unwrap();
    for (k, v) in wanted {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "ServiceMonitor selects the Service"
        );
    }
    assert!(r.grants("", "serviceaccounts/token", "create"));
    assert_eq!(
        tenant_token_roles(&r),
        BTreeMap::from([
            ("team-a".to_string(), json!(["registry-puller"])),
            ("team-b".to_string(), json!(["registry-puller"])),
        ])
    );
}

/// `extraCA` mounts the bundle read-only and hands the controller its path:
/// the path the controller reads (`--ca-file`) is the mounted key.
#[test]
fn extra_ca_is_mounted_where_the_controller_reads_it() {
    let Some(custom) = Rendering::load("custom.yaml") else {
        return;
    };
    let pod = &custom.one("Deployment")["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "extra-ca")
        .expect("an extra-ca volume");
    assert_eq!(volume["configMap"]["name"], "corp-ca");
    assert_eq!(
        volume["configMap"]["items"],
        json!([{"key": "bundle.pem", "path": "bundle.pem"}])
    );
    let mount = custom.container()["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "extra-ca")
        .expect("mounted");
    assert_eq!(mount["readOnly"], true);
    let file = custom.env()["REGBRIDGE_CA_FILE"]["value"].clone();
    assert_eq!(
        file,
        format!("{}/bundle.pem", mount["mountPath"].as_str().unwrap())
    );
    let Some(default) = Rendering::load("default.yaml") else {
        return;
    };
    assert!(!default.env().contains_key("REGBRIDGE_CA_FILE"));
}

#[test]
fn cluster_pull_secrets_from_values_parse_as_the_resource() {
    let Some(r) = Rendering::load("custom.yaml") else {
        return;
    };
    let found = r.all("ClusterPullSecret");
    assert_eq!(found.len(), 2);
    for v in found {
        let cps: ClusterPullSecret =
            serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v:#}"));
        assert!(regbridge::cache::selection::Selection::compile(&cps.spec).is_ok());
        assert!(v["metadata"].get("namespace").is_none(), "cluster-scoped");
    }
    let ecr = r
        .all("ClusterPullSecret")
        .into_iter()
        .find(|v| v["metadata"]["name"] == "ecr")
        .unwrap();
    assert_eq!(ecr["metadata"]["labels"]["team"], "platform");
    assert_eq!(ecr["spec"]["refreshBefore"], "2h");
}

/// The tenant token Roles of a rendering: namespace -> the rule's
/// `resourceNames`; and no ClusterRole may grant tokens.
fn tenant_token_roles(r: &Rendering) -> BTreeMap<String, Value> {
    for role in r.all("ClusterRole") {
        let rules = role["rules"].as_array().into_iter().flatten();
        assert!(
            !rules
                .flat_map(|rule| rule["resources"].as_array().into_iter().flatten())
                .any(|res| res == "serviceaccounts/token" || res == "*"),
            "ClusterRole {} grants tokens for every ServiceAccount",
            role["metadata"]["name"]
        );
    }
    r.all("Role")
        .into_iter()
        .filter(|role| role["rules"][0]["resources"] == json!(["serviceaccounts/token"]))
        .map(|role| {
            let rules = role["rules"].as_array().unwrap();
            assert_eq!(rules.len(), 1, "{role}");
            assert_eq!(rules[0]["apiGroups"], json!([""]));
            assert_eq!(rules[0]["verbs"], json!(["create"]));
            (
                role["metadata"]["namespace"].as_str().unwrap().to_string(),
                rules[0]["resourceNames"].clone(),
            )
        })
        .collect()
}

#[test]
fn per_tenant_identity_adds_only_token_requests_for_the_listed_service_accounts() {
    let (Some(base), Some(tenant)) = (
        Rendering::load("default.yaml"),
        Rendering::load("per-tenant.yaml"),
    ) else {
        return;
    };
    assert!(tenant.grants("", "serviceaccounts/token", "create"));
    assert_eq!(
        tenant_token_roles(&tenant),
        BTreeMap::from([
            ("team-a".to_string(), json!(["puller", "builder"])),
            ("team-b".to_string(), json!(["on"])),
        ])
    );
    let rbac = |r: &Rendering| {
        let mut names: Vec<String> = ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]
            .iter()
            .flat_map(|k| r.all(k))
            .map(|d| {
                let name = d["metadata"]["name"].as_str().unwrap_or_default();
                let ns = d["metadata"]["namespace"].as_str().unwrap_or("(cluster)");
                format!("{}/{ns}/{name}", d["kind"].as_str().unwrap_or_default())
            })
            .collect();
        names.sort();
        names
    };
    let mut extra = rbac(&tenant);
    extra.retain(|n| !rbac(&base).contains(n));
    assert_eq!(
        extra,
        [
            "Role/team-a/regbridge-tenant-tokens",
            "Role/team-b/regbridge-tenant-tokens",
            "RoleBinding/team-a/regbridge-tenant-tokens",
            "RoleBinding/team-b/regbridge-tenant-tokens",
        ]
    );
    for binding in tenant
        .all("RoleBinding")
        .into_iter()
        .filter(|b| b["metadata"]["name"] == "regbridge-tenant-tokens")
    {
        assert_eq!(
            binding["roleRef"],
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "regbridge-tenant-tokens"})
        );
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "regbridge", "namespace": NAMESPACE}])
        );
    }
}

#[test]
fn default_webhook_is_served_through_a_service_and_never_blocks() {
    let Some(r) = Rendering::load("default.yaml") else {
        return;
    };
    let d = r.one("Deployment");
    let env = r.env();
    assert_eq!(env["REGBRIDGE_WEBHOOK"]["value"], "true");
    assert_eq!(env["REGBRIDGE_WEBHOOK_ADDR"]["value"], "0.0.0.0:9443");
    assert_eq!(
        env["REGBRIDGE_WEBHOOK_SECRET"]["value"],
        "regbridge-webhook-tls"
    );
    assert_eq!(env["REGBRIDGE_WEBHOOK_CONFIGURATION"]["value"], "regbridge");
    assert!(!env.contains_key("REGBRIDGE_WEBHOOK_TLS_DIR"));
    let svc = r.named("Service", "-webhook");
    assert_eq!(
        svc["metadata"]["name"],
        env["REGBRIDGE_WEBHOOK_SERVICE"]["value"]
    );
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "webhook");
    assert_eq!(
        svc["spec"]["selector"],
        d["spec"]["selector"]["matchLabels"]
    );
    let port = r.container()["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "webhook")
        .expect("a webhook port");
    assert_eq!(port["containerPort"], 9443);

    let mwc = r.one("MutatingWebhookConfiguration");
    assert_eq!(mwc["metadata"]["name"], "regbridge");
    let hooks = mwc["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 1);
    let w = &hooks[0];
    assert_eq!(w["failurePolicy"], "Ignore");
    assert_eq!(w["timeoutSeconds"], 2);
    assert_eq!(w["sideEffects"], "None");
    assert_eq!(w["admissionReviewVersions"], json!(["v1"]));
    assert!(w.get("objectSelector").is_none());
    assert_eq!(
        w["clientConfig"]["service"]["name"],
        svc["metadata"]["name"]
    );
    assert_eq!(w["clientConfig"]["service"]["namespace"], NAMESPACE);
    assert_eq!(
        w["clientConfig"]["service"]["path"],
        regbridge::webhook::PATH
    );
    assert!(
        w["clientConfig"].get("caBundle").is_none(),
        "regbridge keeps it"
    );
    let exprs = w["namespaceSelector"]["matchExpressions"]
        .as_array()
        .unwrap();
    assert!(exprs.contains(&json!({"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", NAMESPACE]})));
    assert!(exprs.contains(
        &json!({"key": "regbridge.dev/exclude", "operator": "NotIn", "values": ["true"]})
    ));
    let rules = w["rules"].as_array().unwrap();
    assert!(
        rules
            .iter()
            .any(|r| r["resources"] == json!(["serviceaccounts"])
                && r["operations"] == json!(["CREATE", "UPDATE"]))
    );
    assert!(
        rules
            .iter()
            .any(|r| r["resources"] == json!(["pods"]) && r["operations"] == json!(["CREATE"]))
    );
    assert!(
        w["matchConditions"][0]["expression"]
            .as_str()
            .unwrap()
            .contains("system:serviceaccount:regbridge:regbridge")
    );
    assert!(r.grants(
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "patch"
    ));
    let mwc_rule = r.named("ClusterRole", "-webhook")["rules"][0].clone();
    assert_eq!(mwc_rule["resourceNames"], json!(["regbridge"]));
    assert_eq!(mwc_rule["verbs"], json!(["get", "patch"]));
    let tls = r.named("Role", "-webhook-tls");
    assert_eq!(tls["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        tls["rules"][0]["resourceNames"],
        json!(["regbridge-webhook-tls"])
    );
    assert_eq!(tls["rules"][0]["verbs"], json!(["get", "update"]));
    assert_eq!(tls["rules"][1]["verbs"], json!(["create"]));
    assert!(
        r.all("Certificate").is_empty(),
        "cert-manager is off by default"
    );
}

#[test]
fn cert_manager_issues_and_injects_the_webhook_certificate() {
    let Some(r) = Rendering::load("custom.yaml") else {
        return;
    };
    let mwc = r.one("MutatingWebhookConfiguration");
    let cert = r.one("Certificate");
    assert_eq!(
        mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{NAMESPACE}/{}", cert["metadata"]["name"].as_str().unwrap())
    );
    assert_eq!(r.env()["REGBRIDGE_WEBHOOK_TLS_DIR"]["value"], "/tls");
    let pod = &r.one("Deployment")["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "webhook-tls")
        .expect("the certificate is mounted");
    assert_eq!(volume["secret"]["secretName"], cert["spec"]["secretName"]);
    assert_eq!(
        cert["spec"]["issuerRef"]["name"],
        r.one("Issuer")["metadata"]["name"]
    );
    assert!(
        !r.grants(
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            "patch"
        ),
        "cert-manager injects the CA"
    );
}

#[test]
fn webhook_url_replaces_the_service() {
    let Some(r) = Rendering::load("webhook-url.yaml") else {
        return;
    };
    let w = &r.one("MutatingWebhookConfiguration")["webhooks"][0];
    assert_eq!(w["clientConfig"]["url"], "https://172.18.0.1:9443/mutate");
    assert!(w["clientConfig"].get("service").is_none());
    assert!(r.all("Service").iter().all(|s| {
        !s["metadata"]["name"]
            .as_str()
            .unwrap()
            .ends_with("-webhook")
    }));
    assert_eq!(
        r.env()["REGBRIDGE_WEBHOOK_CERT_NAMES"]["value"],
        "172.18.0.1"
    );
    // The API server calls that address directly: the NetworkPolicy admits
    // it to the webhook port, and anyone to the metrics port (none listed).
    let ingress = &r.one("NetworkPolicy")["spec"]["ingress"];
    assert_eq!(
        ingress[0]["from"],
        json!([{"ipBlock": {"cidr": "172.18.0.1/32"}}])
    );
    assert_eq!(ingress[1]["ports"][0]["port"], "http-metrics");
    assert!(
        ingress[1].get("from").is_none(),
        "metrics open to any source"
    );
}

/// Values that would grant nothing the controller needs, or block the API
/// server, fail the install with a message naming the value to set.
#[test]
fn incomplete_values_are_refused_with_the_value_to_set() {
    let Some(text) = rendered("refused.json") else {
        return;
    };
    let refused: BTreeMap<String, Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(
        refused.keys().collect::<Vec<_>>(),
        ["network-policy-without-sources", "per-tenant-unlisted"]
    );
    for (name, r) in &refused {
        assert_eq!(r["refused"], true, "{name}: {r}");
        let expected = r["expected"].as_str().unwrap();
        assert!(
            r["message"].as_str().unwrap().contains(expected),
            "{name}: {r}"
        );
    }
}

#[test]
fn network_policy_admits_only_the_listed_sources_to_the_webhook_port() {
    let (Some(default), Some(r)) = (
        Rendering::load("default.yaml"),
        Rendering::load("custom.yaml"),
    ) else {
        return;
    };
    assert!(default.all("NetworkPolicy").is_empty(), "off by default");
    let np = r.one("NetworkPolicy");
    let d = r.one("Deployment");
    assert_eq!(np["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"],
        d["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        np["spec"]["policyTypes"],
        json!(["Ingress"]),
        "egress stays open"
    );
    let ingress = np["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 2);
    let ports: Vec<&Value> = r.container()["ports"].as_array().unwrap().iter().collect();
    let port_named = |name: &str| ports.iter().find(|p| p["name"] == name).copied();
    // Named ports: the policy follows `webhook.port` and `metrics.port`.
    assert_eq!(
        ingress[0]["ports"],
        json!([{"port": "webhook", "protocol": "TCP"}])
    );
    assert_eq!(port_named("webhook").unwrap()["containerPort"], 8443);
    assert_eq!(
        ingress[0]["from"],
        json!([
            {"ipBlock": {"cidr": "10.0.0.0/28"}},
            {"ipBlock": {"cidr": "10.0.1.5/32"}},
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
             "podSelector": {"matchLabels": {"app": "konnectivity-agent"}}}
        ])
    );
    assert_eq!(
        ingress[1]["ports"],
        json!([{"port": "http-metrics", "protocol": "TCP"}])
    );
    assert_eq!(port_named("http-metrics").unwrap()["containerPort"], 9090);
    assert_eq!(
        ingress[1]["from"],
        json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}])
    );
}
