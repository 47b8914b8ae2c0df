//! `pack_operator_condition{kind,name,namespace,type,status}`: the status conditions of every object a
//! controller reports on (Packs, ClusterPackRepositories, SecretReflectors, ConfigMapReflectors), as
//! Flux's `gotk_reconcile_condition`. Each condition of an object has three series, one per status
//! (`True`, `False`, `Unknown`): the current one is 1, the others 0, so `== 1` selects the current status
//! and an alert's `for:` holds while it stays.
//!
//! Fed by [`crate::status::write`] on every reconcile (also when nothing changed, so a restarted
//! controller reports its objects again) and emptied for an object when it is deleted ([`forget`]) and
//! for every object when the replica stops leading ([`clear`]): series exist only for live objects the
//! leader reconciles, three per condition type.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{LazyLock, Mutex},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

const STATUSES: [&str; 3] = ["True", "False", "Unknown"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    kind: String,
    name: String,
    namespace: String,
    r#type: String,
    status: String,
}

/// One object: kind, namespace ("" when cluster-scoped), name.
type ObjectKey = (String, String, String);

#[derive(Default)]
struct Conditions {
    family: Family<ConditionLabels, Gauge>,
    /// The condition types each object has series for, to remove them all later.
    types: Mutex<HashMap<ObjectKey, BTreeSet<String>>>,
}

static CONDITIONS: LazyLock<Conditions> = LazyLock::new(Conditions::default);

/// Registers the family (once per process, on the prefixed registry).
pub fn register(registry: &mut Registry) {
    registry.register(
        "condition",
        "Status conditions of the objects this controller reconciles: 1 for the current status of each \
         condition type, 0 for the other two",
        CONDITIONS.family.clone(),
    );
}

fn labels(key: &ObjectKey, r#type: &str, status: &str) -> ConditionLabels {
    ConditionLabels {
        kind: key.0.clone(),
        namespace: key.1.clone(),
        name: key.2.clone(),
        r#type: r#type.to_owned(),
        status: status.to_owned(),
    }
}

fn key(kind: &str, namespace: Option<&str>, name: &str) -> ObjectKey {
    (
        kind.to_owned(),
        namespace.unwrap_or_default().to_owned(),
        name.to_owned(),
    )
}

fn remove_types<'a>(key: &ObjectKey, types: impl IntoIterator<Item = &'a String>) {
    for t in types {
        for s in STATUSES {
            CONDITIONS.family.remove(&labels(key, t, s));
        }
    }
}

/// Reports the conditions `(type, status)` of one object, replacing what was reported for it before.
pub fn observe<'a>(
    kind: &str,
    namespace: Option<&str>,
    name: &str,
    conditions: impl IntoIterator<Item = (&'a str, &'a str)>,
) {
    let key = key(kind, namespace, name);
    let mut types = CONDITIONS.types.lock().unwrap_or_else(|e| e.into_inner());
    let mut now = BTreeSet::new();
    for (t, status) in conditions {
        now.insert(t.to_owned());
        for s in STATUSES {
            let value = i64::from(s == status);
            CONDITIONS
                .family
                .get_or_create(&labels(&key, t, s))
                .set(value);
        }
    }
    if let Some(before) = types.get(&key) {
        remove_types(&key, before.difference(&now));
    }
    if now.is_empty() {
        types.remove(&key);
    } else {
        types.insert(key, now);
    }
}

/// Reports the conditions found in a serialized status (`status.conditions[].type/status`).
pub fn observe_status(kind: &str, namespace: Option<&str>, name: &str, status: &serde_json::Value) {
    let conditions = status
        .get("conditions")
        .and_then(|c| c.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    observe(
        kind,
        namespace,
        name,
        conditions
            .iter()
            .filter_map(|c| Some((c.get("type")?.as_str()?, c.get("status")?.as_str()?))),
    );
}

/// Removes every series of one object (it was deleted).
pub fn forget(kind: &str, namespace: Option<&str>, name: &str) {
    let key = key(kind, namespace, name);
    let mut types = CONDITIONS.types.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(before) = types.remove(&key) {
        remove_types(&key, &before);
    }
}

/// Removes every series (this replica no longer leads: another one reports).
pub fn clear() {
    let mut types = CONDITIONS.types.lock().unwrap_or_else(|e| e.into_inner());
    types.clear();
    CONDITIONS.family.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded() -> String {
        let mut registry = Registry::with_prefix(crate::metrics::PREFIX);
        register(&mut registry);
        crate::metrics::encode(&registry).unwrap()
    }

    fn series(text: &str, name: &str) -> Vec<String> {
        let needle = format!("name=\"{name}\"");
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }

    // One test: the family is process-wide, parallel tests would see each other's objects (each uses
    // its own names, and `clear` would remove the others').
    #[test]
    fn an_object_has_three_series_per_condition_until_it_goes() {
        observe(
            "Pack",
            Some("ns"),
            "web",
            [("Ready", "False"), ("Stalled", "True")],
        );
        let text = encoded();
        let web = series(&text, "web");
        assert_eq!(web.len(), 6, "{text}");
        assert!(text.contains(
            "pack_operator_condition{kind=\"Pack\",name=\"web\",namespace=\"ns\",type=\"Ready\",status=\"False\"} 1"
        ), "{text}");
        assert!(text.contains(
            "pack_operator_condition{kind=\"Pack\",name=\"web\",namespace=\"ns\",type=\"Ready\",status=\"True\"} 0"
        ), "{text}");

        // A condition that is no longer there loses its series; a cluster-scoped object has namespace "".
        observe("Pack", Some("ns"), "web", [("Ready", "True")]);
        let repo = serde_json::json!({"conditions": [{"type": "Ready", "status": "Unknown"}]});
        observe_status("ClusterPackRepository", None, "charts", &repo);
        let text = encoded();
        assert_eq!(series(&text, "web").len(), 3, "{text}");
        assert!(!text.contains("Stalled"), "{text}");
        assert!(text.contains(
            "pack_operator_condition{kind=\"ClusterPackRepository\",name=\"charts\",namespace=\"\",type=\"Ready\",status=\"Unknown\"} 1"
        ), "{text}");

        forget("Pack", Some("ns"), "web");
        let text = encoded();
        assert!(series(&text, "web").is_empty(), "{text}");
        assert_eq!(series(&text, "charts").len(), 3, "{text}");
        clear();
        assert!(series(&encoded(), "charts").is_empty());
    }
}
