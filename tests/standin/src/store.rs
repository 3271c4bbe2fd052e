//! The stored state: typed-by-name, untyped-by-value objects, one global
//! resourceVersion, and the full event history watches replay from.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::{AdmissionCall, Fault, RequestRecord};

/// What the server knows about one resource type.
#[derive(Debug, Clone)]
pub struct TypeInfo {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub status_subresource: bool,
    /// The CRD's `openAPIV3Schema` for custom resources.
    pub schema: Option<Value>,
    pub custom: bool,
    pub short_names: Vec<String>,
    /// Watches from an RV below this answer 410 (a CRD's watch cache starts at its creation).
    pub cache_start: u64,
}

impl TypeInfo {
    pub fn builtin(group: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        TypeInfo {
            group: group.into(),
            version: "v1".into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            namespaced,
            status_subresource: plural == "namespaces" || plural == "customresourcedefinitions",
            schema: None,
            custom: false,
            short_names: Vec::new(),
            cache_start: 0,
        }
    }
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// Where objects live; both Event APIs share core/v1 storage.
    pub fn storage(&self) -> String {
        if self.plural == "events" {
            "events".into()
        } else {
            crate::status::qualified(&self.plural, &self.group)
        }
    }
    pub fn has_generation(&self) -> bool {
        self.custom || self.plural == "customresourcedefinitions"
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

#[derive(Debug, Clone)]
pub struct HistoryEvent {
    pub storage: String,
    pub rv: u64,
    pub kind: EventType,
    pub obj: Value,
    pub prev: Option<Value>,
}

pub type Key = (String, String);

#[derive(Debug, Default)]
pub struct State {
    pub rv: u64,
    pub types: Vec<TypeInfo>,
    pub objects: BTreeMap<String, BTreeMap<Key, Value>>,
    pub history: Vec<HistoryEvent>,
    /// Watch-cache floor: watches and `Exact` lists from an older RV are expired.
    pub watch_floor: u64,
    /// etcd compaction: `Exact` lists and continue tokens older than this are expired.
    pub compacted: u64,
    /// Bumped by `expire_watches`; open watches end with a 410 when it moves.
    pub watch_epoch: u64,
    pub faults: Vec<Fault>,
    pub requests: Vec<RequestRecord>,
    pub admission_calls: Vec<AdmissionCall>,
    pub uid_counter: u64,
}

pub fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn key_of(obj: &Value) -> Key {
    let s = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (s("/metadata/namespace"), s("/metadata/name"))
}

pub fn rv_of(obj: &Value) -> Option<u64> {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
}

pub fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), json!(rv.to_string()));
    }
}

impl State {
    pub fn new() -> Self {
        let mut s = State::default();
        for (g, p, k, n) in [
            ("", "namespaces", "Namespace", false),
            ("", "secrets", "Secret", true),
            ("", "serviceaccounts", "ServiceAccount", true),
            ("", "configmaps", "ConfigMap", true),
            // Stored as given, without a pod's validation: the controller
            // only reads pods, to diagnose failed pulls.
            ("", "pods", "Pod", true),
            ("", "events", "Event", true),
            ("events.k8s.io", "events", "Event", true),
            ("coordination.k8s.io", "leases", "Lease", true),
            (
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                "CustomResourceDefinition",
                false,
            ),
            (
                "admissionregistration.k8s.io",
                "mutatingwebhookconfigurations",
                "MutatingWebhookConfiguration",
                false,
            ),
        ] {
            s.types.push(TypeInfo::builtin(g, p, k, n));
        }
        s.types
            .iter_mut()
            .find(|t| t.plural == "serviceaccounts")
            .expect("sa")
            .short_names = vec!["sa".into()];
        s.types
            .iter_mut()
            .find(|t| t.plural == "namespaces")
            .expect("ns")
            .short_names = vec!["ns".into()];
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({
                "kind": "Namespace", "apiVersion": "v1",
                "metadata": {"name": ns, "uid": s.uid(), "creationTimestamp": now(),
                             "labels": {"kubernetes.io/metadata.name": ns}},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"},
            });
            s.insert("namespaces", obj);
        }
        s
    }

    pub fn uid(&mut self) -> String {
        self.uid_counter += 1;
        let t = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64;
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (t >> 16) as u32,
            (t & 0xffff) as u16,
            self.uid_counter & 0xfff,
            (t >> 48) & 0xfff,
            self.uid_counter.wrapping_mul(0x9e37_79b9_7f4a) & 0xffff_ffff_ffff
        )
    }

    pub fn find_type(&self, group: &str, version: &str, plural: &str) -> Option<TypeInfo> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    pub fn get(&self, storage: &str, key: &Key) -> Option<&Value> {
        self.objects.get(storage).and_then(|m| m.get(key))
    }

    fn record(&mut self, storage: &str, kind: EventType, obj: Value, prev: Option<Value>) {
        self.history.push(HistoryEvent {
            storage: storage.into(),
            rv: self.rv,
            kind,
            obj,
            prev,
        });
    }

    /// Stores a new object with a fresh RV and records ADDED.
    pub fn insert(&mut self, storage: &str, mut obj: Value) -> Value {
        self.rv += 1;
        set_rv(&mut obj, self.rv);
        let key = key_of(&obj);
        self.objects
            .entry(storage.into())
            .or_default()
            .insert(key, obj.clone());
        self.record(storage, EventType::Added, obj.clone(), None);
        obj
    }

    /// Replaces an object with a fresh RV and records MODIFIED.
    pub fn replace(&mut self, storage: &str, mut obj: Value) -> Value {
        self.rv += 1;
        set_rv(&mut obj, self.rv);
        let key = key_of(&obj);
        let prev = self
            .objects
            .entry(storage.into())
            .or_default()
            .insert(key, obj.clone());
        self.record(storage, EventType::Modified, obj.clone(), prev);
        obj
    }

    /// Removes an object; the DELETED event carries its last state with a new RV.
    pub fn remove(&mut self, storage: &str, key: &Key) -> Option<Value> {
        let mut obj = self.objects.get_mut(storage)?.remove(key)?;
        let prev = obj.clone();
        self.rv += 1;
        set_rv(&mut obj, self.rv);
        self.record(storage, EventType::Deleted, obj.clone(), Some(prev.clone()));
        Some(prev)
    }

    /// All objects of a storage, sorted by (namespace, name), as of `at` (or now).
    pub fn snapshot(&self, storage: &str, at: Option<u64>) -> Vec<Value> {
        match at {
            None => self
                .objects
                .get(storage)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default(),
            Some(rv) => {
                let mut m: BTreeMap<Key, Value> = BTreeMap::new();
                for e in self
                    .history
                    .iter()
                    .filter(|e| e.storage == storage && e.rv <= rv)
                {
                    let k = key_of(&e.obj);
                    if e.kind == EventType::Deleted {
                        m.remove(&k);
                    } else {
                        m.insert(k, e.obj.clone());
                    }
                }
                m.into_values().collect()
            }
        }
    }

    pub fn namespace_phase(&self, ns: &str) -> Option<String> {
        let o = self.get("namespaces", &(String::new(), ns.to_string()))?;
        Some(
            o.pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("Active")
                .to_string(),
        )
    }
}
