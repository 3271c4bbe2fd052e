//! The checked-in CRD and examples stay true to the code.

use std::path::{Path, PathBuf};

use regbridge::api::crd::{ClusterPullSecret, crd_yaml};

fn repo() -> PathBuf {
    // Read at run time: a binary built in another checkout sharing the
    // target dir must still look in this one.
    PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
}

#[test]
fn checked_in_crd_is_identical_to_regbridge_crd() {
    let path = repo().join("deploy/crds/clusterpullsecret.yaml");
    let on_disk =
        std::fs::read_to_string(&path).expect("deploy/crds/clusterpullsecret.yaml exists");
    assert!(
        on_disk == crd_yaml(),
        "{} is stale: regenerate it with `cargo run -- crd > {}`",
        path.display(),
        path.display()
    );
}

#[test]
fn chart_crd_is_identical_to_the_checked_in_crd() {
    let chart = repo().join("deploy/helm/regbridge/crds/clusterpullsecret.yaml");
    let on_disk = std::fs::read_to_string(&chart).expect("the chart's CRD exists");
    assert!(
        on_disk == crd_yaml(),
        "{} is stale: regenerate it with `cargo run -- crd > {}`",
        chart.display(),
        chart.display()
    );
}

#[test]
fn chart_app_version_is_the_crate_version() {
    let text = std::fs::read_to_string(repo().join("deploy/helm/regbridge/Chart.yaml")).unwrap();
    let chart: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "Chart.yaml appVersion follows Cargo.toml's version"
    );
    let text = std::fs::read_to_string(repo().join("deploy/helm/regbridge/values.yaml")).unwrap();
    let values: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(
        values["image"]["tag"], "",
        "the image tag defaults to appVersion"
    );
}

fn example_resources(dir: &Path) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            if value.get("kind").and_then(|k| k.as_str()) == Some("ClusterPullSecret") {
                out.push((path.display().to_string(), value));
            }
        }
    }
    out
}

#[test]
fn every_example_resource_parses_as_a_cluster_pull_secret() {
    let found = example_resources(&repo().join("deploy/examples"));
    assert!(found.len() >= 3, "examples exist: {}", found.len());
    for (path, value) in found {
        let parsed: Result<ClusterPullSecret, _> = serde_json::from_value(value);
        assert!(parsed.is_ok(), "{path}: {:?}", parsed.err());
        let cps = parsed.unwrap();
        assert!(
            regbridge::cache::selection::Selection::compile(&cps.spec).is_ok(),
            "{path}: selection compiles"
        );
    }
}

#[tokio::test]
async fn readme_mint_command_works_on_the_shipped_example() {
    let composed = regbridge::mint::mint(
        &repo().join("deploy/examples/mint-static.yaml"),
        &regbridge_providers::Trust::system(),
    )
    .await
    .expect("the README's first command succeeds");
    assert_eq!(composed.hosts.len(), 2);
    let report = regbridge::mint::render_redacted(&composed);
    assert!(!report.contains("example-password-not-real"));
    assert!(!report.contains("not-a-real-secret"));
}

#[test]
fn crd_carries_cel_rules_for_what_the_schema_cannot_say() {
    let crd = crd_yaml();
    for rule in [
        "has(self.secretRef) != has(self.file)",
        "!has(self.identity) || has(self.roleArn)",
        "!has(self.externalId) || has(self.roleArn)",
        "!has(self.identity) || !has(self.keySecretRef)",
        "self.audience.startsWith('//') || self.audience.startsWith('identitynamespace:')",
        "has(self.registry) != (has(self.registries) && size(self.registries) > 0)",
        "!has(self.identity) || has(self.clientId)",
    ] {
        assert!(crd.contains(rule), "missing CEL rule {rule}");
    }
}
