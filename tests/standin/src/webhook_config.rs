//! `admissionregistration.k8s.io/v1` MutatingWebhookConfiguration: the defaults and
//! validation a real server applies when one is written, and the view the admission
//! chain reads to decide which webhooks a request goes to.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::selector::LabelSelector;
use crate::status::Cause;
use crate::store::TypeInfo;
use crate::validate::is_dns_subdomain;

#[derive(Debug, Deserialize)]
struct Configuration {
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    webhooks: Vec<Spec>,
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: String,
}

/// One webhook as written; optional fields are the ones a server defaults.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    name: String,
    #[serde(default)]
    client_config: ClientConfig,
    #[serde(default)]
    rules: Vec<Rule>,
    failure_policy: Option<String>,
    match_policy: Option<String>,
    namespace_selector: Option<Value>,
    object_selector: Option<Value>,
    side_effects: Option<String>,
    timeout_seconds: Option<i64>,
    #[serde(default)]
    admission_review_versions: Vec<String>,
    reinvocation_policy: Option<String>,
}

/// Where a webhook is reached.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientConfig {
    pub url: Option<String>,
    pub service: Option<ServiceReference>,
    /// Base64 of the PEM certificates to trust; the JSON form of Go's `[]byte`.
    pub ca_bundle: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServiceReference {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    pub path: Option<String>,
    pub port: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    operations: Vec<String>,
    #[serde(default)]
    api_groups: Vec<String>,
    #[serde(default)]
    api_versions: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    scope: Option<String>,
}

/// A body whose fields have the wrong JSON types cannot be decoded, as on a real
/// server (400 rather than 422).
pub fn check_types(obj: &Value) -> Result<(), serde_json::Error> {
    Configuration::deserialize(obj).map(drop)
}

/// Fills the fields kube-apiserver defaults on every write, so that what is stored
/// (and shown to clients) is what a real server shows.
pub fn default(obj: &mut Value) {
    fn or_default(m: &mut serde_json::Map<String, Value>, k: &str, v: Value) {
        if m.get(k).is_none_or(Value::is_null) {
            m.insert(k.into(), v);
        }
    }
    let hooks = obj.get_mut("webhooks").and_then(Value::as_array_mut);
    for hook in hooks.into_iter().flatten().filter_map(Value::as_object_mut) {
        or_default(hook, "failurePolicy", json!("Fail"));
        or_default(hook, "matchPolicy", json!("Equivalent"));
        or_default(hook, "namespaceSelector", json!({}));
        or_default(hook, "objectSelector", json!({}));
        or_default(hook, "timeoutSeconds", json!(10));
        or_default(hook, "reinvocationPolicy", json!("Never"));
        let rules = hook.get_mut("rules").and_then(Value::as_array_mut);
        for rule in rules.into_iter().flatten().filter_map(Value::as_object_mut) {
            or_default(rule, "scope", json!("*"));
        }
        if let Some(svc) = hook
            .get_mut("clientConfig")
            .and_then(|c| c.get_mut("service"))
            .and_then(Value::as_object_mut)
        {
            or_default(svc, "port", json!(443));
        }
    }
}

fn not_supported(field: String, value: &str, supported: &[&str]) -> Cause {
    let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
    Cause::new(
        "FieldValueNotSupported",
        field,
        format!(
            "Unsupported value: \"{value}\": supported values: {}",
            list.join(", ")
        ),
    )
}

fn check_one_of(c: &mut Vec<Cause>, field: String, value: Option<&str>, supported: &[&str]) {
    if let Some(v) = value
        && !supported.contains(&v)
    {
        c.push(not_supported(field, v, supported));
    }
}

fn validate_rule(r: &Rule, at: &str, c: &mut Vec<Cause>) {
    const OPERATIONS: &[&str] = &["*", "CONNECT", "CREATE", "DELETE", "UPDATE"];
    if r.operations.is_empty() {
        c.push(Cause::required(format!("{at}.operations")));
    }
    for (i, op) in r.operations.iter().enumerate() {
        check_one_of(c, format!("{at}.operations[{i}]"), Some(op), OPERATIONS);
    }
    for (field, list) in [
        ("apiGroups", &r.api_groups),
        ("apiVersions", &r.api_versions),
        ("resources", &r.resources),
    ] {
        if list.is_empty() {
            c.push(Cause::required(format!("{at}.{field}")));
        }
    }
    check_one_of(
        c,
        format!("{at}.scope"),
        r.scope.as_deref(),
        &["*", "Cluster", "Namespaced"],
    );
}

fn validate_client_config(cc: &ClientConfig, at: &str, c: &mut Vec<Cause>) {
    match (&cc.url, &cc.service) {
        (Some(url), None) => {
            let field = format!("{at}.clientConfig.url");
            if !url.starts_with("https://") {
                c.push(Cause::invalid(
                    field,
                    format!("Invalid value: \"{url}\": 'https' is the only allowed URL scheme"),
                ));
            } else if url.contains('?') {
                c.push(Cause::invalid(
                    field,
                    format!("Invalid value: \"{url}\": query parameters are not allowed"),
                ));
            }
        }
        (None, Some(svc)) => {
            for (field, v) in [("name", &svc.name), ("namespace", &svc.namespace)] {
                if v.is_empty() {
                    c.push(Cause::required(format!(
                        "{at}.clientConfig.service.{field}"
                    )));
                }
            }
        }
        _ => c.push(Cause::new(
            "FieldValueRequired",
            format!("{at}.clientConfig"),
            "Required value: exactly one of url or service is required",
        )),
    }
}

/// The validation kube-apiserver applies that is cheap to reproduce: names, enums,
/// ranges, selectors, client config and review versions (not CEL match conditions).
pub fn validate(obj: &Value, c: &mut Vec<Cause>) {
    let Ok(cfg) = Configuration::deserialize(obj) else {
        return;
    };
    let mut names = BTreeSet::new();
    for (i, h) in cfg.webhooks.iter().enumerate() {
        let at = format!("webhooks[{i}]");
        let name_field = format!("{at}.name");
        if h.name.is_empty() {
            c.push(Cause::required(name_field));
        } else if !is_dns_subdomain(&h.name) {
            c.push(Cause::invalid(
                name_field,
                format!(
                    "Invalid value: \"{}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters",
                    h.name
                ),
            ));
        } else if h.name.split('.').count() < 3 {
            c.push(Cause::invalid(
                name_field,
                format!(
                    "Invalid value: \"{}\": should be a domain with at least three segments separated by dots",
                    h.name
                ),
            ));
        } else if !names.insert(h.name.as_str()) {
            c.push(Cause::new(
                "FieldValueDuplicate",
                name_field,
                format!("Duplicate value: \"{}\"", h.name),
            ));
        }
        for (j, r) in h.rules.iter().enumerate() {
            validate_rule(r, &format!("{at}.rules[{j}]"), c);
        }
        check_one_of(
            c,
            format!("{at}.failurePolicy"),
            h.failure_policy.as_deref(),
            &["Fail", "Ignore"],
        );
        check_one_of(
            c,
            format!("{at}.matchPolicy"),
            h.match_policy.as_deref(),
            &["Equivalent", "Exact"],
        );
        check_one_of(
            c,
            format!("{at}.reinvocationPolicy"),
            h.reinvocation_policy.as_deref(),
            &["IfNeeded", "Never"],
        );
        match h.side_effects.as_deref() {
            None => c.push(Cause::new(
                "FieldValueRequired",
                format!("{at}.sideEffects"),
                "Required value: must specify one of None, NoneOnDryRun",
            )),
            Some(s) => check_one_of(
                c,
                format!("{at}.sideEffects"),
                Some(s),
                &["None", "NoneOnDryRun"],
            ),
        }
        if let Some(t) = h.timeout_seconds
            && !(1..=30).contains(&t)
        {
            c.push(Cause::invalid(
                format!("{at}.timeoutSeconds"),
                format!("Invalid value: {t}: the timeout value must be between 1 and 30 seconds"),
            ));
        }
        for (field, sel) in [
            ("namespaceSelector", &h.namespace_selector),
            ("objectSelector", &h.object_selector),
        ] {
            if let Some(Err(e)) = sel
                .as_ref()
                .map(|s| LabelSelector::from_json(s, &format!("{at}.{field}")))
            {
                c.push(e);
            }
        }
        validate_client_config(&h.client_config, &at, c);
        let versions = format!("{at}.admissionReviewVersions");
        if h.admission_review_versions.is_empty() {
            c.push(Cause::new(
                "FieldValueRequired",
                versions,
                "Required value: must specify one of v1, v1beta1",
            ));
        } else if review_version(&h.admission_review_versions).is_none() {
            c.push(Cause::invalid(
                versions,
                format!(
                    "Invalid value: {:?}: must include at least one of v1, v1beta1",
                    h.admission_review_versions
                ),
            ));
        }
    }
}

/// The first AdmissionReview version in the webhook's preference list that the
/// server speaks: both have the same shape.
fn review_version(versions: &[String]) -> Option<&str> {
    versions
        .iter()
        .map(String::as_str)
        .find(|v| *v == "v1" || *v == "v1beta1")
}

/// One webhook of a stored configuration, ready to be matched and called.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub configuration: String,
    pub name: String,
    pub client: ClientConfig,
    rules: Vec<Rule>,
    /// `failurePolicy: Ignore`: a failed call lets the request through.
    pub ignore_failures: bool,
    pub timeout: Duration,
    namespace_selector: LabelSelector,
    object_selector: LabelSelector,
    /// `v1` or `v1beta1`: the AdmissionReview apiVersion to send.
    pub review_version: String,
}

/// Every webhook of `configs` (stored, hence defaulted and valid), in the order a
/// real server calls them: by configuration name, then as listed.
pub fn webhooks(configs: &[Value]) -> Vec<Webhook> {
    let mut out = Vec::new();
    for cfg in configs
        .iter()
        .filter_map(|c| Configuration::deserialize(c).ok())
    {
        for h in cfg.webhooks {
            let selector = |s: &Option<Value>| {
                s.as_ref()
                    .and_then(|s| LabelSelector::from_json(s, "").ok())
                    .unwrap_or_default()
            };
            out.push(Webhook {
                configuration: cfg.metadata.name.clone(),
                namespace_selector: selector(&h.namespace_selector),
                object_selector: selector(&h.object_selector),
                review_version: review_version(&h.admission_review_versions)
                    .unwrap_or("v1")
                    .to_string(),
                name: h.name,
                client: h.client_config,
                rules: h.rules,
                ignore_failures: h.failure_policy.as_deref() == Some("Ignore"),
                timeout: Duration::from_secs(h.timeout_seconds.unwrap_or(10).clamp(1, 30) as u64),
            });
        }
    }
    out
}

impl Webhook {
    /// Does any rule cover `operation` on this type? A resource entry `x/y` names
    /// subresource `y` of `x`; `*` stands for any, and `x/*` covers `x` itself.
    pub fn covers(&self, operation: &str, ti: &TypeInfo) -> bool {
        let listed = |list: &[String], v: &str| list.iter().any(|x| x == "*" || x == v);
        self.rules.iter().any(|r| {
            let resource = r.resources.iter().any(|entry| {
                let (res, sub) = entry.split_once('/').unwrap_or((entry, ""));
                (res == "*" || res == ti.plural) && (sub == "*" || sub.is_empty())
            });
            let scope = match r.scope.as_deref() {
                Some("Namespaced") => ti.namespaced,
                Some("Cluster") => !ti.namespaced,
                _ => true,
            };
            listed(&r.operations, operation)
                && listed(&r.api_groups, &ti.group)
                && listed(&r.api_versions, &ti.version)
                && resource
                && scope
        })
    }

    /// Does `namespaceSelector` select the request's namespace object?
    pub fn selects_namespace(&self, namespace: &Value) -> bool {
        self.namespace_selector.matches(namespace)
    }

    /// Does `objectSelector` select the new object or, on UPDATE, the old one?
    pub fn selects_object(&self, obj: &Value, old: Option<&Value>) -> bool {
        self.object_selector.matches(obj) || old.is_some_and(|o| self.object_selector.matches(o))
    }
}
