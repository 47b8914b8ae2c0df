//! `spec.dependsOn`: whether a Pack may go on, and whether its uninstall must wait, from the Packs it
//! relates to. Pure, unit-tested. A dependency names a Pack of the same namespace unless it gives a
//! `namespace`, which the controller accepts only with `--allow-cross-namespace-dependencies`.

use std::{borrow::Borrow, collections::HashMap};

use common::{
    conditions,
    crd::{Pack, pack::PackDependency},
};
use kube::ResourceExt;

/// What the dependencies of a Pack allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Every dependency is `Ready` at its current generation (or there is none).
    Proceed,
    /// These are not (each with why).
    Waiting(Vec<String>),
    /// The Pack is on this cycle (names in order, the first repeated at the end).
    Cycle(Vec<String>),
    /// These dependencies are in other namespaces, which this controller does not allow.
    Refused(Vec<String>),
}

/// A Pack's namespace and name.
type Key = (String, String);

fn key_of(p: &Pack) -> Key {
    (p.namespace().unwrap_or_default(), p.name_any())
}

/// The Pack `d` names, as seen from `p`: in `p`'s namespace unless it gives one.
fn dependency_key(p: &Pack, d: &PackDependency) -> Key {
    let ns = d
        .namespace
        .clone()
        .unwrap_or_else(|| p.namespace().unwrap_or_default());
    (ns, d.name.clone())
}

/// `name` for a Pack of `own_ns`, `ns/name` for one elsewhere.
fn label(own_ns: &str, (ns, name): &Key) -> String {
    if ns == own_ns {
        name.clone()
    } else {
        format!("{ns}/{name}")
    }
}

/// The gate of Pack `ns/name` among `packs` (those of its namespace, and of all namespaces when
/// `allow_cross_namespace`).
pub fn gate(ns: &str, name: &str, packs: &[Pack], allow_cross_namespace: bool) -> Gate {
    let by_key: HashMap<Key, &Pack> = packs.iter().map(|p| (key_of(p), p)).collect();
    let own = (ns.to_owned(), name.to_owned());
    let Some(pack) = by_key.get(&own) else {
        return Gate::Proceed;
    };
    let deps: Vec<Key> = pack
        .spec
        .depends_on
        .iter()
        .map(|d| dependency_key(pack, d))
        .collect();
    let refused: Vec<String> = deps
        .iter()
        .filter(|k| k.0 != ns && !allow_cross_namespace)
        .map(|k| label(ns, k))
        .collect();
    if !refused.is_empty() {
        return Gate::Refused(refused);
    }
    if let Some(cycle) = cycle_through(&own, &by_key) {
        return Gate::Cycle(cycle.iter().map(|k| label(ns, k)).collect());
    }
    let waiting: Vec<String> = deps
        .iter()
        .filter_map(|k| match by_key.get(k) {
            None => Some(format!("{} (not found)", label(ns, k))),
            Some(p) => not_ready(p).map(|why| format!("{} ({why})", label(ns, k))),
        })
        .collect();
    if waiting.is_empty() {
        Gate::Proceed
    } else {
        Gate::Waiting(waiting)
    }
}

/// The Packs among `packs` that depend on Pack `ns/name` and are being deleted too: its uninstall waits
/// until they are gone, so a Pack others depend on is uninstalled last when they are deleted together.
/// (Dependents that stay do not hold it: deleting a dependency is the user's explicit act.)
pub fn deleting_dependents<P: Borrow<Pack>>(
    ns: &str,
    name: &str,
    packs: &[P],
    allow_cross_namespace: bool,
) -> Vec<String> {
    let own = (ns.to_owned(), name.to_owned());
    packs
        .iter()
        .map(Borrow::borrow)
        .filter(|p| p.metadata.deletion_timestamp.is_some() && key_of(p) != own)
        .filter(|p| allow_cross_namespace || p.namespace().as_deref() == Some(ns))
        .filter(|p| {
            p.spec
                .depends_on
                .iter()
                .any(|d| dependency_key(p, d) == own)
        })
        .map(|p| label(ns, &key_of(p)))
        .collect()
}

/// Whether some Pack among `packs` (being deleted or not) depends on Pack `ns/name`.
pub fn has_dependents<P: Borrow<Pack>>(
    ns: &str,
    name: &str,
    packs: &[P],
    allow_cross_namespace: bool,
) -> bool {
    packs.iter().map(Borrow::borrow).any(|p: &Pack| {
        (allow_cross_namespace || p.namespace().as_deref() == Some(ns)) && depends_on(p, ns, name)
    })
}

/// Whether Pack `p` names Pack `ns/name` in its `spec.dependsOn`.
pub fn depends_on(p: &Pack, ns: &str, name: &str) -> bool {
    p.spec
        .depends_on
        .iter()
        .any(|d| dependency_key(p, d) == (ns.to_owned(), name.to_owned()))
}

/// The Packs `p` depends on.
pub fn dependencies(p: &Pack) -> Vec<(String, String)> {
    p.spec
        .depends_on
        .iter()
        .map(|d| dependency_key(p, d))
        .collect()
}

/// None when `p` is `Ready=True` for its current generation.
fn not_ready(p: &Pack) -> Option<String> {
    let ready = p
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, conditions::READY));
    match ready {
        Some(c) if c.status == "True" && c.observed_generation == p.metadata.generation => None,
        Some(c) if c.status == "True" => Some("generation not observed yet".into()),
        Some(c) => Some(format!("Ready={} {}", c.status, c.reason)),
        None => Some("no Ready condition yet".into()),
    }
}

/// A path of dependencies from `start` back to it, if there is one (depth-first, each Pack once).
fn cycle_through(start: &Key, by_key: &HashMap<Key, &Pack>) -> Option<Vec<Key>> {
    let deps_of =
        |k: &Key| -> Vec<Key> { by_key.get(k).map(|p| dependencies(p)).unwrap_or_default() };
    let mut stack: Vec<(Key, usize)> = vec![(start.clone(), 0)];
    let mut seen = std::collections::HashSet::new();
    while let Some((key, next)) = stack.last().cloned() {
        let Some(dep) = deps_of(&key).get(next).cloned() else {
            stack.pop();
            continue;
        };
        stack.last_mut().expect("not empty").1 += 1;
        if &dep == start {
            let mut path: Vec<Key> = stack.iter().map(|(k, _)| k.clone()).collect();
            path.push(start.clone());
            return Some(path);
        }
        if seen.insert(dep.clone()) {
            stack.push((dep, 0));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pack(name: &str, deps: &[&str], ready: Option<(&str, i64)>) -> Pack {
        let deps: Vec<_> = deps.iter().map(|d| json!({"name": d})).collect();
        let mut p: Pack = serde_json::from_value(json!({
            "apiVersion": "k8s.kubit.ir/v1alpha1", "kind": "Pack",
            "metadata": {"name": name, "namespace": "ns", "generation": 2},
            "spec": {"chart": {"repository": {"kind": "ClusterPackRepository", "name": "r"},
                               "name": "c"}, "dependsOn": deps},
        }))
        .unwrap();
        if let Some((status, generation)) = ready {
            p.status = Some(
                serde_json::from_value(json!({"conditions": [{
                "type": "Ready", "status": status, "reason": "Applied", "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": generation}]}))
                .unwrap(),
            );
        }
        p
    }

    #[test]
    fn waits_for_dependencies_ready_at_their_generation() {
        let app = pack("app", &["db", "cache", "gone"], None);
        let packs = [
            app,
            pack("db", &[], Some(("True", 2))),
            pack("cache", &[], Some(("True", 1))),
        ];
        assert_eq!(
            gate("ns", "app", &packs, false),
            Gate::Waiting(vec![
                "cache (generation not observed yet)".into(),
                "gone (not found)".into()
            ])
        );
        let packs = [
            pack("app", &["db"], None),
            pack("db", &[], Some(("True", 2))),
        ];
        assert_eq!(gate("ns", "app", &packs, false), Gate::Proceed);
        let packs = [
            pack("app", &["db"], None),
            pack("db", &[], Some(("False", 2))),
        ];
        assert_eq!(
            gate("ns", "app", &packs, false),
            Gate::Waiting(vec!["db (Ready=False Applied)".into()])
        );
    }

    fn in_ns(mut p: Pack, ns: &str) -> Pack {
        p.metadata.namespace = Some(ns.into());
        p
    }

    fn cross(name: &str, dep_ns: &str, dep: &str) -> Pack {
        let mut p = pack(name, &[], None);
        p.spec.depends_on = vec![PackDependency {
            name: dep.into(),
            namespace: Some(dep_ns.into()),
        }];
        p
    }

    #[test]
    fn another_namespace_is_refused_unless_allowed_and_then_named_with_it() {
        let packs = [
            cross("app", "data", "db"),
            in_ns(pack("db", &[], Some(("False", 2))), "data"),
        ];
        assert_eq!(
            gate("ns", "app", &packs, false),
            Gate::Refused(vec!["data/db".into()])
        );
        assert_eq!(
            gate("ns", "app", &packs, true),
            Gate::Waiting(vec!["data/db (Ready=False Applied)".into()])
        );
        let ready = [
            cross("app", "data", "db"),
            in_ns(pack("db", &[], Some(("True", 2))), "data"),
        ];
        assert_eq!(gate("ns", "app", &ready, true), Gate::Proceed);
        // Its own namespace named explicitly is no cross-namespace dependency.
        let own = [cross("app", "ns", "db"), pack("db", &[], Some(("True", 2)))];
        assert_eq!(gate("ns", "app", &own, false), Gate::Proceed);
        // A Pack of the same name in another namespace is not the dependency.
        let elsewhere = [
            pack("app", &["db"], None),
            in_ns(pack("db", &[], Some(("True", 2))), "data"),
        ];
        assert_eq!(
            gate("ns", "app", &elsewhere, true),
            Gate::Waiting(vec!["db (not found)".into()])
        );
    }

    #[test]
    fn a_dependency_waits_only_for_dependents_deleted_too() {
        let deleting = |mut p: Pack| {
            p.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    "2026-01-01T00:00:00Z".parse().unwrap(),
                ));
            p
        };
        let packs = [
            deleting(pack("db", &[], None)),
            deleting(pack("app", &["db"], None)),
            pack("web", &["db"], None),
            deleting(in_ns(cross("other", "ns", "db"), "team")),
        ];
        assert_eq!(deleting_dependents("ns", "db", &packs, false), ["app"]);
        assert_eq!(
            deleting_dependents("ns", "db", &packs, true),
            ["app", "team/other"]
        );
        assert!(deleting_dependents("ns", "app", &packs, true).is_empty());
        assert!(depends_on(&packs[2], "ns", "db"));
        assert!(has_dependents("ns", "db", &packs, false));
        assert!(!has_dependents("ns", "web", &packs, true));
        assert!(!depends_on(&packs[2], "team", "db"));
    }

    #[test]
    fn a_cycle_is_named_in_order() {
        let packs = [
            pack("a", &["b"], None),
            pack("b", &["x", "c"], None),
            pack("c", &["a"], None),
            pack("x", &[], None),
        ];
        assert_eq!(
            gate("ns", "a", &packs, false),
            Gate::Cycle(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        assert_eq!(gate("ns", "x", &packs, false), Gate::Proceed);
        let own = [pack("s", &["s"], None)];
        assert_eq!(
            gate("ns", "s", &own, false),
            Gate::Cycle(vec!["s".into(), "s".into()])
        );
    }
}
