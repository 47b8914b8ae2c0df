//! Drift detection (`spec.driftDetection`): each object of a deployed release's manifest, as Helm applied
//! it, against the live object. The comparison is a server-side apply dry-run as Helm's own field
//! manager (`helm`, which Helm 4 applies with), forced: the API server merges exactly the fields Helm
//! sets into the live object, with its defaults and admission, and stores nothing. Fields only other
//! managers set (an HPA's or a mesh's additions, annotations added by hand, defaulted fields) are not in
//! Helm's configuration, so the merge leaves them as they are and they never count as drift. A field
//! Helm sets that someone changed (`kubectl scale`, `kubectl edit`) comes back in the merge: that
//! object drifted, at that path. Correcting is the same apply without the dry-run.
//!
//! Fields of `ignore` rules are set to their live value in the applied configuration (not left out: an
//! apply that leaves out a field its manager owns removes it), and are left out of the comparison.
//!
//! Only paths are reported, never values (a Secret's keys are named, not their content).
//!
//! Cost of one check: one GET of the release Secret, then per object of the manifest one GET and one
//! dry-run PATCH, plus one discovery request per kind outside the built-in ones. No Helm process.

use std::collections::HashMap;

use common::crd::pack::{DriftIgnoreRule, DriftMode};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    core::GroupVersionKind,
    discovery::{self, Scope},
};
use serde_json::Value;

use crate::error::Error;

/// The condition type.
pub const DRIFTED: &str = "Drifted";
/// `Drifted=True`: mode `warn` found objects that differ from the release.
pub const DRIFT_DETECTED: &str = "DriftDetected";
/// `Drifted=False` after mode `enabled` re-applied drifted objects.
pub const DRIFT_CORRECTED: &str = "DriftCorrected";
/// `Drifted=False`: every object is as Helm applied it.
pub const NO_DRIFT: &str = "NoDrift";
/// `Drifted=False`: the check itself failed (the message says why); Ready is not affected.
pub const DRIFT_CHECK_FAILED: &str = "DriftCheckFailed";
/// Helm 4's field manager for server-side apply.
pub const HELM_FIELD_MANAGER: &str = "helm";
/// Paths named per object in messages; the rest are counted.
const PATHS_SHOWN: usize = 5;

/// One drifted object: `Kind/name` and the JSON pointers that differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub object: String,
    pub paths: Vec<String>,
}

/// The documents of a release's manifest, as objects (hooks are not in it: Helm keeps them apart).
pub fn manifest_documents(manifest: &str) -> Vec<Value> {
    manifest
        .split("\n---")
        .filter_map(|doc| serde_yaml::from_str::<Value>(doc).ok())
        .filter(|doc| doc.get("kind").is_some() && doc.pointer("/metadata/name").is_some())
        .collect()
}

/// The pointers of `rules` that apply to an object of `kind` named `name`.
pub fn ignored<'a>(rules: &'a [DriftIgnoreRule], kind: &str, name: &str) -> Vec<&'a str> {
    rules
        .iter()
        .filter(|r| {
            r.target.as_ref().is_none_or(|t| {
                t.kind.as_deref().is_none_or(|k| k == kind)
                    && t.name.as_deref().is_none_or(|n| n == name)
            })
        })
        .flat_map(|r| r.paths.iter().map(String::as_str))
        .collect()
}

/// Sets each of `pointers` in `config` to its value in `live`, or removes it when `live` has none: an
/// ignored field is applied as it is live, so the apply neither changes nor removes it.
pub fn keep_live(config: &mut Value, live: Option<&Value>, pointers: &[&str]) {
    for pointer in pointers {
        match live.and_then(|l| l.pointer(pointer)) {
            Some(value) => set_pointer(config, pointer, value.clone()),
            None => remove_pointer(config, pointer),
        }
    }
}

/// `object` without what no apply decides or what changes between the read and the dry-run:
/// `managedFields`, `resourceVersion`, `generation`, `status`, and the `ignored` pointers.
pub fn comparable(mut object: Value, ignored: &[&str]) -> Value {
    if let Value::Object(map) = &mut object {
        map.remove("status");
    }
    if let Some(Value::Object(metadata)) = object.get_mut("metadata") {
        for field in ["managedFields", "resourceVersion", "generation"] {
            metadata.remove(field);
        }
    }
    for pointer in ignored {
        remove_pointer(&mut object, pointer);
    }
    object
}

/// The JSON pointers where `live` and `merged` differ (leaves, objects' keys on either side, whole
/// arrays of different lengths), in order.
pub fn differing_paths(live: &Value, merged: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(live, merged, &mut String::new(), &mut out);
    out
}

fn walk(a: &Value, b: &Value, path: &mut String, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let len = path.len();
                path.push('/');
                path.push_str(&key.replace('~', "~0").replace('/', "~1"));
                match (x.get(key), y.get(key)) {
                    (Some(a), Some(b)) => walk(a, b, path, out),
                    _ => out.push(path.clone()),
                }
                path.truncate(len);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (a, b)) in x.iter().zip(y).enumerate() {
                let len = path.len();
                path.push_str(&format!("/{i}"));
                walk(a, b, path, out);
                path.truncate(len);
            }
        }
        (a, b) if a == b => {}
        _ => out.push(if path.is_empty() {
            "/".into()
        } else {
            path.clone()
        }),
    }
}

/// `Deployment/web: /spec/replicas; ConfigMap/settings: /data/a, /data/b (+3 more)`.
pub fn summary(drifts: &[Drift]) -> String {
    drifts
        .iter()
        .map(|d| {
            let mut paths = d.paths[..d.paths.len().min(PATHS_SHOWN)].join(", ");
            if d.paths.len() > PATHS_SHOWN {
                paths.push_str(&format!(" (+{} more)", d.paths.len() - PATHS_SHOWN));
            }
            format!("{}: {paths}", d.object)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Adds what Helm writes on every object it applies besides the manifest: the `managed-by` label and the
/// release annotations (an apply without them would remove them, since Helm owns them).
pub fn with_helm_ownership(config: &mut Value, release: &str, namespace: &str) {
    set_pointer(
        config,
        "/metadata/labels/app.kubernetes.io~1managed-by",
        "Helm".into(),
    );
    set_pointer(
        config,
        "/metadata/annotations/meta.helm.sh~1release-name",
        release.into(),
    );
    set_pointer(
        config,
        "/metadata/annotations/meta.helm.sh~1release-namespace",
        namespace.into(),
    );
}

fn set_pointer(target: &mut Value, pointer: &str, value: Value) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let key = unescape(last);
    if target.pointer(parent).is_none() {
        // Create the missing objects on the way (an ignored field under a map the chart does not set).
        let mut node = &mut *target;
        for segment in parent.split('/').skip(1) {
            let segment = unescape(segment);
            let Value::Object(map) = node else { return };
            node = map
                .entry(segment)
                .or_insert_with(|| Value::Object(Default::default()));
        }
    }
    match target.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(key, value);
        }
        Some(Value::Array(items)) => {
            if let Some(slot) = key.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                *slot = value;
            }
        }
        _ => {}
    }
}

fn remove_pointer(target: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    if let Some(Value::Object(map)) = target.pointer_mut(parent) {
        map.remove(&unescape(last));
    }
}

fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

/// Compares every object of `manifest` with the live one (module doc) and, with `mode` `Enabled`,
/// re-applies the drifted ones. Returns the drifted objects (corrected ones included).
pub async fn check(
    client: &Client,
    namespace: &str,
    release: &str,
    manifest: &str,
    rules: &[DriftIgnoreRule],
    mode: DriftMode,
) -> Result<Vec<Drift>, Error> {
    let mut resources: HashMap<GroupVersionKind, (ApiResource, bool)> = HashMap::new();
    let mut drifts = Vec::new();
    for mut config in manifest_documents(manifest) {
        let api_version = config["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind = config["kind"].as_str().unwrap_or_default().to_owned();
        let name = config["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
        let gvk = GroupVersionKind::gvk(group, version, &kind);
        let (resource, namespaced) = match resources.get(&gvk) {
            Some(r) => r.clone(),
            None => {
                let (resource, caps) = discovery::pinned_kind(client, &gvk).await?;
                let r = (resource, caps.scope == Scope::Namespaced);
                resources.insert(gvk, r.clone());
                r
            }
        };
        let api: Api<DynamicObject> = if namespaced {
            let ns = config["metadata"]["namespace"]
                .as_str()
                .unwrap_or(namespace)
                .to_owned();
            config["metadata"]["namespace"] = ns.clone().into();
            Api::namespaced_with(client.clone(), &ns, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        let live = api
            .get_opt(&name)
            .await?
            .map(|o| serde_json::to_value(o).unwrap_or_default());
        with_helm_ownership(&mut config, release, namespace);
        let ignored = ignored(rules, &kind, &name);
        keep_live(&mut config, live.as_ref(), &ignored);
        let object = format!("{kind}/{name}");
        let params = PatchParams::apply(HELM_FIELD_MANAGER).force();
        let paths = match &live {
            None => vec!["/".to_owned()],
            Some(live) => {
                let merged = api
                    .patch(&name, &params.clone().dry_run(), &Patch::Apply(&config))
                    .await?;
                let merged = serde_json::to_value(merged).unwrap_or_default();
                differing_paths(
                    &comparable(live.clone(), &ignored),
                    &comparable(merged, &ignored),
                )
            }
        };
        if paths.is_empty() {
            continue;
        }
        if mode == DriftMode::Enabled {
            api.patch(&name, &params, &Patch::Apply(&config)).await?;
        }
        drifts.push(Drift { object, paths });
    }
    Ok(drifts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::crd::pack::DriftIgnoreTarget;
    use serde_json::json;

    #[test]
    fn paths_name_where_objects_differ_and_nothing_when_equal() {
        let live = json!({"spec": {"replicas": 3, "template": {"metadata": {"annotations": {"a/b": "x"}}},
            "ports": [{"port": 80}, {"port": 81}]}, "data": {"k": "v"}});
        let merged = json!({"spec": {"replicas": 1, "template": {"metadata": {"annotations": {"a/b": "y"}}},
            "ports": [{"port": 80}, {"port": 82}]}, "data": {"k": "v", "new": "w"}});
        assert_eq!(
            differing_paths(&live, &merged),
            [
                "/data/new",
                "/spec/ports/1/port",
                "/spec/replicas",
                "/spec/template/metadata/annotations/a~1b"
            ]
        );
        assert!(differing_paths(&live, &live).is_empty());
        assert_eq!(
            differing_paths(&json!({"a": [1]}), &json!({"a": [1, 2]})),
            ["/a"]
        );
    }

    #[test]
    fn comparable_leaves_out_what_no_apply_decides_and_ignored_fields() {
        let o = json!({"metadata": {"name": "x", "resourceVersion": "9", "generation": 2,
            "managedFields": []}, "spec": {"replicas": 3, "paused": false}, "status": {"ready": 1}});
        assert_eq!(
            comparable(o, &["/spec/replicas"]),
            json!({"metadata": {"name": "x"}, "spec": {"paused": false}})
        );
    }

    #[test]
    fn ignored_fields_are_applied_as_they_are_live() {
        let mut config = json!({"spec": {"replicas": 1}, "metadata": {"name": "x"}});
        let live =
            json!({"spec": {"replicas": 4}, "metadata": {"annotations": {"team/owner": "a"}}});
        keep_live(
            &mut config,
            Some(&live),
            &[
                "/spec/replicas",
                "/metadata/annotations/team~1owner",
                "/spec/gone",
            ],
        );
        assert_eq!(
            config,
            json!({"spec": {"replicas": 4}, "metadata": {"name": "x", "annotations": {"team/owner": "a"}}})
        );
        // Not live: left out of the configuration.
        let mut config = json!({"spec": {"replicas": 1}});
        keep_live(&mut config, None, &["/spec/replicas"]);
        assert_eq!(config, json!({"spec": {}}));
    }

    #[test]
    fn helm_ownership_is_added_as_helm_writes_it() {
        let mut config = json!({"metadata": {"name": "x", "labels": {"app": "x"}}});
        with_helm_ownership(&mut config, "app", "team");
        assert_eq!(
            config,
            json!({"metadata": {"name": "x",
                "labels": {"app": "x", "app.kubernetes.io/managed-by": "Helm"},
                "annotations": {"meta.helm.sh/release-name": "app", "meta.helm.sh/release-namespace": "team"}}})
        );
    }

    #[test]
    fn ignore_rules_match_by_kind_and_name() {
        let rules = vec![
            DriftIgnoreRule {
                paths: vec!["/spec/replicas".into()],
                target: Some(DriftIgnoreTarget {
                    kind: Some("Deployment".into()),
                    name: None,
                }),
            },
            DriftIgnoreRule {
                paths: vec!["/metadata/labels".into()],
                target: None,
            },
            DriftIgnoreRule {
                paths: vec!["/data".into()],
                target: Some(DriftIgnoreTarget {
                    kind: Some("ConfigMap".into()),
                    name: Some("other".into()),
                }),
            },
        ];
        assert_eq!(
            ignored(&rules, "Deployment", "web"),
            ["/spec/replicas", "/metadata/labels"]
        );
        assert_eq!(ignored(&rules, "ConfigMap", "web"), ["/metadata/labels"]);
        assert_eq!(
            ignored(&rules, "ConfigMap", "other"),
            ["/metadata/labels", "/data"]
        );
    }

    #[test]
    fn summary_names_objects_and_at_most_five_paths_each() {
        let many: Vec<String> = (0..7).map(|i| format!("/data/k{i}")).collect();
        let s = summary(&[
            Drift {
                object: "Deployment/web".into(),
                paths: vec!["/spec/replicas".into()],
            },
            Drift {
                object: "ConfigMap/c".into(),
                paths: many,
            },
        ]);
        assert_eq!(
            s,
            "Deployment/web: /spec/replicas; ConfigMap/c: /data/k0, /data/k1, /data/k2, /data/k3, /data/k4 (+2 more)"
        );
    }

    #[test]
    fn manifest_documents_are_the_objects_of_the_manifest() {
        let manifest = "---\n# Source: c/templates/a.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\n# Source: c/templates/empty.yaml\n\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n";
        let docs = manifest_documents(manifest);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1]["kind"], "Deployment");
    }
}
