//! `spec.dependsOn`: whether a Pack may go on, from the Packs of its namespace. Pure, unit-tested.

use std::collections::HashMap;

use common::{conditions, crd::Pack};
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
}

/// The gate of Pack `name` among `packs` (the Packs of its namespace).
pub fn gate(name: &str, packs: &[Pack]) -> Gate {
    let by_name: HashMap<String, &Pack> = packs.iter().map(|p| (p.name_any(), p)).collect();
    let Some(pack) = by_name.get(name) else {
        return Gate::Proceed;
    };
    if let Some(cycle) = cycle_through(name, &by_name) {
        return Gate::Cycle(cycle);
    }
    let waiting: Vec<String> = pack
        .spec
        .depends_on
        .iter()
        .filter_map(|d| match by_name.get(&d.name) {
            None => Some(format!("{} (not found)", d.name)),
            Some(p) => not_ready(p).map(|why| format!("{} ({why})", d.name)),
        })
        .collect();
    if waiting.is_empty() {
        Gate::Proceed
    } else {
        Gate::Waiting(waiting)
    }
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
fn cycle_through(start: &str, by_name: &HashMap<String, &Pack>) -> Option<Vec<String>> {
    let mut stack: Vec<(String, usize)> = vec![(start.to_owned(), 0)];
    let mut seen = std::collections::HashSet::new();
    while let Some((name, next)) = stack.last().cloned() {
        let deps = by_name
            .get(&name)
            .map(|p| p.spec.depends_on.as_slice())
            .unwrap_or_default();
        let Some(dep) = deps.get(next) else {
            stack.pop();
            continue;
        };
        stack.last_mut().expect("not empty").1 += 1;
        if dep.name == start {
            let mut path: Vec<String> = stack.iter().map(|(n, _)| n.clone()).collect();
            path.push(start.to_owned());
            return Some(path);
        }
        if seen.insert(dep.name.clone()) {
            stack.push((dep.name.clone(), 0));
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
            gate("app", &packs),
            Gate::Waiting(vec![
                "cache (generation not observed yet)".into(),
                "gone (not found)".into()
            ])
        );
        let packs = [
            pack("app", &["db"], None),
            pack("db", &[], Some(("True", 2))),
        ];
        assert_eq!(gate("app", &packs), Gate::Proceed);
        let packs = [
            pack("app", &["db"], None),
            pack("db", &[], Some(("False", 2))),
        ];
        assert_eq!(
            gate("app", &packs),
            Gate::Waiting(vec!["db (Ready=False Applied)".into()])
        );
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
            gate("a", &packs),
            Gate::Cycle(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        assert_eq!(gate("x", &packs), Gate::Proceed);
        let own = [pack("s", &["s"], None)];
        assert_eq!(gate("s", &own), Gate::Cycle(vec!["s".into(), "s".into()]));
    }
}
