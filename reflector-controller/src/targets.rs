//! Which namespaces a SecretReflector copies into: its explicit names and selector, minus its own
//! exclusions, the controller's allow/deny lists, and namespaces that opted out. Pure: takes the
//! namespaces as plain data, so it is tested without a cluster.

use std::collections::{BTreeMap, BTreeSet};

use common::crd::reflector::Targets;
use kube::core::{Selector, SelectorExt};

/// A namespace carrying this label with value `"false"` refuses every reflection into it.
pub const ACCEPT_LABEL: &str = "pack-operator.k8s.kubit.ir/accept-reflections";

/// What the controller knows of a namespace (from its metadata-only cache).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Being deleted: never a target, and left alone (its Secrets go with it).
    pub terminating: bool,
}

/// A namespace name pattern from a controller flag: an exact name, or a prefix ending in `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespacePattern(String);

impl NamespacePattern {
    pub fn new(pattern: &str) -> Self {
        NamespacePattern(pattern.trim().to_owned())
    }

    pub fn matches(&self, namespace: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => namespace.starts_with(prefix),
            None => self.0 == namespace,
        }
    }
}

/// The controller-wide target policy (flags `--allow-target-namespaces`, `--deny-target-namespaces`).
#[derive(Clone, Debug, Default)]
pub struct TargetPolicy {
    /// When not empty, only namespaces matching one of these receive copies.
    pub allow: Vec<NamespacePattern>,
    /// Namespaces matching one of these never receive copies (wins over `allow`).
    pub deny: Vec<NamespacePattern>,
}

impl TargetPolicy {
    fn permits(&self, namespace: &str) -> bool {
        let allowed = self.allow.is_empty() || self.allow.iter().any(|p| p.matches(namespace));
        allowed && !self.deny.iter().any(|p| p.matches(namespace))
    }
}

/// What becomes of one named or selected namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Gets a copy.
    Copy,
    /// Named explicitly but does not exist (yet): counted as desired, gets its copy when created.
    NamespaceNotFound,
    /// The namespace carries `accept-reflections: "false"`.
    OptedOut,
    /// The controller's allow/deny lists refuse it.
    Denied,
    /// The copy would be the source itself (same namespace and name).
    IsSource,
}

/// The selector in the spec is not a valid label selector.
#[derive(Debug, thiserror::Error)]
#[error("invalid namespaceSelector: {0}")]
pub struct InvalidSelector(String);

/// Every namespace named or selected by `targets`, sorted by name, with its placement. Excluded and
/// terminating namespaces are left out quietly.
pub fn plan(
    targets: &Targets,
    source_namespace: &str,
    source_name: &str,
    target_name: &str,
    namespaces: &BTreeMap<String, NamespaceInfo>,
    policy: &TargetPolicy,
) -> Result<BTreeMap<String, Placement>, InvalidSelector> {
    let selector: Option<Selector> = targets
        .namespace_selector
        .clone()
        .map(Selector::try_from)
        .transpose()
        .map_err(|e| InvalidSelector(e.to_string()))?;
    let excluded: BTreeSet<&str> = targets
        .exclude_namespaces
        .iter()
        .map(String::as_str)
        .collect();

    let mut chosen: BTreeSet<&str> = targets.namespaces.iter().map(String::as_str).collect();
    if let Some(selector) = &selector {
        chosen.extend(
            namespaces
                .values()
                .filter(|ns| selector.matches(&ns.labels))
                .map(|ns| ns.name.as_str()),
        );
    }

    let mut plan = BTreeMap::new();
    for name in chosen {
        if excluded.contains(name) {
            continue;
        }
        let placement = match namespaces.get(name) {
            None => Placement::NamespaceNotFound,
            Some(ns) if ns.terminating => continue,
            Some(_) if !policy.permits(name) => Placement::Denied,
            Some(ns) if ns.labels.get(ACCEPT_LABEL).map(String::as_str) == Some("false") => {
                Placement::OptedOut
            }
            Some(_) if name == source_namespace && target_name == source_name => {
                Placement::IsSource
            }
            Some(_) => Placement::Copy,
        };
        plan.insert(name.to_owned(), placement);
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    use super::*;

    fn ns(name: &str, labels: &[(&str, &str)], terminating: bool) -> (String, NamespaceInfo) {
        (
            name.to_owned(),
            NamespaceInfo {
                name: name.to_owned(),
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                terminating,
            },
        )
    }

    fn cluster() -> BTreeMap<String, NamespaceInfo> {
        BTreeMap::from([
            ns("certs", &[("tls", "wildcard")], false),
            ns("app-a", &[("tls", "wildcard")], false),
            ns("app-b", &[], false),
            ns(
                "app-c",
                &[("tls", "wildcard"), (ACCEPT_LABEL, "false")],
                false,
            ),
            ns("app-d", &[("tls", "wildcard")], true),
            ns("kube-system", &[("tls", "wildcard")], false),
            ns("app-e", &[("tls", "other"), (ACCEPT_LABEL, "true")], false),
        ])
    }

    fn selector(labels: &[(&str, &str)]) -> Option<LabelSelector> {
        Some(LabelSelector {
            match_labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            match_expressions: None,
        })
    }

    fn run(targets: Targets, target_name: &str, policy: &TargetPolicy) -> Vec<(String, Placement)> {
        plan(&targets, "certs", "tls", target_name, &cluster(), policy)
            .unwrap()
            .into_iter()
            .collect()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    /// (what, targets, target name, policy, expected placements)
    type Case<'a> = (
        &'a str,
        Targets,
        &'a str,
        &'a TargetPolicy,
        Vec<(&'a str, Placement)>,
    );

    #[test]
    fn table() {
        use Placement::*;
        let open = TargetPolicy::default();
        let deny_kube = TargetPolicy {
            allow: vec![],
            deny: vec![NamespacePattern::new("kube-*")],
        };
        let allow_apps = TargetPolicy {
            allow: vec![NamespacePattern::new("app-*")],
            deny: vec![NamespacePattern::new("app-b")],
        };
        let cases: Vec<Case> = vec![
            (
                "explicit names; a missing one is reported",
                Targets {
                    namespaces: names(&["app-a", "app-b", "nope"]),
                    ..Default::default()
                },
                "tls",
                &open,
                vec![
                    ("app-a", Copy),
                    ("app-b", Copy),
                    ("nope", NamespaceNotFound),
                ],
            ),
            (
                "selector: opted-out reported, terminating skipped quietly, source itself refused",
                Targets {
                    namespace_selector: selector(&[("tls", "wildcard")]),
                    ..Default::default()
                },
                "tls",
                &open,
                vec![
                    ("app-a", Copy),
                    ("app-c", OptedOut),
                    ("certs", IsSource),
                    ("kube-system", Copy),
                ],
            ),
            (
                "another target name may live beside the source; deny list applies",
                Targets {
                    namespace_selector: selector(&[("tls", "wildcard")]),
                    ..Default::default()
                },
                "tls-copy",
                &deny_kube,
                vec![
                    ("app-a", Copy),
                    ("app-c", OptedOut),
                    ("certs", Copy),
                    ("kube-system", Denied),
                ],
            ),
            (
                "union of names and selector, minus exclusions",
                Targets {
                    namespaces: names(&["app-b", "app-e"]),
                    namespace_selector: selector(&[("tls", "wildcard")]),
                    exclude_namespaces: names(&["certs", "kube-system", "app-e"]),
                },
                "tls",
                &open,
                vec![("app-a", Copy), ("app-b", Copy), ("app-c", OptedOut)],
            ),
            (
                "allow list: only matching namespaces; deny wins over allow",
                Targets {
                    namespaces: names(&["app-a", "app-b", "certs", "kube-system"]),
                    ..Default::default()
                },
                "x",
                &allow_apps,
                vec![
                    ("app-a", Copy),
                    ("app-b", Denied),
                    ("certs", Denied),
                    ("kube-system", Denied),
                ],
            ),
            (
                "explicitly named terminating namespace is skipped quietly",
                Targets {
                    namespaces: names(&["app-d"]),
                    ..Default::default()
                },
                "tls",
                &open,
                vec![],
            ),
            (
                "empty selector selects every namespace",
                Targets {
                    namespace_selector: Some(LabelSelector::default()),
                    exclude_namespaces: names(&["certs"]),
                    ..Default::default()
                },
                "tls",
                &open,
                vec![
                    ("app-a", Copy),
                    ("app-b", Copy),
                    ("app-c", OptedOut),
                    ("app-e", Copy),
                    ("kube-system", Copy),
                ],
            ),
        ];
        for (what, targets, target_name, policy, want) in cases {
            let want: Vec<(String, Placement)> =
                want.into_iter().map(|(n, p)| (n.to_owned(), p)).collect();
            assert_eq!(run(targets, target_name, policy), want, "{what}");
        }
    }

    #[test]
    fn match_expressions_and_invalid_selectors() {
        let targets = Targets {
            namespace_selector: Some(LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "tls".into(),
                    operator: "In".into(),
                    values: Some(vec!["other".into()]),
                }]),
            }),
            ..Default::default()
        };
        let got = run(targets, "tls", &TargetPolicy::default());
        assert_eq!(got, vec![("app-e".to_owned(), Placement::Copy)]);

        let bad = Targets {
            namespace_selector: Some(LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "tls".into(),
                    operator: "Sometimes".into(),
                    values: None,
                }]),
            }),
            ..Default::default()
        };
        assert!(
            plan(
                &bad,
                "certs",
                "tls",
                "tls",
                &cluster(),
                &TargetPolicy::default()
            )
            .is_err()
        );
    }

    #[test]
    fn patterns() {
        assert!(NamespacePattern::new("kube-*").matches("kube-system"));
        assert!(!NamespacePattern::new("kube-*").matches("kubeflow"));
        assert!(NamespacePattern::new("prod").matches("prod"));
        assert!(!NamespacePattern::new("prod").matches("prod-1"));
        assert!(NamespacePattern::new("*").matches("anything"));
    }
}
