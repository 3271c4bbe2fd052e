//! YAML that kubectl and Helm read as it was meant. They resolve plain
//! scalars by YAML 1.1 rules, where `Off`, `yes` and `y` are booleans;
//! serde_yaml writes by YAML 1.2 rules and leaves those bare. yaml-rust2's
//! emitter quotes them, and every number-like string.

use serde_json::Value;
use yaml_rust2::yaml::{Hash, Yaml};
use yaml_rust2::{EmitError, YamlEmitter};

fn to_yaml(v: &Value) -> Yaml {
    match v {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => Yaml::Array(items.iter().map(to_yaml).collect()),
        Value::Object(map) => Yaml::Hash(
            map.iter()
                .map(|(k, v)| (Yaml::String(k.clone()), to_yaml(v)))
                .collect::<Hash>(),
        ),
    }
}

/// One YAML document, multi-line strings as literal blocks.
pub fn to_string(v: &Value) -> Result<String, EmitError> {
    let mut out = String::new();
    let mut emitter = YamlEmitter::new(&mut out);
    emitter.multiline_strings(true);
    emitter.dump(&to_yaml(v))?;
    // The emitter opens with a document marker; a file of one document, as
    // serde_yaml writes it, needs none.
    let mut text = out.strip_prefix("---\n").unwrap_or(&out).to_owned();
    text.push('\n');
    Ok(text)
}
