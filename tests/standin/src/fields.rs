//! Field ownership (`managedFields`) and server-side apply, at the granularity of
//! leaves: scalars and lists (lists are atomic), inside nested maps.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// A field path, e.g. `["metadata", "labels", "app"]`.
pub type FieldPath = Vec<String>;

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: String,
    pub paths: BTreeSet<FieldPath>,
}

/// A field another manager owns with a different value.
#[derive(Debug, Clone)]
pub struct Conflict {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub path: FieldPath,
}

const SYSTEM_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "generateName",
];

/// The leaves of an object, skipping `apiVersion`, `kind` and system metadata.
pub fn leaves(obj: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    if let Value::Object(m) = obj {
        for (k, v) in m {
            if k == "apiVersion" || k == "kind" {
                continue;
            }
            if k == "metadata" {
                if let Value::Object(mm) = v {
                    for (mk, mv) in mm {
                        if !SYSTEM_META.contains(&mk.as_str()) {
                            walk(mv, vec!["metadata".into(), mk.clone()], &mut out);
                        }
                    }
                }
                continue;
            }
            walk(v, vec![k.clone()], &mut out);
        }
    }
    out
}

fn walk(v: &Value, path: FieldPath, out: &mut BTreeSet<FieldPath>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                let mut p = path.clone();
                p.push(k.clone());
                walk(c, p, out);
            }
        }
        Value::Null => {}
        _ => {
            out.insert(path);
        }
    }
}

pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |cur, k| cur.get(k))
}

fn set_at(obj: &mut Value, path: &[String], value: Value) {
    let mut cur = obj;
    for k in &path[..path.len() - 1] {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let m = cur.as_object_mut().expect("object");
        cur = m
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.insert(path[path.len() - 1].clone(), value);
    }
}

fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for k in parents {
        match cur.get_mut(k) {
            Some(c) => cur = c,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

fn related(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Renders a path the way conflict messages do: `.data..dockerconfigjson`.
pub fn render(path: &[String]) -> String {
    path.iter().map(|p| format!(".{p}")).collect()
}

fn to_fields_v1(paths: &BTreeSet<FieldPath>) -> Value {
    let mut root = Value::Object(Map::new());
    for p in paths {
        let mut cur = &mut root;
        for k in p {
            let m = cur.as_object_mut().expect("object");
            cur = m
                .entry(format!("f:{k}"))
                .or_insert_with(|| Value::Object(Map::new()));
        }
    }
    root
}

fn from_fields_v1(v: &Value, prefix: FieldPath, out: &mut BTreeSet<FieldPath>) {
    let Value::Object(m) = v else { return };
    let children: Vec<_> = m.iter().filter(|(k, _)| k.starts_with("f:")).collect();
    if children.is_empty() {
        if !prefix.is_empty() {
            out.insert(prefix);
        }
        return;
    }
    for (k, c) in children {
        let mut p = prefix.clone();
        p.push(k[2..].to_string());
        from_fields_v1(c, p, out);
    }
}

/// Reads `metadata.managedFields`.
pub fn read(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .map(|e| {
            let s = |k: &str| {
                e.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let mut paths = BTreeSet::new();
            if let Some(f) = e.get("fieldsV1") {
                from_fields_v1(f, Vec::new(), &mut paths);
            }
            Entry {
                manager: s("manager"),
                operation: s("operation"),
                api_version: s("apiVersion"),
                time: s("time"),
                subresource: s("subresource"),
                paths,
            }
        })
        .collect()
}

/// Writes `metadata.managedFields` (removed when there are no entries).
pub fn write(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.paths.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&e.paths),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn entry_mut<'a>(
    entries: &'a mut Vec<Entry>,
    manager: &str,
    op: &str,
    api_version: &str,
    sub: &str,
    now: &str,
) -> &'a mut Entry {
    if let Some(i) = entries
        .iter()
        .position(|e| e.manager == manager && e.operation == op && e.subresource == sub)
    {
        return &mut entries[i];
    }
    entries.push(Entry {
        manager: manager.into(),
        operation: op.into(),
        api_version: api_version.into(),
        time: now.into(),
        subresource: sub.into(),
        paths: BTreeSet::new(),
    });
    entries.last_mut().expect("just pushed")
}

/// Records a non-apply write by `manager`: changed leaves move to it, removed leaves
/// are dropped from everyone.
pub fn track_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    sub: &str,
    now: &str,
) {
    let mut entries = old.map(read).unwrap_or_default();
    let new_leaves = leaves(new);
    let changed: Vec<FieldPath> = new_leaves
        .iter()
        .filter(|p| old.and_then(|o| value_at(o, p)) != value_at(new, p))
        .cloned()
        .collect();
    for e in entries.iter_mut() {
        e.paths.retain(|p| new_leaves.iter().any(|n| related(n, p)));
        e.paths.retain(|p| !changed.iter().any(|c| related(c, p)));
    }
    if !changed.is_empty() {
        let e = entry_mut(&mut entries, manager, "Update", api_version, sub, now);
        e.time = now.into();
        e.paths.extend(changed);
    }
    entries.retain(|e| !e.paths.is_empty());
    write(new, &entries);
}

/// Server-side apply of `config` by `manager` onto `current` (`Null` when creating).
pub fn apply(
    current: &Value,
    config: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    sub: &str,
    now: &str,
) -> Result<Value, Vec<Conflict>> {
    let mut entries = read(current);
    let applied = leaves(config);
    let mut conflicts = Vec::new();
    for p in &applied {
        for e in &entries {
            if e.manager == manager && e.operation == "Apply" {
                continue;
            }
            if e.paths.iter().any(|o| related(o, p)) && value_at(current, p) != value_at(config, p)
            {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    operation: e.operation.clone(),
                    api_version: e.api_version.clone(),
                    path: p.clone(),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    for e in entries.iter_mut() {
        if !(e.manager == manager && e.operation == "Apply") {
            e.paths.retain(|o| {
                !applied
                    .iter()
                    .any(|p| related(o, p) && value_at(current, p) != value_at(config, p))
            });
        }
    }
    let mut result = current.clone();
    let prev: BTreeSet<FieldPath> = entries
        .iter()
        .find(|e| e.manager == manager && e.operation == "Apply" && e.subresource == sub)
        .map(|e| e.paths.clone())
        .unwrap_or_default();
    for p in prev.difference(&applied) {
        let others = entries.iter().any(|e| {
            !(e.manager == manager && e.operation == "Apply")
                && e.paths.iter().any(|o| related(o, p))
        });
        if !others {
            remove_at(&mut result, p);
        }
    }
    for p in &applied {
        if let Some(v) = value_at(config, p) {
            set_at(&mut result, p, v.clone());
        }
    }
    let e = entry_mut(&mut entries, manager, "Apply", api_version, sub, now);
    if e.paths != applied {
        e.time = now.into();
    }
    e.paths = applied;
    entries.retain(|e| !e.paths.is_empty());
    write(&mut result, &entries);
    Ok(result)
}

/// The 409 message for apply conflicts.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    let who = |c: &Conflict| {
        if c.operation == "Update" {
            format!("conflict with \"{}\" using {}", c.manager, c.api_version)
        } else {
            format!("conflict with \"{}\"", c.manager)
        }
    };
    if conflicts.len() == 1 {
        format!(
            "Apply failed with 1 conflict: {}: {}",
            who(&conflicts[0]),
            render(&conflicts[0].path)
        )
    } else {
        let lines: Vec<String> = conflicts
            .iter()
            .map(|c| format!("{}: {}", who(c), render(&c.path)))
            .collect();
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    }
}

/// Managed fields compared without their timestamps (for no-op detection).
pub fn strip_times(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(list) = o
        .pointer_mut("/metadata/managedFields")
        .and_then(Value::as_array_mut)
    {
        for e in list {
            if let Some(m) = e.as_object_mut() {
                m.remove("time");
            }
        }
    }
    o
}
