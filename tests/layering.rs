//! The architecture as a test: `src/`'s folders are layers, and every
//! dependency points down. Reads the source itself (every `crate::` and
//! `super::` path outside test modules), so a new upward import, or two
//! modules that import each other, fails here before it settles in.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Folders from the bottom up; a folder may use only those before it.
/// `reconcile` and `webhook` share a rank: neither may use the other.
const LAYERS: &[(&str, u8)] = &[
    ("api", 0),
    ("ops", 1),
    ("cache", 2),
    ("decide", 3),
    ("io", 4),
    ("reconcile", 5),
    ("webhook", 5),
];
/// Top-level files serve the binary's commands and may use any layer.
const TOP: u8 = 6;

fn rank(module: &str) -> u8 {
    let folder = module.split("::").next().unwrap_or_default();
    LAYERS
        .iter()
        .find(|(name, _)| *name == folder)
        .map_or(TOP, |(_, r)| *r)
}

/// Every `.rs` file under `dir`, as module paths (`decide::status`,
/// `reconcile` for `reconcile/mod.rs`) to file paths.
fn modules(root: &Path, dir: &Path, out: &mut BTreeMap<String, PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            modules(root, &path, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = path.strip_prefix(root).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        out.insert(parts.join("::"), path);
    }
}

/// The source without its test modules (by convention, last in a file)
/// and without comments.
fn production_code(text: &str) -> String {
    let end = text.find("#[cfg(test)]").unwrap_or(text.len());
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths after each `crate::` or `super::` in `code`, with `{a, b::c}`
/// groups expanded, e.g. `crate::decide::status::Verdict`.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    // A module's own children, named bare (`apply::run()`), are used too.
    let children: Vec<&str> = code
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            let l = l.strip_prefix("pub(crate) ").unwrap_or(l);
            l.strip_prefix("mod ")?.strip_suffix(';')
        })
        .collect();
    for child in children {
        let pattern = format!("{child}::");
        let mut rest = code;
        while let Some(i) = rest.find(&pattern) {
            let before = rest[..i].chars().last();
            rest = &rest[i..];
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                expand("self", rest, &mut out);
            }
            rest = &rest[pattern.len()..];
        }
    }
    for anchor in ["crate::", "super::", "self::"] {
        let mut rest = code;
        while let Some(i) = rest.find(anchor) {
            let before = rest[..i].chars().last();
            rest = &rest[i + anchor.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            expand(anchor.trim_end_matches("::"), rest, &mut out);
        }
    }
    out
}

fn expand(prefix: &str, rest: &str, out: &mut Vec<String>) {
    let ident: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
        .collect();
    let head = match ident.trim_end_matches(':') {
        "" => prefix.to_string(),
        ident => format!("{prefix}::{ident}"),
    };
    let after = &rest[ident.len()..];
    if (ident.is_empty() || ident.ends_with("::")) && after.starts_with('{') {
        let mut depth = 0;
        let mut end = 0;
        for (i, c) in after.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let inner = &after[1..end];
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&head, inner[start..i].trim(), out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&head, inner[start..].trim(), out);
    } else {
        out.push(head);
    }
}

/// The module a path lands in: its longest prefix that is a file module.
/// `super` is resolved against `from`, the module whose file holds it.
fn resolve(path: &str, from: &str, known: &BTreeMap<String, PathBuf>) -> String {
    let absolute = if let Some(rest) = path.strip_prefix("super") {
        // `super` is the parent of the module the file is: for `a/b.rs`
        // (`a::b`) that is `a`; for `a/mod.rs` (`a`) the crate root.
        let mut base: Vec<&str> = from.split("::").collect();
        base.pop();
        format!("crate::{}{rest}", base.join("::"))
    } else if let Some(rest) = path.strip_prefix("self") {
        format!("crate::{from}{rest}")
    } else {
        path.to_string()
    };
    let segments: Vec<&str> = absolute
        .trim_start_matches("crate")
        .trim_start_matches("::")
        .split("::")
        .filter(|s| !s.is_empty() && *s != "self")
        .collect();
    (0..=segments.len())
        .rev()
        .map(|n| segments[..n].join("::"))
        .find(|m| known.contains_key(m))
        .unwrap_or_default()
}

struct Graph {
    edges: BTreeMap<String, BTreeSet<String>>,
}

/// The import graph of the crate whose sources are in `dir`.
fn graph_of(dir: &str) -> Graph {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut known = BTreeMap::new();
    modules(&root, &root, &mut known);
    // The binary's own modules and test support are not layers.
    known.remove("fixtures");
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &known {
        let code = production_code(&fs::read_to_string(file).unwrap());
        let used = edges.entry(module.clone()).or_default();
        for p in paths(&code) {
            let target = resolve(&p, module, &known);
            if &target != module && !target.is_empty() {
                used.insert(target);
            }
        }
    }
    Graph { edges }
}

fn graph() -> Graph {
    graph_of("src")
}

#[test]
fn folders_only_depend_downwards() {
    let g = graph();
    assert!(
        g.edges.len() > 30,
        "the walk found only {} modules",
        g.edges.len()
    );
    let mut upward = Vec::new();
    for (from, targets) in &g.edges {
        let from_folder = from.split("::").next().unwrap();
        for to in targets {
            let to_folder = to.split("::").next().unwrap();
            if from_folder == to_folder || rank(from) == TOP {
                continue;
            }
            if rank(to) >= rank(from) {
                upward.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "dependencies that point up or sideways:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_module_depends_on_itself_through_others() {
    for dir in ["src", "providers/src"] {
        let cycles = cycles(&graph_of(dir));
        assert!(
            cycles.is_empty(),
            "import cycles in {dir}:\n{}",
            cycles.join("\n")
        );
    }
}

#[test]
fn providers_depend_on_the_trait_never_on_the_factory() {
    let g = graph_of("providers/src");
    assert!(
        g.edges.contains_key("aws::ecr"),
        "the walk found the providers"
    );
    let users: Vec<&String> = g
        .edges
        .iter()
        .filter(|(from, to)| from.as_str() != "lib" && to.contains("factory"))
        .map(|(from, _)| from)
        .collect();
    assert!(users.is_empty(), "modules that use the factory: {users:?}");
}

fn cycles(g: &Graph) -> Vec<String> {
    let mut cycles = Vec::new();
    for start in g.edges.keys() {
        // Depth-first from each module: can it reach itself?
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((at, trail)) = stack.pop() {
            for next in g.edges.get(&at).into_iter().flatten() {
                if next == start {
                    let mut cycle = trail.clone();
                    cycle.push(start.clone());
                    cycles.push(cycle.join(" -> "));
                } else if seen.insert(next.clone()) {
                    let mut t = trail.clone();
                    t.push(next.clone());
                    stack.push((next.clone(), t));
                }
            }
        }
    }
    cycles
}

#[test]
fn the_reader_sees_what_the_compiler_sees() {
    // The parser itself: groups, nesting, `super`, bare children, and word
    // boundaries.
    let code = "mod k;\nuse super::{x, y::Z};\nuse crate::a::{b, c::{D, e}};\n\
                let v = supercrate::z; super::f::G; k::run(); kk::x;";
    assert_eq!(
        paths(code),
        [
            "self::k::run",
            "crate::a::b",
            "crate::a::c::D",
            "crate::a::c::e",
            "super::x",
            "super::y::Z",
            "super::f::G"
        ]
    );
    let known: BTreeMap<String, PathBuf> = ["", "a", "a::c", "f", "r", "r::apply", "r::context"]
        .iter()
        .map(|m| (m.to_string(), PathBuf::new()))
        .collect();
    assert_eq!(resolve("crate::a::c::D", "x", &known), "a::c");
    assert_eq!(
        resolve("super::context::Context", "r::apply", &known),
        "r::context"
    );
    assert_eq!(resolve("super::Error", "r::apply", &known), "r");
    assert_eq!(resolve("super::f::G", "r", &known), "f");
    assert_eq!(resolve("self::apply::run", "r", &known), "r::apply");
    // An upward dependency is caught by rank.
    assert!(rank("io::writer") > rank("decide::distribute"));
    assert_eq!(rank("reconcile::apply"), rank("webhook"));
}
