//! Which namespaces a SecretReflector copies into: its explicit names and selector, minus its own
//! exclusions, the controller's allow/deny lists, namespaces that opted out, and (in consent mode)
//! namespaces that did not name the source's namespace in their consent annotation; and which of several
//! SecretReflectors claiming one target holds it. Pure: takes the namespaces and reflectors as plain
//! data, so it is tested without a cluster.

use std::collections::{BTreeMap, BTreeSet};

use common::crd::reflector::Targets;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::core::{Selector, SelectorExt};

use crate::copy::ReflectorKey;

/// A namespace carrying this label with value `"false"` refuses every reflection into it.
pub const ACCEPT_LABEL: &str = "pack-operator.k8s.kubit.ir/accept-reflections";

/// In consent mode (`--require-consent`), a namespace receives copies only from the source namespaces
/// this annotation on it names: comma- or whitespace-separated names or `prefix*` patterns; `*` alone
/// accepts every source namespace. An annotation, since a list of names does not fit a label value.
pub const REFLECT_FROM_ANNOTATION: &str = "pack-operator.k8s.kubit.ir/reflect-from";

/// What the controller knows of a namespace (from its metadata-only cache).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Its [`REFLECT_FROM_ANNOTATION`], as written (None: absent).
    pub reflect_from: Option<String>,
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

/// Whether a namespace whose [`REFLECT_FROM_ANNOTATION`] is `reflect_from` accepts copies from
/// `source_namespace`. An absent or empty annotation accepts none.
pub fn consents(reflect_from: Option<&str>, source_namespace: &str) -> bool {
    reflect_from.is_some_and(|list| {
        list.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|entry| !entry.is_empty())
            .any(|entry| NamespacePattern::new(entry).matches(source_namespace))
    })
}

/// The controller-wide target policy (flags `--allow-target-namespaces`, `--deny-target-namespaces`,
/// `--require-consent`).
#[derive(Clone, Debug, Default)]
pub struct TargetPolicy {
    /// When not empty, only namespaces matching one of these receive copies.
    pub allow: Vec<NamespacePattern>,
    /// Namespaces matching one of these never receive copies (wins over `allow`).
    pub deny: Vec<NamespacePattern>,
    /// A namespace other than the source's receives copies only if its [`REFLECT_FROM_ANNOTATION`]
    /// names the source's namespace.
    pub require_consent: bool,
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
    /// Consent mode: the namespace's [`REFLECT_FROM_ANNOTATION`] does not name the source's namespace.
    NotConsented,
    /// The copy would be the source itself (same namespace and name), and the namespace is named
    /// explicitly. (Only selected, it is left out quietly.)
    IsSource,
}

/// The selector in the spec is not a valid label selector.
#[derive(Debug, thiserror::Error)]
#[error("invalid namespaceSelector: {0}")]
pub struct InvalidSelector(String);

/// Whether `s` is the name part of a label key, or a non-empty label value: at most 63 characters of
/// `[A-Za-z0-9._-]`, starting and ending with a letter or digit.
fn is_label_name(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= 63
        && edge(s.chars().next())
        && edge(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Whether `s` is a DNS-1123 subdomain (the prefix of a label key).
fn is_dns_subdomain(s: &str) -> bool {
    let label = |l: &str| {
        let edge =
            |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        edge(l.chars().next())
            && edge(l.chars().last())
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    s.len() <= 253 && s.split('.').all(label)
}

/// Whether `key` is a label key: `[prefix/]name`, the prefix a DNS subdomain.
fn is_label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(key),
    }
}

/// Whether `value` is a label value (empty, or as [`is_label_name`]).
fn is_label_value(value: &str) -> bool {
    value.is_empty() || is_label_name(value)
}

/// Refuses label keys and values no label can have (a selector using them would silently match
/// nothing): the CRD refuses them at admission; this reports those of objects stored before.
fn check_selector(selector: &LabelSelector) -> Result<(), InvalidSelector> {
    let bad_key = |key: &str| {
        InvalidSelector(format!(
            "{key:?} is not a label key ([prefix/]name: a name of at most 63 characters of \
             [A-Za-z0-9._-] starting and ending with a letter or digit, the prefix a DNS subdomain)"
        ))
    };
    let bad_value = |key: &str, value: &str| {
        InvalidSelector(format!(
            "{value:?} (for {key:?}) is not a label value (at most 63 characters of [A-Za-z0-9._-], \
             starting and ending with a letter or digit)"
        ))
    };
    for (key, value) in selector.match_labels.iter().flatten() {
        if !is_label_key(key) {
            return Err(bad_key(key));
        }
        if !is_label_value(value) {
            return Err(bad_value(key, value));
        }
    }
    for e in selector.match_expressions.iter().flatten() {
        if !is_label_key(&e.key) {
            return Err(bad_key(&e.key));
        }
        if let Some(value) = e.values.iter().flatten().find(|v| !is_label_value(v)) {
            return Err(bad_value(&e.key, value));
        }
    }
    Ok(())
}

/// Every namespace named or selected by `targets`, sorted by name, with its placement. Excluded and
/// terminating namespaces are left out quietly, and so is the source's own namespace when it is only
/// selected and the copy would be the source itself (e.g. `namespaceSelector: {}`).
///
/// Refusals in this order: the controller's lists (`Denied`, whatever the namespace says), the
/// namespace's opt-out label (`OptedOut`, an explicit no), then the missing consent (`NotConsented`).
/// The source's own namespace never needs consent: whoever may create a SecretReflector there may
/// create that Secret there anyway.
pub fn plan(
    targets: &Targets,
    source_namespace: &str,
    source_name: &str,
    target_name: &str,
    namespaces: &BTreeMap<String, NamespaceInfo>,
    policy: &TargetPolicy,
) -> Result<BTreeMap<String, Placement>, InvalidSelector> {
    if let Some(selector) = &targets.namespace_selector {
        check_selector(selector)?;
    }
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

    let named: BTreeSet<&str> = targets.namespaces.iter().map(String::as_str).collect();
    let mut chosen = named.clone();
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
            Some(ns)
                if policy.require_consent
                    && name != source_namespace
                    && !consents(ns.reflect_from.as_deref(), source_namespace) =>
            {
                Placement::NotConsented
            }
            Some(_) if name == source_namespace && target_name == source_name => {
                if !named.contains(name) {
                    continue;
                }
                Placement::IsSource
            }
            Some(_) => Placement::Copy,
        };
        plan.insert(name.to_owned(), placement);
    }
    Ok(plan)
}

/// A SecretReflector claiming a target (a namespace where its plan says [`Placement::Copy`], under
/// the same target name as another's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimant {
    pub reflector: ReflectorKey,
    /// Its creationTimestamp (always set by the API server; None sorts last).
    pub created: Option<Time>,
}

/// Which of the SecretReflectors claiming one target holds it: the oldest by creationTimestamp, ties
/// (one-second resolution) broken by `<namespace>/<name>`. Depends only on the claimants, not on who
/// wrote first, so it never flips while they stay.
pub fn winner(claimants: &[Claimant]) -> Option<&Claimant> {
    claimants.iter().min_by_key(|c| {
        (
            c.created.is_none(),
            c.created.clone(),
            c.reflector.to_string(),
        )
    })
}

/// The namespaces where `mine` places a copy but a rival wins the target, with that rival. `rivals`:
/// the other SecretReflectors with the same target name, each with its own plan; a rival claims the
/// namespaces its plan places a copy in.
pub fn lost(
    me: &Claimant,
    mine: &BTreeMap<String, Placement>,
    rivals: &[(Claimant, BTreeMap<String, Placement>)],
) -> BTreeMap<String, ReflectorKey> {
    mine.iter()
        .filter(|(_, p)| **p == Placement::Copy)
        .filter_map(|(ns, _)| {
            let mut claimants = vec![me.clone()];
            claimants.extend(
                rivals
                    .iter()
                    .filter(|(_, plan)| plan.get(ns) == Some(&Placement::Copy))
                    .map(|(c, _)| c.clone()),
            );
            let won = winner(&claimants)?;
            (won.reflector != me.reflector).then(|| (ns.clone(), won.reflector.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn ns(name: &str, labels: &[(&str, &str)], terminating: bool) -> (String, NamespaceInfo) {
        consenting(name, labels, terminating, None)
    }

    fn consenting(
        name: &str,
        labels: &[(&str, &str)],
        terminating: bool,
        reflect_from: Option<&str>,
    ) -> (String, NamespaceInfo) {
        (
            name.to_owned(),
            NamespaceInfo {
                name: name.to_owned(),
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                reflect_from: reflect_from.map(str::to_owned),
                terminating,
            },
        )
    }

    /// The source is `certs/tls`. Consent annotations matter only to a policy that requires consent.
    fn cluster() -> BTreeMap<String, NamespaceInfo> {
        BTreeMap::from([
            ns("certs", &[("tls", "wildcard")], false),
            consenting("app-a", &[("tls", "wildcard")], false, Some("certs")),
            ns("app-b", &[], false),
            consenting(
                "app-c",
                &[("tls", "wildcard"), (ACCEPT_LABEL, "false")],
                false,
                Some("*"),
            ),
            ns("app-d", &[("tls", "wildcard")], true),
            consenting("kube-system", &[("tls", "wildcard")], false, Some("*")),
            consenting(
                "app-e",
                &[("tls", "other"), (ACCEPT_LABEL, "true")],
                false,
                Some("other team-*"),
            ),
            consenting("app-f", &[], false, Some(" platform,\n certs-old , cert* ")),
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

    /// One table of cases, one row each: long because the cases are many.
    #[test]
    fn table() {
        use Placement::*;
        let open = TargetPolicy::default();
        let deny_kube = TargetPolicy {
            deny: vec![NamespacePattern::new("kube-*")],
            ..Default::default()
        };
        let allow_apps = TargetPolicy {
            allow: vec![NamespacePattern::new("app-*")],
            deny: vec![NamespacePattern::new("app-b")],
            ..Default::default()
        };
        // The chart's defaults.
        let consent = TargetPolicy {
            deny: vec![NamespacePattern::new("kube-*")],
            require_consent: true,
            ..Default::default()
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
                "selector: opted-out reported, terminating and the source itself skipped quietly",
                Targets {
                    namespace_selector: selector(&[("tls", "wildcard")]),
                    ..Default::default()
                },
                "tls",
                &open,
                vec![("app-a", Copy), ("app-c", OptedOut), ("kube-system", Copy)],
            ),
            (
                "the source's namespace named explicitly: the copy would be the source, refused",
                Targets {
                    namespaces: names(&["certs", "app-b"]),
                    namespace_selector: selector(&[("tls", "wildcard")]),
                    ..Default::default()
                },
                "tls",
                &open,
                vec![
                    ("app-a", Copy),
                    ("app-b", Copy),
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
                "empty selector selects every namespace but the source's own, quietly",
                Targets {
                    namespace_selector: Some(LabelSelector::default()),
                    ..Default::default()
                },
                "tls",
                &open,
                vec![
                    ("app-a", Copy),
                    ("app-b", Copy),
                    ("app-c", OptedOut),
                    ("app-e", Copy),
                    ("app-f", Copy),
                    ("kube-system", Copy),
                ],
            ),
            (
                "consent mode: only namespaces naming the source's; deny and opt-out win over consent; \
                 the source's own namespace needs none",
                Targets {
                    namespaces: names(&["nope"]),
                    namespace_selector: Some(LabelSelector::default()),
                    ..Default::default()
                },
                "tls-copy",
                &consent,
                vec![
                    ("app-a", Copy),
                    ("app-b", NotConsented),
                    ("app-c", OptedOut),
                    ("app-e", NotConsented),
                    ("app-f", Copy),
                    ("certs", Copy),
                    ("kube-system", Denied),
                    ("nope", NamespaceNotFound),
                ],
            ),
            (
                "consent mode, named namespaces: a missing consent is reported, not skipped",
                Targets {
                    namespaces: names(&["app-a", "app-b", "certs"]),
                    ..Default::default()
                },
                "tls",
                &consent,
                vec![
                    ("app-a", Copy),
                    ("app-b", NotConsented),
                    ("certs", IsSource),
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
    fn label_keys_and_values_no_label_can_have_are_an_invalid_selector() {
        let long = "a".repeat(64);
        let keys = [
            ("team", true),
            ("example.com/team", true),
            ("app.kubernetes.io/name", true),
            ("A_b.c-9", true),
            ("Not A Key!", false),
            ("", false),
            ("-team", false),
            ("team-", false),
            ("Example.com/team", false),
            ("example.com/", false),
            ("/team", false),
            ("a/b/c", false),
            (long.as_str(), false),
        ];
        for (key, ok) in keys {
            assert_eq!(is_label_key(key), ok, "key {key:?}");
        }
        let values = [
            ("", true),
            ("web", true),
            ("v1.2_x-y", true),
            ("with space", false),
            ("-x", false),
            ("a/b", false),
            (long.as_str(), false),
        ];
        for (value, ok) in values {
            assert_eq!(is_label_value(value), ok, "value {value:?}");
        }
        let selecting = |labels: &[(&str, &str)], expression: Option<(&str, &str)>| Targets {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                match_expressions: expression.map(|(key, value)| {
                    vec![LabelSelectorRequirement {
                        key: key.into(),
                        operator: "In".into(),
                        values: Some(vec![value.into()]),
                    }]
                }),
            }),
            ..Default::default()
        };
        let plan_of = |t: &Targets| {
            plan(
                t,
                "certs",
                "tls",
                "tls",
                &cluster(),
                &TargetPolicy::default(),
            )
            .map_err(|e| e.to_string())
        };
        let err = plan_of(&selecting(&[("Not A Key!", "x")], None)).unwrap_err();
        assert!(err.contains("\"Not A Key!\" is not a label key"), "{err}");
        let err = plan_of(&selecting(&[("tls", "not a value")], None)).unwrap_err();
        assert!(err.contains("is not a label value"), "{err}");
        assert!(plan_of(&selecting(&[], Some(("Not A Key!", "x")))).is_err());
        assert!(plan_of(&selecting(&[], Some(("tls", "a b")))).is_err());
        assert!(plan_of(&selecting(&[("tls", "wildcard")], Some(("team", "web")))).is_ok());
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
    fn the_oldest_claimant_wins_ties_broken_by_name() {
        let at = |secs: i64| {
            Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(secs).unwrap(),
            ))
        };
        let claimant = |ns: &str, name: &str, created: Option<Time>| Claimant {
            reflector: ReflectorKey {
                namespace: ns.into(),
                name: name.into(),
            },
            created,
        };
        let winner_of = |claimants: Vec<Claimant>| {
            let won = winner(&claimants).map(|c| c.reflector.to_string());
            // Whatever order they are listed (or reconciled) in.
            let mut reversed = claimants.clone();
            reversed.reverse();
            assert_eq!(won, winner(&reversed).map(|c| c.reflector.to_string()));
            won
        };
        let cases: Vec<(&str, Vec<Claimant>, Option<&str>)> = vec![
            ("nobody", vec![], None),
            ("alone", vec![claimant("a", "x", at(5))], Some("a/x")),
            (
                "oldest wins, whatever the name",
                vec![claimant("a", "a", at(20)), claimant("z", "z", at(10))],
                Some("z/z"),
            ),
            (
                "same second: by <namespace>/<name>",
                vec![
                    claimant("certs", "second", at(10)),
                    claimant("certs", "first", at(10)),
                ],
                Some("certs/first"),
            ),
            (
                "ties compare the joined string (`a-b/x` < `a/x`), not the namespace first",
                vec![claimant("a", "x", at(10)), claimant("a-b", "x", at(10))],
                Some("a-b/x"),
            ),
            (
                "no creationTimestamp sorts last",
                vec![claimant("a", "a", None), claimant("b", "b", at(99))],
                Some("b/b"),
            ),
        ];
        for (what, claimants, want) in cases {
            assert_eq!(winner_of(claimants).as_deref(), want, "{what}");
        }
    }

    #[test]
    fn targets_a_rival_wins_are_lost() {
        let at = |secs: i64| {
            Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(secs).unwrap(),
            ))
        };
        let claimant = |name: &str, secs: i64| Claimant {
            reflector: ReflectorKey {
                namespace: "certs".into(),
                name: name.into(),
            },
            created: at(secs),
        };
        let plan = |entries: &[(&str, Placement)]| -> BTreeMap<String, Placement> {
            entries
                .iter()
                .map(|(n, p)| ((*n).to_owned(), p.clone()))
                .collect()
        };
        let me = claimant("me", 10);
        let mine = plan(&[
            ("a", Placement::Copy),
            ("b", Placement::Copy),
            ("c", Placement::Copy),
            ("d", Placement::OptedOut),
        ]);
        let rivals = vec![
            // Older: wins where it also copies (a), not where it is refused (c) or absent (b).
            (
                claimant("older", 5),
                plan(&[
                    ("a", Placement::Copy),
                    ("c", Placement::Denied),
                    ("d", Placement::Copy),
                ]),
            ),
            // Younger: never wins.
            (claimant("younger", 20), plan(&[("b", Placement::Copy)])),
        ];
        let got = lost(&me, &mine, &rivals);
        assert_eq!(
            got.into_iter()
                .map(|(ns, k)| format!("{ns}:{k}"))
                .collect::<Vec<_>>(),
            vec!["a:certs/older".to_owned()]
        );
        // The younger one, seen from its side, loses b to me.
        let younger = lost(
            &rivals[1].0,
            &rivals[1].1,
            &[(me.clone(), mine.clone()), rivals[0].clone()],
        );
        assert_eq!(
            younger.get("b").map(ToString::to_string).as_deref(),
            Some("certs/me")
        );
    }

    #[test]
    fn consent_annotation() {
        let cases: &[(Option<&str>, bool, &str)] = &[
            (None, false, "no annotation"),
            (Some(""), false, "empty"),
            (Some(" , "), false, "only separators"),
            (Some("certs"), true, "the source's namespace"),
            (Some("certs2"), false, "a longer name is another namespace"),
            (Some("cert"), false, "a shorter one too"),
            (Some("team-a,certs"), true, "comma-separated"),
            (Some("team-a certs"), true, "space-separated"),
            (Some(" team-a ,\n\tcerts "), true, "mixed, padded"),
            (Some("*"), true, "anyone"),
            (Some("cert*"), true, "a prefix"),
            (Some("team-*"), false, "another prefix"),
            (Some("CERTS"), false, "names are case-sensitive"),
        ];
        for (annotation, want, what) in cases {
            assert_eq!(consents(*annotation, "certs"), *want, "{what}");
        }
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
