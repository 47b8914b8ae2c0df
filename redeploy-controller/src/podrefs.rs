//! Auto discovery (`watch-to-redeploy-auto: "true"`): which ConfigMaps and Secrets a pod template
//! references, and which of their keys it uses. Pure functions over the pod spec; the reconcile reads
//! the workload and hands its template here.
//!
//! Watched: `env[].valueFrom.configMapKeyRef`/`secretKeyRef` (that key only), `envFrom` (every key),
//! `volumes[].configMap`/`secret` and `projected.sources[].configMap`/`secret` (the keys of `items`,
//! every key without `items`), in containers and init containers (sidecars are init containers).
//! Not watched: `imagePullSecrets` (not read by the pods' processes), ServiceAccount tokens and
//! `downwardAPI`/`clusterTrustBundle` projections (not ConfigMaps/Secrets of the namespace). Ephemeral
//! containers cannot be part of a template, so they are not looked at.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use common::annotation::{WatchKind, WatchTarget};
use k8s_openapi::api::core::v1::{Container, KeyToPath, PodSpec};

/// The annotation that turns auto discovery on: exactly `"true"` or `"false"`.
pub const AUTO_ANNOTATION: &str = "pack-operator.k8s.kubit.ir/watch-to-redeploy-auto";

/// Reads [`AUTO_ANNOTATION`]: `Ok(true)` for `"true"`, `Ok(false)` for `"false"`, else an error
/// message saying what to write (the admission policy gives the same verdict).
pub fn parse_auto(value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!(
            "annotation {AUTO_ANNOTATION} must be \"true\" or \"false\" (lower case, quoted in YAML), not {:?}",
            truncate(other)
        )),
    }
}

fn truncate(value: &str) -> String {
    value.chars().take(80).collect()
}

/// A watched object and the keys of it that matter: `None` is every key (the whole `data`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Watched {
    pub target: WatchTarget,
    pub keys: Option<BTreeSet<String>>,
}

impl Watched {
    /// The whole object (an explicit `watch-to-redeploy` entry, an `envFrom`, a volume without items).
    pub fn whole(target: WatchTarget) -> Self {
        Watched { target, keys: None }
    }
}

/// `configmap/app` for the whole object, `configmap/app:k1,k2` for some keys: the record's key on
/// the workload, so a template that starts using another key is a new baseline, not a change.
impl fmt::Display for Watched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.target)?;
        if let Some(keys) = &self.keys {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            write!(f, ":{}", keys.join(","))?;
        }
        Ok(())
    }
}

/// Accumulates references: per object, the union of used keys, where "every key" wins.
#[derive(Default)]
struct References(BTreeMap<WatchTarget, Option<BTreeSet<String>>>);

impl References {
    fn add(&mut self, kind: WatchKind, name: &str, keys: Option<BTreeSet<String>>) {
        if name.is_empty() {
            return;
        }
        let target = WatchTarget {
            kind,
            name: name.to_owned(),
        };
        match (self.0.get_mut(&target), keys) {
            (None, keys) => {
                self.0.insert(target, keys);
            }
            (Some(slot), None) => *slot = None,
            (Some(Some(have)), Some(more)) => have.extend(more),
            (Some(None), Some(_)) => {}
        }
    }

    fn into_watched(self) -> Vec<Watched> {
        self.0
            .into_iter()
            .map(|(target, keys)| Watched { target, keys })
            .collect()
    }
}

fn item_keys(items: &Option<Vec<KeyToPath>>) -> Option<BTreeSet<String>> {
    items
        .as_ref()
        .map(|items| items.iter().map(|i| i.key.clone()).collect())
}

fn container_refs(c: &Container, refs: &mut References) {
    for var in c.env.iter().flatten() {
        let Some(from) = &var.value_from else {
            continue;
        };
        if let Some(r) = &from.config_map_key_ref {
            refs.add(WatchKind::ConfigMap, &r.name, Some([r.key.clone()].into()));
        }
        if let Some(r) = &from.secret_key_ref {
            refs.add(WatchKind::Secret, &r.name, Some([r.key.clone()].into()));
        }
    }
    for from in c.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref {
            refs.add(WatchKind::ConfigMap, &r.name, None);
        }
        if let Some(r) = &from.secret_ref {
            refs.add(WatchKind::Secret, &r.name, None);
        }
    }
}

fn volume_refs(spec: &PodSpec, refs: &mut References) {
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            refs.add(WatchKind::ConfigMap, &cm.name, item_keys(&cm.items));
        }
        if let Some(s) = &v.secret {
            let name = s.secret_name.as_deref().unwrap_or_default();
            refs.add(WatchKind::Secret, name, item_keys(&s.items));
        }
        let sources = v.projected.iter().flat_map(|p| p.sources.iter().flatten());
        for source in sources {
            if let Some(cm) = &source.config_map {
                refs.add(WatchKind::ConfigMap, &cm.name, item_keys(&cm.items));
            }
            if let Some(s) = &source.secret {
                refs.add(WatchKind::Secret, &s.name, item_keys(&s.items));
            }
        }
    }
}

/// Every ConfigMap and Secret the pod spec references, with the keys it uses, sorted.
pub fn referenced(spec: &PodSpec) -> Vec<Watched> {
    let mut refs = References::default();
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        container_refs(c, &mut refs);
    }
    volume_refs(spec, &mut refs);
    refs.into_watched()
}

/// The union of the explicit list (whole objects) and what auto discovery found in `specs` (the pod
/// templates of the workload, or of every workload of a Pack's release).
pub fn union(explicit: &[WatchTarget], specs: &[PodSpec]) -> Vec<Watched> {
    let mut refs = References::default();
    for t in explicit {
        refs.add(t.kind, &t.name, None);
    }
    for spec in specs {
        for w in referenced(spec) {
            refs.add(w.target.kind, &w.target.name, w.keys);
        }
    }
    refs.into_watched()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).expect("pod spec")
    }
    fn shown(watched: &[Watched]) -> Vec<String> {
        watched.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn auto_values() {
        assert_eq!(parse_auto("true"), Ok(true));
        assert_eq!(parse_auto("false"), Ok(false));
        for bad in ["True", "yes", "1", "", " true", "on"] {
            let e = parse_auto(bad).unwrap_err();
            assert!(e.contains("must be \"true\" or \"false\""), "{bad}: {e}");
        }
    }

    /// The corpus shared with the admission policy's e2e test.
    #[test]
    fn option_corpus() {
        let corpus: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/corpus/redeploy-options.json")).unwrap();
        let cases = corpus["cases"].as_array().unwrap();
        assert!(cases.len() >= 20, "{} cases", cases.len());
        for case in cases {
            let (value, valid) = (case["value"].as_str().unwrap(), case["valid"].as_bool());
            let parsed = match case["annotation"].as_str() {
                Some("auto") => parse_auto(value).is_ok(),
                Some("delay") => common::cli::parse_duration(value).is_ok(),
                other => panic!("unknown annotation {other:?}"),
            };
            assert_eq!(Some(parsed), valid, "{case}");
        }
    }

    #[test]
    fn references_of_pod_templates() {
        let c = |extra: serde_json::Value| {
            let mut c = json!({"name": "app"});
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            c
        };
        let cases: Vec<(&str, serde_json::Value, Vec<&str>)> = vec![
            ("nothing", json!({"containers": [c(json!({}))]}), vec![]),
            (
                "envFrom: whole objects",
                json!({"containers": [c(json!({"envFrom": [{"configMapRef": {"name": "cm"}}, {"secretRef": {"name": "s"}, "prefix": "S_"}]}))]}),
                vec!["configmap/cm", "secret/s"],
            ),
            (
                "key refs: those keys only, unioned",
                json!({"containers": [c(json!({"env": [
                    {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "b"}}},
                    {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "a", "optional": true}}},
                    {"name": "C", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
                    {"name": "D", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "E", "value": "x"}]}))]}),
                vec!["configmap/cm:a,b", "secret/s:pw"],
            ),
            (
                "a whole reference wins over keys",
                json!({"containers": [c(json!({
                    "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "a"}}}],
                    "envFrom": [{"configMapRef": {"name": "cm"}}]}))]}),
                vec!["configmap/cm"],
            ),
            (
                "init containers and sidecars",
                json!({"containers": [c(json!({}))], "initContainers": [
                    c(json!({"envFrom": [{"secretRef": {"name": "init"}}]})),
                    c(json!({"restartPolicy": "Always", "envFrom": [{"configMapRef": {"name": "sidecar"}}]}))]}),
                vec!["configmap/sidecar", "secret/init"],
            ),
            (
                "volumes: items name keys, no items is every key",
                json!({"containers": [c(json!({}))], "volumes": [
                    {"name": "a", "configMap": {"name": "cm", "items": [{"key": "k", "path": "p"}]}},
                    {"name": "b", "secret": {"secretName": "tls"}},
                    {"name": "c", "secret": {"secretName": "some", "items": [{"key": "x", "path": "x"}, {"key": "y", "path": "y"}]}},
                    {"name": "d", "emptyDir": {}}]}),
                vec!["configmap/cm:k", "secret/some:x,y", "secret/tls"],
            ),
            (
                "projected sources; SA tokens and downward API are not watched",
                json!({"containers": [c(json!({}))], "volumes": [{"name": "p", "projected": {"sources": [
                    {"configMap": {"name": "pc"}},
                    {"secret": {"name": "ps", "items": [{"key": "k", "path": "k"}]}},
                    {"serviceAccountToken": {"path": "token"}},
                    {"downwardAPI": {"items": [{"path": "n", "fieldRef": {"fieldPath": "metadata.name"}}]}}]}}]}),
                vec!["configmap/pc", "secret/ps:k"],
            ),
            (
                "imagePullSecrets are not watched",
                json!({"containers": [c(json!({}))], "imagePullSecrets": [{"name": "regcred"}]}),
                vec![],
            ),
        ];
        for (name, s, expected) in cases {
            assert_eq!(shown(&referenced(&spec(s))), expected, "{name}");
        }
    }

    #[test]
    fn union_with_the_explicit_list() {
        let a = spec(json!({"containers": [{"name": "a", "env": [
            {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "a"}}}]}]}));
        let b = spec(json!({"containers": [{"name": "b", "env": [
            {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "b"}}}]}]}));
        let explicit = vec![WatchTarget {
            kind: WatchKind::Secret,
            name: "extra".into(),
        }];
        assert_eq!(
            shown(&union(&explicit, &[a.clone(), b])),
            vec!["configmap/cm:a,b", "secret/extra"],
            "two workloads of a Pack: keys unioned"
        );
        let explicit_cm = vec![WatchTarget {
            kind: WatchKind::ConfigMap,
            name: "cm".into(),
        }];
        assert_eq!(
            shown(&union(&explicit_cm, &[a])),
            vec!["configmap/cm"],
            "an explicit entry watches every key"
        );
    }
}
