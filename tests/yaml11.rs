//! Every YAML file the project ships or prints means the same to kubectl and
//! Helm (YAML 1.1) as to the Rust parser (YAML 1.2). A bare `Off` in the
//! CRD's enum once read as `false` to kubectl, so `verify: "Off"` was
//! refused by the API server after a plain `kubectl apply`.

use regbridge_test_support as support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{kubectl_yaml, repo};

/// A YAML 1.2 document as JSON, with what JSON cannot hold written the way
/// `tests/yaml11.py` writes it.
fn as_json(v: serde_yaml::Value) -> Value {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => serde_json::to_value(n).expect("a YAML number is a JSON number"),
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => items.into_iter().map(as_json).collect(),
        Y::Mapping(map) => map
            .into_iter()
            .map(|(k, v)| {
                let key = match k {
                    Y::String(s) => s,
                    Y::Bool(b) => format!("!!bool {}", if b { "True" } else { "False" }),
                    Y::Number(n) if n.is_f64() => format!("!!float {n}"),
                    Y::Number(n) => format!("!!int {n}"),
                    Y::Null => "!!NoneType None".into(),
                    other => format!("!!unsupported {other:?}"),
                };
                (key, as_json(v))
            })
            .collect::<serde_json::Map<_, _>>()
            .into(),
        Y::Tagged(t) => Value::String(format!("!!tagged {t:?}")),
    }
}

fn yaml12(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| as_json(serde::Deserialize::deserialize(doc).expect("valid YAML")))
        .collect()
}

/// Paths of the leaves where two documents differ, with both values.
fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                differences(
                    &format!("{path}.{key}"),
                    x.get(key).unwrap_or(&Value::Null),
                    y.get(key).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                differences(&format!("{path}[{i}]"), p, q, out);
            }
        }
        _ if a != b => out.push(format!("{path}: YAML 1.2 reads {a}, YAML 1.1 reads {b}")),
        _ => {}
    }
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        // Helm templates are checked as rendered, below.
        if path.is_dir() && !path.ends_with("templates") {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// The ```yaml blocks of the README, each written to its own file.
fn readme_snippets(dir: &Path) -> Vec<PathBuf> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut files = Vec::new();
    let mut block: Option<String> = None;
    for line in readme.lines() {
        match (&mut block, line.trim_start()) {
            (None, l) if l.starts_with("```yaml") || l.starts_with("```yml") => {
                block = Some(String::new())
            }
            (Some(text), l) if l.starts_with("```") => {
                let path = dir.join(format!("readme-{}.yaml", files.len()));
                std::fs::write(&path, &text).unwrap();
                files.push(path);
                block = None;
            }
            (Some(text), _) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    files
}

/// The chart as Helm rendered it (tests/run.sh check_chart), when present.
fn chart_renders() -> Vec<PathBuf> {
    let dir = std::env::var_os("REGBRIDGE_CHART_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("tests/.peers/chart"));
    let mut files = Vec::new();
    if dir.is_dir() {
        yaml_files(&dir, &mut files);
    }
    assert!(
        !files.is_empty() || std::env::var("REGBRIDGE_REQUIRE_PEERS").as_deref() != Ok("1"),
        "no chart renders in {}; run `tests/run.sh check_chart` first",
        dir.display()
    );
    files
}

#[test]
fn every_shipped_yaml_means_the_same_under_yaml_1_1_and_1_2() {
    let scratch = std::env::temp_dir().join(format!("regbridge-yaml11-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let printed = scratch.join("regbridge-crd.yaml");
    std::fs::write(&printed, regbridge::api::crd::crd_yaml()).unwrap();

    let mut files = vec![printed];
    yaml_files(&repo().join("deploy"), &mut files);
    let snippets = readme_snippets(&scratch);
    assert!(!snippets.is_empty(), "the README has YAML snippets");
    files.extend(snippets);
    files.extend(chart_renders());

    let yaml11 = kubectl_yaml(&files);
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let old = &yaml11[&file.display().to_string()];
        let new = Value::Array(yaml12(&text));
        let mut found = Vec::new();
        differences("", &new, old, &mut found);
        problems.extend(
            found
                .into_iter()
                .map(|d| format!("{}: {d}", file.display())),
        );
    }
    std::fs::remove_dir_all(&scratch).ok();
    assert!(
        problems.is_empty(),
        "quote these values so kubectl and Helm read them as written:\n{}",
        problems.join("\n")
    );
    assert!(files.len() > 20, "checked {} files", files.len());
}

/// The checker itself: values YAML 1.1 reads differently are found.
#[test]
fn the_checker_finds_what_yaml_1_1_reads_differently() {
    let dir = std::env::temp_dir().join(format!("regbridge-yaml11-self-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("doc.yaml");
    let text = "a: Off\nb: y\nc: 0755\nd: 2026-12-06\ne: 1_000\nf: 'Off'\ng: \"0755\"\n";
    std::fs::write(&file, text).unwrap();
    let yaml11 = kubectl_yaml(std::slice::from_ref(&file));
    let mut found = Vec::new();
    differences(
        "",
        &Value::Array(yaml12(text)),
        &yaml11[&file.display().to_string()],
        &mut found,
    );
    std::fs::remove_dir_all(&dir).ok();
    let keys: Vec<&str> = found.iter().map(|d| d.split(':').next().unwrap()).collect();
    assert_eq!(
        keys,
        ["[0].a", "[0].b", "[0].c", "[0].d", "[0].e"],
        "{found:#?}"
    );
}
