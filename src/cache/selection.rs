//! Which namespaces and ServiceAccounts a `ClusterPullSecret` selects.
//! Compiled once per reconcile; a spec that does not compile is reported on
//! status and changes nothing already distributed.

use globset::{Glob, GlobSet, GlobSetBuilder};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::crd::ClusterPullSecretSpec;
use crate::cache::index::NamespaceView;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectionError {
    #[error("{field}: invalid glob {glob:?}: {reason}")]
    BadGlob {
        field: &'static str,
        glob: String,
        reason: String,
    },
    #[error("namespaces.selector: {0}")]
    BadSelector(String),
}

/// One compiled label requirement, with Kubernetes' semantics (`NotIn` and
/// `DoesNotExist` match a namespace without the key).
#[derive(Debug)]
enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, ns: &NamespaceView) -> bool {
        match self {
            Self::In(k, vs) => ns.label(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            Self::NotIn(k, vs) => ns.label(k).is_none_or(|v| !vs.iter().any(|x| x == v)),
            Self::Exists(k) => ns.label(k).is_some(),
            Self::DoesNotExist(k) => ns.label(k).is_none(),
        }
    }
}

fn compile_selector(selector: &LabelSelector) -> Result<Vec<Requirement>, SelectionError> {
    let mut out: Vec<Requirement> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| Requirement::In(k.clone(), vec![v.clone()]))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default();
        let bad = |why: &str| SelectionError::BadSelector(format!("key {:?}: {why}", e.key));
        out.push(match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => return Err(bad("In and NotIn need values")),
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(bad("Exists and DoesNotExist take no values"));
            }
            "In" => Requirement::In(e.key.clone(), values),
            "NotIn" => Requirement::NotIn(e.key.clone(), values),
            "Exists" => Requirement::Exists(e.key.clone()),
            "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
            other => return Err(bad(&format!("unknown operator {other:?}"))),
        });
    }
    Ok(out)
}

#[derive(Debug)]
pub struct Selection {
    labels: Vec<Requirement>,
    include: Option<GlobSet>,
    exclude: GlobSet,
    service_accounts: GlobSet,
}

impl Selection {
    pub fn compile(spec: &ClusterPullSecretSpec) -> Result<Self, SelectionError> {
        let ns = &spec.namespaces;
        let labels = match &ns.selector {
            Some(sel) => compile_selector(sel)?,
            None => Vec::new(),
        };
        let include = if ns.include.is_empty() {
            None
        } else {
            Some(globs("namespaces.include", &ns.include)?)
        };
        Ok(Self {
            labels,
            include,
            exclude: globs("namespaces.exclude", &ns.exclude)?,
            service_accounts: globs("serviceAccounts", &spec.service_accounts)?,
        })
    }

    /// Selects nothing: what a resource that is being deleted with an
    /// unparseable spec is planned with.
    pub fn nothing() -> Self {
        Self {
            labels: Vec::new(),
            include: Some(GlobSet::empty()),
            exclude: GlobSet::empty(),
            service_accounts: GlobSet::empty(),
        }
    }

    /// Whether the namespace gets the Secret. Terminating namespaces reject
    /// new objects, so they are never selected.
    pub fn selects_namespace(&self, ns: &NamespaceView) -> bool {
        !ns.terminating
            && !ns.excluded
            && self.labels.iter().all(|r| r.matches(ns))
            && self.include.as_ref().is_none_or(|g| g.is_match(&ns.name))
            && !self.exclude.is_match(&ns.name)
    }

    pub fn selects_service_account(&self, name: &str) -> bool {
        self.service_accounts.is_match(name)
    }
}

fn globs(field: &'static str, patterns: &[String]) -> Result<GlobSet, SelectionError> {
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        let glob = Glob::new(p).map_err(|e| SelectionError::BadGlob {
            field,
            glob: p.clone(),
            reason: e.kind().to_string(),
        })?;
        set.add(glob);
    }
    set.build().map_err(|e| SelectionError::BadGlob {
        field,
        glob: patterns.join(","),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::crd::NamespaceSelector;
    use crate::api::labels::EXCLUDE_ANNOTATION;
    use crate::fixtures::ns;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    fn spec(include: &[&str], exclude: &[&str], sas: &[&str]) -> ClusterPullSecretSpec {
        ClusterPullSecretSpec {
            secret_name: None,
            credentials: vec![],
            namespaces: NamespaceSelector {
                selector: None,
                include: include.iter().map(|s| s.to_string()).collect(),
                exclude: exclude.iter().map(|s| s.to_string()).collect(),
            },
            service_accounts: sas.iter().map(|s| s.to_string()).collect(),
            refresh_before: None,
            verify: Default::default(),
        }
    }

    #[test]
    fn empty_include_selects_every_active_namespace() {
        let s = Selection::compile(&spec(&[], &[], &["default"])).unwrap();
        assert!(s.selects_namespace(&ns("anything").build()));
    }

    #[test]
    fn include_and_exclude_globs_filter_by_name() {
        let s = Selection::compile(&spec(&["team-*"], &["team-b*"], &[])).unwrap();
        assert!(s.selects_namespace(&ns("team-a").build()));
        assert!(!s.selects_namespace(&ns("team-b2").build()));
        assert!(!s.selects_namespace(&ns("other").build()));
    }

    #[test]
    fn exclude_annotation_opts_a_namespace_out() {
        let s = Selection::compile(&spec(&[], &[], &[])).unwrap();
        assert!(!s.selects_namespace(&ns("a").annotation(EXCLUDE_ANNOTATION, "true").build()));
        assert!(s.selects_namespace(&ns("a").annotation(EXCLUDE_ANNOTATION, "false").build()));
    }

    #[test]
    fn terminating_namespace_is_never_selected() {
        let s = Selection::compile(&spec(&[], &[], &[])).unwrap();
        assert!(!s.selects_namespace(&ns("gone").terminating().build()));
    }

    #[test]
    fn label_selector_with_expressions_is_honoured() {
        let mut sp = spec(&[], &[], &[]);
        sp.namespaces.selector = Some(LabelSelector {
            match_labels: Some([("env".to_string(), "prod".to_string())].into()),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "team".into(),
                operator: "NotIn".into(),
                values: Some(vec!["legacy".into()]),
            }]),
        });
        let s = Selection::compile(&sp).unwrap();
        assert!(s.selects_namespace(&ns("a").label("env", "prod").build()));
        assert!(!s.selects_namespace(&ns("b").label("env", "dev").build()));
        assert!(
            !s.selects_namespace(&ns("c").label("env", "prod").label("team", "legacy").build())
        );
    }

    #[test]
    fn bad_selector_operator_is_an_error_not_a_panic() {
        let mut sp = spec(&[], &[], &[]);
        sp.namespaces.selector = Some(LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "team".into(),
                operator: "Sometimes".into(),
                values: None,
            }]),
        });
        assert!(matches!(
            Selection::compile(&sp),
            Err(SelectionError::BadSelector(_))
        ));
    }

    #[test]
    fn bad_glob_names_the_field_and_the_glob() {
        let err = Selection::compile(&spec(&["team-[a"], &[], &[])).unwrap_err();
        assert!(
            matches!(err, SelectionError::BadGlob { field: "namespaces.include", ref glob, .. } if glob == "team-[a")
        );
    }

    #[test]
    fn service_account_globs_star_empty_and_names() {
        let all = Selection::compile(&spec(&[], &[], &["*"])).unwrap();
        assert!(all.selects_service_account("builder"));
        let none = Selection::compile(&spec(&[], &[], &[])).unwrap();
        assert!(!none.selects_service_account("default"));
        let some = Selection::compile(&spec(&[], &[], &["default", "ci-*"])).unwrap();
        assert!(some.selects_service_account("ci-runner"));
        assert!(!some.selects_service_account("builder"));
    }
}
