//! The controller against the in-process API stand-in: every distribution
//! rule, observed through the API as a user would see it.

use regbridge_test_support as support;

use std::time::Duration;

use regbridge_standin::{Fault, Method, Resource};
use serde_json::{Value, json};
use support::*;

const T: Duration = Duration::from_secs(10);

fn synced(h: &Harness, ns: &str) -> bool {
    h.secret(ns, "regcred").is_some()
        && h.pull_secrets(ns, "default")
            .contains(&"regcred".to_string())
}

#[tokio::test]
async fn selected_namespaces_get_the_secret_and_default_sa_reference() {
    let h = with_dockerhub(dockerhub_spec(), &["team-a", "team-b", "kube-extra"]).await;
    wait_for("team-a and team-b synced", T, || {
        synced(&h, "team-a") && synced(&h, "team-b")
    })
    .await;
    let copy = h.secret("team-a", "regcred").unwrap();
    assert_eq!(copy["type"], "kubernetes.io/dockerconfigjson");
    let cfg = docker_config(&copy);
    assert_eq!(
        cfg["auths"]["https://index.docker.io/v1/"]["username"],
        "me"
    );
    assert_eq!(
        cfg["auths"]["https://index.docker.io/v1/"]["password"],
        PASSWORD
    );
    assert!(cfg["auths"]["https://index.docker.io/v1/"]["auth"].is_string());
    let labels = copy["metadata"]["labels"].as_object().unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "regbridge");
    assert_eq!(labels["regbridge.dev/cluster-pull-secret"], "company");
    assert!(
        !labels.contains_key("argocd.argoproj.io/instance"),
        "source labels are never copied"
    );
    assert!(
        copy["metadata"].get("annotations").is_none(),
        "source annotations are never copied"
    );
    // byte-identical to the composed source Secret
    let source = h.secret(CONTROLLER_NS, "company").unwrap();
    assert_eq!(
        source["data"][".dockerconfigjson"],
        copy["data"][".dockerconfigjson"]
    );
    assert!(
        h.secret("kube-extra", "regcred").is_none(),
        "excluded by glob"
    );
    assert!(
        h.secret("default", "regcred").is_some(),
        "empty include selects all"
    );
    wait_for("Ready=True", T, || {
        h.condition("company", "Ready").map(|c| c.0) == Some("True".into())
    })
    .await;
    let status = h.cps("company").unwrap()["status"].clone();
    assert_eq!(
        status["registries"][0]["host"],
        "https://index.docker.io/v1/"
    );
    assert_eq!(status["registries"][0]["provider"], "static");
    h.stop().await;
}

/// A restart with nothing changed sends no mutating request, not even a
/// failed one. The copies' list arrives late, as from a loaded API server,
/// after the resource itself is cached: a reconcile that did not wait for
/// every cache would find the source Secret missing and create it (a 409).
#[tokio::test]
async fn a_restart_with_nothing_changed_writes_nothing() {
    let mut h = with_dockerhub(dockerhub_spec(), &["a", "b"]).await;
    wait_for("synced", T, || synced(&h, "a") && synced(&h, "b")).await;
    wait_for("Ready", T, || {
        h.condition("company", "Ready").map(|c| c.0) == Some("True".into())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.server.clear_requests();
    h.server.inject_fault(
        Fault::slow("/api/v1/secrets", Duration::from_millis(1500)).method(Method::GET),
    );
    h.restart().await;
    wait_for("a reconcile after the restart", T, || {
        reconciles(&h, "company") > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let requests = h.server.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.method == "GET" && r.path == "/api/v1/secrets"),
        "the copies were listed again"
    );
    let writes = h.server.writes();
    assert!(writes.is_empty(), "the restart wrote: {writes:#?}");
    h.stop().await;
}

#[tokio::test]
async fn steady_state_makes_zero_writes() {
    let h = with_dockerhub(dockerhub_spec(), &["a", "b", "c"]).await;
    wait_for("synced", T, || {
        ["a", "b", "c"].iter().all(|n| synced(&h, n))
    })
    .await;
    wait_for("Ready", T, || {
        h.condition("company", "Ready").map(|c| c.0) == Some("True".into())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.server.clear_requests();
    // Unrelated churn: a label change on a namespace triggers reconciles.
    let mut ns = h.server.get(&Resource::NAMESPACES, None, "a").unwrap();
    ns["metadata"]["labels"] = json!({"touched": "yes"});
    h.server.update(&Resource::NAMESPACES, None, ns).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let writes = h.server.writes();
    assert!(writes.is_empty(), "steady state wrote: {writes:#?}");
    h.stop().await;
}

#[tokio::test]
async fn new_namespace_and_late_default_sa_are_covered() {
    let h = with_dockerhub(dockerhub_spec(), &[]).await;
    namespace(&h.server, "late", json!({}));
    wait_for("secret in new namespace", T, || {
        h.secret("late", "regcred").is_some()
    })
    .await;
    // The default SA appears after the namespace, as kube-controller-manager adds it.
    service_account(&h.server, "late", "default", &[]);
    wait_for("late default SA patched", T, || synced(&h, "late")).await;
    h.stop().await;
}

#[tokio::test]
async fn source_change_propagates_without_recreating() {
    let h = with_dockerhub(dockerhub_spec(), &["a"]).await;
    wait_for("synced", T, || synced(&h, "a")).await;
    let uid_before = h.secret("a", "regcred").unwrap()["metadata"]["uid"].clone();
    h.server
        .update(
            &Resource::SECRETS,
            Some(CONTROLLER_NS),
            dockerhub_secret("me", "rotated-password"),
        )
        .unwrap();
    wait_for("rotated password in copy", T, || {
        h.secret("a", "regcred")
            .map(|s| {
                docker_config(&s)["auths"]["https://index.docker.io/v1/"]["password"]
                    == "rotated-password"
            })
            .unwrap_or(false)
    })
    .await;
    assert_eq!(
        h.secret("a", "regcred").unwrap()["metadata"]["uid"],
        uid_before,
        "updated in place"
    );
    h.stop().await;
}

#[tokio::test]
async fn foreign_secret_is_never_touched_and_reported_as_conflict() {
    let h = Harness::start_with(|s| {
        seed_dockerhub(s);
        namespace_with_default_sa(s, "mine", json!({}));
        namespace_with_default_sa(s, "theirs", json!({}));
        s.create(
            &Resource::SECRETS,
            Some("theirs"),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred", "namespace": "theirs"},
                   "type": "Opaque", "data": {"k": "dmFsdWU="}}),
        )
        .unwrap();
    })
    .await;
    h.create_resource("company", dockerhub_spec());
    wait_for("conflict on status", T, || {
        h.cps("company")
            .map(|c| c.pointer("/status/namespaces/conflicting") == Some(&json!(1)))
            .unwrap_or(false)
    })
    .await;
    assert!(synced(&h, "mine"));
    let theirs = h.secret("theirs", "regcred").unwrap();
    assert_eq!(theirs["type"], "Opaque");
    assert_eq!(theirs["data"]["k"], "dmFsdWU=", "foreign Secret untouched");
    assert!(
        h.pull_secrets("theirs", "default").is_empty(),
        "SA not pointed at a foreign Secret"
    );
    let status = h.cps("company").unwrap()["status"].clone();
    assert_eq!(status["conflicts"], json!(["theirs"]));
    assert_eq!(
        h.condition("company", "Distributed").unwrap(),
        ("False".into(), "Conflict".into())
    );
    let events = h.server.list(&Resource::EVENTS_V1, Some("default"));
    assert!(
        events.iter().any(|e| e["reason"] == "SecretConflict"
            && e["note"].as_str().unwrap_or_default().contains("theirs")),
        "a Warning Event names the conflict: {events:#?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn concurrent_sa_writer_loses_no_entries() {
    let h = Harness::start_with(|s| {
        seed_dockerhub(s);
        namespace(s, "busy", json!({}));
        service_account(s, "busy", "default", &["first"]);
    })
    .await;
    // The controller's first patch is refused as if its `test` op failed, and
    // meanwhile another writer appends its own entry.
    h.server.inject_fault(
        Fault::new("/serviceaccounts/default", 422)
            .method(Method::PATCH)
            .times(1)
            .reason("Invalid"),
    );
    let mut sa = h
        .server
        .get(&Resource::SERVICE_ACCOUNTS, Some("busy"), "default")
        .unwrap();
    sa["imagePullSecrets"] = json!([{"name": "first"}, {"name": "other-writer"}]);
    h.server
        .update(&Resource::SERVICE_ACCOUNTS, Some("busy"), sa)
        .unwrap();
    h.create_resource("company", dockerhub_spec());
    wait_for("reference added", T, || {
        h.pull_secrets("busy", "default")
            .contains(&"regcred".to_string())
    })
    .await;
    assert_eq!(
        h.pull_secrets("busy", "default"),
        ["first", "other-writer", "regcred"]
    );
    let patches: Vec<_> = h
        .server
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/serviceaccounts/default"))
        .collect();
    assert!(patches.len() >= 2, "retried after the refusal");
    for p in &patches {
        assert_eq!(
            p.content_type.as_deref(),
            Some("application/json-patch+json")
        );
        let ops = p.body.as_ref().unwrap().as_array().unwrap();
        assert_eq!(ops[0]["op"], "test", "every patch is guarded");
    }
    h.stop().await;
}

#[tokio::test]
async fn conflict_on_secret_update_is_retried() {
    let h = with_dockerhub(dockerhub_spec(), &["a"]).await;
    wait_for("synced", T, || synced(&h, "a")).await;
    h.server.inject_fault(
        Fault::new("/namespaces/a/secrets/regcred", 409)
            .method(Method::PUT)
            .times(2),
    );
    h.server
        .update(
            &Resource::SECRETS,
            Some(CONTROLLER_NS),
            dockerhub_secret("me", "second-password"),
        )
        .unwrap();
    wait_for("update lands after 409s", Duration::from_secs(30), || {
        h.secret("a", "regcred")
            .map(|s| {
                docker_config(&s)["auths"]["https://index.docker.io/v1/"]["password"]
                    == "second-password"
            })
            .unwrap_or(false)
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn watches_recover_from_410_gone() {
    let h = with_dockerhub(dockerhub_spec(), &["a"]).await;
    wait_for("synced", T, || synced(&h, "a")).await;
    h.server.expire_watches();
    namespace_with_default_sa(&h.server, "after-expiry", json!({}));
    wait_for(
        "namespace created after 410 is covered",
        Duration::from_secs(60),
        || synced(&h, "after-expiry"),
    )
    .await;
    assert!(h.health.ready(std::time::Instant::now()).is_ok());
    h.stop().await;
}

#[tokio::test]
async fn forbidden_secret_create_is_a_failure_not_a_skipped_namespace() {
    let h = Harness::start_with(|s| {
        seed_dockerhub(s);
        namespace_with_default_sa(s, "open", json!({}));
        namespace_with_default_sa(s, "locked", json!({}));
    })
    .await;
    // An admission policy or a missing RBAC rule, not a terminating
    // namespace: a plain 403 without the NamespaceTerminating cause.
    h.server.inject_fault(
        Fault::new("/namespaces/locked/secrets", 403)
            .method(Method::POST)
            .times(1000),
    );
    h.create_resource("company", dockerhub_spec());
    wait_for("open synced", T, || synced(&h, "open")).await;
    wait_for("Distributed=False WritesFailed", T, || {
        h.condition("company", "Distributed") == Some(("False".into(), "WritesFailed".into()))
    })
    .await;
    let cps = h.cps("company").unwrap();
    let conditions = cps["status"]["conditions"].as_array().unwrap();
    let distributed = conditions
        .iter()
        .find(|c| c["type"] == "Distributed")
        .unwrap();
    let message = distributed["message"].as_str().unwrap();
    assert!(
        message.contains("Forbidden") && message.contains("locked/regcred"),
        "{message}"
    );
    assert!(h.secret("locked", "regcred").is_none());
    assert!(
        h.pull_secrets("locked", "default").is_empty(),
        "no reference to a Secret that is not there"
    );
    let events = h.server.list(&Resource::EVENTS_V1, Some("default"));
    let warning = events
        .iter()
        .find(|e| e["reason"] == "DistributionFailed")
        .expect("a DistributionFailed Event");
    assert_eq!(warning["type"], "Warning");
    assert!(
        warning["note"]
            .as_str()
            .unwrap_or_default()
            .contains("Forbidden"),
        "{warning}"
    );
    h.stop().await;
}

#[tokio::test]
async fn terminating_namespace_is_skipped() {
    let h = Harness::start_with(|s| {
        seed_dockerhub(s);
        namespace_with_default_sa(s, "dying", json!({}));
        s.terminate_namespace("dying").unwrap();
        namespace_with_default_sa(s, "alive", json!({}));
    })
    .await;
    h.create_resource("company", dockerhub_spec());
    wait_for("alive synced", T, || synced(&h, "alive")).await;
    wait_for("Ready", T, || {
        h.condition("company", "Ready").map(|c| c.0) == Some("True".into())
    })
    .await;
    assert!(h.secret("dying", "regcred").is_none());
    let creates_in_dying = h
        .server
        .requests()
        .iter()
        .filter(|r| r.is_write() && r.path.contains("/namespaces/dying/"))
        .count();
    assert_eq!(
        creates_in_dying, 0,
        "no writes are attempted into a terminating namespace"
    );
    h.stop().await;
}

#[tokio::test]
async fn deselected_namespace_loses_secret_and_only_our_reference() {
    let mut spec = dockerhub_spec();
    spec["namespaces"] = json!({"selector": {"matchLabels": {"pull": "yes"}}});
    let h = Harness::start_with(|s| {
        seed_dockerhub(s);
        namespace(s, "a", json!({"pull": "yes"}));
        service_account(s, "a", "default", &["keep-me"]);
    })
    .await;
    h.create_resource("company", spec);
    wait_for("synced", T, || synced(&h, "a")).await;
    let mut ns = h.server.get(&Resource::NAMESPACES, None, "a").unwrap();
    ns["metadata"]["labels"] = json!({"pull": "no"});
    h.server.update(&Resource::NAMESPACES, None, ns).unwrap();
    wait_for("cleaned", T, || {
        h.secret("a", "regcred").is_none() && h.pull_secrets("a", "default") == ["keep-me"]
    })
    .await;
    h.stop().await;
}

/// How often `resource` has been reconciled, from the metrics.
fn reconciles(h: &Harness, resource: &str) -> u64 {
    let prefix = format!("regbridge_reconciles_total{{resource=\"{resource}\",result=\"ok\"}} ");
    h.metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

#[tokio::test]
async fn events_in_another_tenants_namespaces_do_not_reconcile_a_resource() {
    let h = Harness::start_with(|s| {
        seed_dockerhub(s);
        namespace_with_default_sa(s, "team-a", json!({}));
        namespace_with_default_sa(s, "team-b", json!({}));
    })
    .await;
    let mut spec = dockerhub_spec();
    spec["namespaces"] = json!({"include": ["team-a*"]});
    h.create_resource("a", spec.clone());
    spec["namespaces"] = json!({"include": ["team-b*"]});
    h.create_resource("b", spec);
    wait_for("both synced", T, || {
        synced(&h, "team-a") && synced(&h, "team-b")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = reconciles(&h, "b");
    assert!(before > 0);
    for i in 0..5 {
        namespace_with_default_sa(&h.server, &format!("team-a-{i}"), json!({}));
    }
    wait_for("a's new namespaces synced", T, || {
        (0..5).all(|i| synced(&h, &format!("team-a-{i}")))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(reconciles(&h, "b"), before, "b selects none of them");
    assert!(
        h.secret("team-a-0", "regcred").unwrap()["metadata"]["labels"]["regbridge.dev/cluster-pull-secret"]
            == "a"
    );
    h.stop().await;
}

#[tokio::test]
async fn renaming_the_secret_moves_the_copy_and_the_reference() {
    let h = Harness::start_with(|s| {
        seed_dockerhub(s);
        namespace(s, "a", json!({}));
        service_account(s, "a", "default", &["keep-me"]);
    })
    .await;
    h.create_resource("company", dockerhub_spec());
    wait_for("synced", T, || synced(&h, "a")).await;
    let mut cps = h.cps("company").unwrap();
    cps["spec"]["secretName"] = json!("pull");
    h.server
        .update(&Resource::CLUSTER_PULL_SECRETS, None, cps)
        .unwrap();
    wait_for("the old name retired", T, || {
        h.secret("a", "regcred").is_none()
            && h.secret("a", "pull").is_some()
            && h.pull_secrets("a", "default") == ["keep-me", "pull"]
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn deleting_the_resource_removes_everything_it_added() {
    let h = Harness::start_with(|s| {
        seed_dockerhub(s);
        namespace(s, "a", json!({}));
        service_account(s, "a", "default", &["keep-me"]);
        service_account(s, "a", "builder", &[]);
    })
    .await;
    let mut spec = dockerhub_spec();
    spec["serviceAccounts"] = json!(["*"]);
    h.create_resource("company", spec);
    wait_for("synced", T, || {
        synced(&h, "a") && h.pull_secrets("a", "builder") == ["regcred"]
    })
    .await;
    assert!(
        h.metrics
            .encode()
            .contains("regbridge_reconciles_total{resource=\"company\"")
    );
    wait_for("finalizer", T, || {
        h.cps("company")
            .map(|c| c["metadata"]["finalizers"] == json!(["regbridge.dev/cleanup"]))
            .unwrap_or(false)
    })
    .await;
    h.server
        .delete(&Resource::CLUSTER_PULL_SECRETS, None, "company")
        .unwrap();
    wait_for("resource gone", T, || h.cps("company").is_none()).await;
    wait_for("its metric series gone", T, || {
        !h.metrics.encode().contains("resource=\"company\"")
    })
    .await;
    assert!(h.secret("a", "regcred").is_none());
    assert!(
        h.secret(CONTROLLER_NS, "company").is_none(),
        "source Secret removed"
    );
    assert_eq!(h.pull_secrets("a", "default"), ["keep-me"]);
    assert!(h.pull_secrets("a", "builder").is_empty());
    assert!(
        h.secret(CONTROLLER_NS, "dockerhub").is_some(),
        "user's source is untouched"
    );
    h.stop().await;
}

#[tokio::test]
async fn older_resource_wins_a_shared_secret_name() {
    let h = with_dockerhub(dockerhub_spec(), &["a"]).await;
    wait_for("synced", T, || synced(&h, "a")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // creation timestamps have second precision
    h.create_resource("younger", dockerhub_spec());
    wait_for("younger reports the conflict", T, || {
        h.cps("younger")
            .and_then(|c| c.pointer("/status/conflicts").cloned())
            .map(|c| c.as_array().is_some_and(|a| a.iter().any(|n| n == "a")))
            .unwrap_or(false)
    })
    .await;
    let copy = h.secret("a", "regcred").unwrap();
    assert_eq!(
        copy["metadata"]["labels"]["regbridge.dev/cluster-pull-secret"],
        "company"
    );
    // Deleting the older one hands the namespace over.
    h.server
        .delete(&Resource::CLUSTER_PULL_SECRETS, None, "company")
        .unwrap();
    wait_for("younger takes over", T, || {
        h.secret("a", "regcred")
            .map(|s| s["metadata"]["labels"]["regbridge.dev/cluster-pull-secret"] == "younger")
            .unwrap_or(false)
    })
    .await;
    wait_for("reference kept", T, || synced(&h, "a")).await;
    h.stop().await;
}

#[tokio::test]
async fn invalid_resource_changes_nothing_already_distributed() {
    let h = with_dockerhub(dockerhub_spec(), &["a"]).await;
    wait_for("synced", T, || synced(&h, "a")).await;
    let before = h.secret("a", "regcred").unwrap();
    let mut cps = h.cps("company").unwrap();
    cps["spec"]["namespaces"]["include"] = json!(["team-[a"]);
    h.server
        .update(&Resource::CLUSTER_PULL_SECRETS, None, cps)
        .unwrap();
    wait_for("Ready=False InvalidSelector", T, || {
        h.condition("company", "Ready") == Some(("False".into(), "InvalidSelector".into()))
    })
    .await;
    let msg = h.cps("company").unwrap()["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("team-[a"),
        "the message names the bad glob: {msg}"
    );
    assert_eq!(h.secret("a", "regcred").unwrap(), before);
    assert!(synced(&h, "a"));
    // No spinning: a bounded number of reconciles while invalid.
    h.server.clear_requests();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(h.server.writes().is_empty(), "{:#?}", h.server.writes());
    h.stop().await;
}

#[tokio::test]
async fn missing_source_secret_sets_ready_false_with_its_name() {
    let h = Harness::start_with(|s| namespace_with_default_sa(s, "a", json!({}))).await;
    h.create_resource("company", dockerhub_spec());
    wait_for("Ready=False", T, || {
        h.condition("company", "Ready").map(|c| c.0) == Some("False".into())
    })
    .await;
    let msg = h.cps("company").unwrap()["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("regbridge/dockerhub"), "{msg}");
    assert!(h.secret("a", "regcred").is_none());
    // Creating the Secret fixes it without touching the resource.
    h.server
        .create(
            &Resource::SECRETS,
            Some(CONTROLLER_NS),
            dockerhub_secret("me", PASSWORD),
        )
        .unwrap();
    wait_for("synced after fix", T, || synced(&h, "a")).await;
    h.stop().await;
}

#[tokio::test]
async fn credentials_never_reach_status_or_events() {
    let h = with_dockerhub(dockerhub_spec(), &["a"]).await;
    wait_for("synced", T, || synced(&h, "a")).await;
    h.server
        .delete(&Resource::SECRETS, Some(CONTROLLER_NS), "dockerhub")
        .unwrap();
    wait_for("Ready=False", T, || {
        h.condition("company", "Ready").map(|c| c.0) == Some("False".into())
    })
    .await;
    let status = serde_json::to_string(&h.cps("company").unwrap()["status"]).unwrap();
    assert!(!status.contains(PASSWORD));
    let events = serde_json::to_string(&h.server.list(&Resource::EVENTS, None)).unwrap();
    assert!(!events.contains(PASSWORD));
    assert!(!h.metrics.encode().contains(PASSWORD));
    h.stop().await;
}

/// A failed-pull Event as the kubelet's recorder writes it.
fn kubelet_event(ns: &str, name: &str, pod: &str, message: &str) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod, "namespace": ns},
        "reason": "Failed", "type": "Warning", "message": message,
        "source": {"component": "kubelet", "host": "node-1"},
        "reportingComponent": "kubelet", "reportingInstance": "node-1",
        "firstTimestamp": now, "lastTimestamp": now, "count": 1
    })
}

/// containerd's answer for Docker Hub without credentials: counted.
const NO_CREDENTIALS_PULL: &str = r#"Failed to pull image "nginx:1.27": rpc error: code = Unknown desc = failed to pull and unpack image "docker.io/library/nginx:1.27": failed to resolve reference "docker.io/library/nginx:1.27": pull access denied, repository does not exist or may require authorization: server message: insufficient_scope: authorization failed"#;

async fn with_hosts_on_status(namespaces: &[&str]) -> Harness {
    let h = with_dockerhub(dockerhub_spec(), namespaces).await;
    wait_for("synced", T, || synced(&h, namespaces[0])).await;
    wait_for("hosts on status", T, || {
        h.cps("company")
            .and_then(|c| c.pointer("/status/registries/0/host").cloned())
            .is_some()
    })
    .await;
    h
}

fn pod_gets(h: &Harness) -> Vec<String> {
    h.server
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains("/pods/"))
        .map(|r| r.path)
        .collect()
}

#[tokio::test]
async fn a_pull_failure_event_not_from_the_kubelet_changes_nothing() {
    let h = with_hosts_on_status(&["a"]).await;
    h.server.clear_requests();
    // Anyone allowed to create Events in `a` can write this.
    let mut forged = kubelet_event("a", "forged", "victim-0", NO_CREDENTIALS_PULL);
    forged["source"] = json!({"component": "kubectl"});
    forged["reportingComponent"] = json!("kubectl");
    h.server
        .create(&Resource::EVENTS, Some("a"), forged)
        .unwrap();
    let mut unlabelled = kubelet_event("a", "unlabelled", "victim-1", NO_CREDENTIALS_PULL);
    unlabelled.as_object_mut().unwrap().remove("source");
    unlabelled
        .as_object_mut()
        .unwrap()
        .remove("reportingComponent");
    h.server
        .create(&Resource::EVENTS, Some("a"), unlabelled)
        .unwrap();
    // Events are handled in order: once the kubelet's own shows, the
    // others have been seen.
    h.server
        .create(
            &Resource::EVENTS,
            Some("a"),
            kubelet_event("a", "real", "web-0", NO_CREDENTIALS_PULL),
        )
        .unwrap();
    wait_for("the kubelet's failure on status", T, || {
        h.cps("company")
            .and_then(|c| c.pointer("/status/pullFailures/0/pod").cloned())
            == Some(json!("web-0"))
    })
    .await;
    let status = h.cps("company").unwrap()["status"].clone();
    assert_eq!(status["pullFailureCount"], 1, "{status}");
    assert_eq!(status["pullFailures"].as_array().unwrap().len(), 1);
    assert_eq!(
        pod_gets(&h),
        ["/api/v1/namespaces/a/pods/web-0"],
        "no Pod read for the forged Events"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_huge_pod_name_is_cut_on_status() {
    let h = with_hosts_on_status(&["a"]).await;
    h.server.clear_requests();
    let huge = "p".repeat(100 * 1024);
    h.server
        .create(
            &Resource::EVENTS,
            Some("a"),
            kubelet_event("a", "huge", &huge, NO_CREDENTIALS_PULL),
        )
        .unwrap();
    wait_for("the failure on status", T, || {
        h.cps("company")
            .and_then(|c| c.pointer("/status/pullFailureCount").cloned())
            == Some(json!(1))
    })
    .await;
    let status = h.cps("company").unwrap()["status"].clone();
    let pod = status["pullFailures"][0]["pod"].as_str().unwrap();
    assert!(pod.chars().count() <= 253, "{} characters", pod.len());
    assert!(pod.starts_with("ppp"));
    assert!(
        serde_json::to_string(&status).unwrap().len() < 8 * 1024,
        "status stays small"
    );
    assert!(pod_gets(&h).is_empty(), "no pod can have that name");
    h.stop().await;
}

#[tokio::test]
async fn auth_failed_pull_on_a_served_host_shows_on_status() {
    let h = with_dockerhub(dockerhub_spec(), &["a", "kube-x"]).await;
    wait_for("synced", T, || synced(&h, "a")).await;
    wait_for("hosts on status", T, || {
        h.cps("company")
            .and_then(|c| c.pointer("/status/registries/0/host").cloned())
            .is_some()
    })
    .await;
    // Ignored: an unselected namespace, a host regbridge does not serve, and
    // a missing image.
    for (ns, name, msg) in [
        (
            "kube-x",
            "e1",
            r#"Failed to pull image "nginx:1.27": 401 Unauthorized"#,
        ),
        (
            "a",
            "e2",
            r#"Failed to pull image "quay.io/team/app:1": unauthorized: authentication required"#,
        ),
        (
            "a",
            "e3",
            r#"Failed to pull image "nginx:9.99": rpc error: code = NotFound desc = failed to pull and unpack image "docker.io/library/nginx:9.99": not found"#,
        ),
    ] {
        h.server
            .create(
                &Resource::EVENTS,
                Some(ns),
                kubelet_event(ns, name, "web-0", msg),
            )
            .unwrap();
    }
    // The pod was admitted without the Secret.
    h.server
        .create(
            &Resource::PODS,
            Some("a"),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "namespace": "a"},
                   "spec": {"serviceAccountName": "default", "containers": [{"name": "web", "image": "nginx:1.27"}]}}),
        )
        .unwrap();
    let started = std::time::Instant::now();
    h.server
        .create(
            &Resource::EVENTS,
            Some("a"),
            kubelet_event("a", "e4", "web-1", NO_CREDENTIALS_PULL),
        )
        .unwrap();
    wait_for("pull failure on status", Duration::from_secs(2), || {
        h.cps("company")
            .and_then(|c| c.pointer("/status/pullFailureCount").cloned())
            == Some(json!(1))
    })
    .await;
    eprintln!("pull failure reached status in {:?}", started.elapsed());
    let status = h.cps("company").unwrap()["status"].clone();
    let f = &status["pullFailures"][0];
    assert_eq!(
        (f["namespace"].as_str(), f["pod"].as_str()),
        (Some("a"), Some("web-1"))
    );
    assert_eq!(f["host"], "https://index.docker.io/v1/");
    let diagnosis = f["diagnosis"].as_str().unwrap_or_default();
    assert!(
        diagnosis.contains("does not reference Secret regcred") && diagnosis.contains("default"),
        "{diagnosis}"
    );
    assert_eq!(
        status["pullFailures"].as_array().unwrap().len(),
        1,
        "only the counted Event"
    );
    // The Event, in `default`, names a count and a host; which pod pulled
    // which image stays on status.
    let events = h.server.list(&Resource::EVENTS_V1, Some("default"));
    let event = events
        .iter()
        .find(|e| e["reason"] == "PullAuthFailed")
        .expect("a PullAuthFailed Event");
    let note = event["note"].as_str().unwrap();
    assert!(
        note.contains("https://index.docker.io/v1/") && note.contains("failed pulls counted: 1"),
        "{note}"
    );
    for detail in ["web-1", "nginx", "a/"] {
        assert!(!note.contains(detail), "{detail} in {note}");
    }
    assert!(
        h.metrics
            .encode()
            .contains("regbridge_pull_auth_failures_total")
    );
    h.stop().await;
}
