//! Namespace scoping, as Reloader's `--namespaces-to-watch`/`--namespace-selector`: a list of namespaces
//! (`--namespace a,b`) and a namespace label selector (`--namespace-selector`). Workloads outside the
//! scope are not looked at (nothing recorded, nothing rolled). Pure; the controller keeps the labels of
//! namespaces (metadata only) when a selector is given.

use std::collections::BTreeMap;

/// One requirement of an equality-based label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

impl Requirement {
    fn holds(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        }
    }
}

/// Parses `key=value`, `key==value`, `key!=value`, `key` and `!key`, separated by commas (kubectl's
/// equality-based syntax; set-based `in (...)` is not accepted). Empty means every namespace.
pub fn parse_selector(input: &str) -> Result<Vec<Requirement>, String> {
    let bad = |part: &str, why: &str| {
        format!(
            "--namespace-selector {input:?}: {part:?} {why}; expected e.g. team=a,env!=dev,reloader"
        )
    };
    let mut out = vec![];
    for part in input.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let requirement = if let Some((k, v)) = part.split_once("!=") {
            Requirement::NotEquals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            Requirement::Equals(k.trim().into(), v.trim().into())
        } else if let Some(k) = part.strip_prefix('!') {
            Requirement::NotExists(k.trim().into())
        } else {
            Requirement::Exists(part.into())
        };
        let (key, value) = match &requirement {
            Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => (k, Some(v)),
            Requirement::Exists(k) | Requirement::NotExists(k) => (k, None),
        };
        if !is_label_key(key) {
            return Err(bad(part, "has an invalid label key"));
        }
        if value.is_some_and(|v| !is_label_value(v)) {
            return Err(bad(part, "has an invalid label value"));
        }
        out.push(requirement);
    }
    Ok(out)
}

fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => {
            prefix.len() <= 253
                && common::annotation::is_dns1123_subdomain(prefix)
                && is_name_part(name)
        }
        None => is_name_part(key),
    }
}

fn is_label_value(value: &str) -> bool {
    value.is_empty() || is_name_part(value)
}

/// A parsed `--namespace-selector` (one flag value, so clap does not take it for a list).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(pub Vec<Requirement>);

impl std::str::FromStr for Selector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_selector(s).map(Selector)
    }
}

/// Which namespaces the controller acts in.
#[derive(Clone, Debug, Default)]
pub struct NamespaceScope {
    /// Only these (empty: all).
    pub names: Vec<String>,
    /// And only namespaces whose labels satisfy every requirement (empty: no condition on labels).
    pub selector: Vec<Requirement>,
}

impl NamespaceScope {
    /// Whether the selector needs the namespaces' labels.
    pub fn needs_labels(&self) -> bool {
        !self.selector.is_empty()
    }

    /// Whether a workload in `namespace`, whose labels are `labels` (`None`: not known yet), is acted on.
    pub fn admits(&self, namespace: &str, labels: Option<&BTreeMap<String, String>>) -> bool {
        let named = self.names.is_empty() || self.names.iter().any(|n| n == namespace);
        let selected = self.selector.is_empty()
            || labels.is_some_and(|l| self.selector.iter().all(|r| r.holds(l)));
        named && selected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        use Requirement::*;
        let cases: Vec<(&str, Result<Vec<Requirement>, ()>)> = vec![
            ("", Ok(vec![])),
            ("team=a", Ok(vec![Equals("team".into(), "a".into())])),
            (
                "team==a, env!=dev,reloader,!legacy",
                Ok(vec![
                    Equals("team".into(), "a".into()),
                    NotEquals("env".into(), "dev".into()),
                    Exists("reloader".into()),
                    NotExists("legacy".into()),
                ]),
            ),
            (
                "example.com/tier=",
                Ok(vec![Equals("example.com/tier".into(), "".into())]),
            ),
            ("Not A Key!=x", Err(())),
            ("team=a b", Err(())),
            ("team in (a,b)", Err(())),
        ];
        for (input, expected) in cases {
            let got = parse_selector(input).map_err(|e| {
                assert!(e.contains("e.g."), "{e}");
            });
            assert_eq!(got, expected, "{input}");
        }
    }

    #[test]
    fn scope() {
        let labels: BTreeMap<String, String> = [("team".to_string(), "a".to_string())].into();
        let all = NamespaceScope::default();
        assert!(all.admits("x", None));
        let named = NamespaceScope {
            names: vec!["a".into(), "b".into()],
            selector: vec![],
        };
        assert!(named.admits("b", None) && !named.admits("c", None));
        let selected = NamespaceScope {
            names: vec![],
            selector: parse_selector("team=a").unwrap(),
        };
        assert!(selected.needs_labels());
        assert!(selected.admits("x", Some(&labels)));
        assert!(!selected.admits("x", Some(&BTreeMap::new())));
        assert!(!selected.admits("x", None), "labels not known yet: not yet");
    }
}
