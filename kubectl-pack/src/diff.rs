//! `kubectl pack diff`: each object the Pack's chart renders against the live object, by a server-side
//! apply dry-run (as `kubectl diff`): the API server merges the rendered object into the live one with
//! its defaults, admission and field ownership, and nothing is stored. Objects that are Helm hooks are
//! skipped (they are not kept live); objects the chart no longer renders are not shown.

use anyhow::Context as _;
use kube::{
    Api, Client,
    api::{DynamicObject, GroupVersionKind, Patch, PatchParams},
    discovery::{self, Scope},
};
use serde_json::Value;
use similar::TextDiff;

use crate::secrets;

/// The field manager of the dry-run (never stored).
const FIELD_MANAGER: &str = "kubectl-pack";

/// One rendered object and what the dry-run says applying it would make of the live object.
#[derive(Debug)]
pub struct ObjectDiff {
    /// The unified diff (headed `live/Kind/namespace/name`, `rendered/…`), empty when applying would
    /// change nothing.
    pub diff: String,
}

/// Diffs every object of `manifests` (helm template's output), defaulting to `namespace`.
pub async fn diff(
    client: &Client,
    manifests: &str,
    namespace: &str,
    show_secrets: bool,
) -> anyhow::Result<Vec<ObjectDiff>> {
    let mut out = vec![];
    for document in secrets::split_documents(manifests) {
        let object: Value =
            serde_yaml::from_str(&document).context("helm rendered invalid YAML")?;
        if !object.is_object() || is_hook(&object) {
            continue;
        }
        out.push(diff_object(client, object, namespace, show_secrets).await?);
    }
    Ok(out)
}

fn is_hook(object: &Value) -> bool {
    object
        .pointer("/metadata/annotations/helm.sh~1hook")
        .is_some()
}

async fn diff_object(
    client: &Client,
    mut object: Value,
    namespace: &str,
    show_secrets: bool,
) -> anyhow::Result<ObjectDiff> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default().to_owned();
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
    let gvk = GroupVersionKind::gvk(group, version, &kind);
    let (resource, capabilities) = discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("the API server does not serve {api_version} {kind}"))?;
    let (api, label): (Api<DynamicObject>, String) = if capabilities.scope == Scope::Namespaced {
        let ns = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or(namespace)
            .to_owned();
        object["metadata"]["namespace"] = ns.clone().into();
        let api = Api::namespaced_with(client.clone(), &ns, &resource);
        (api, format!("{kind}/{ns}/{name}"))
    } else {
        (
            Api::all_with(client.clone(), &resource),
            format!("{kind}/{name}"),
        )
    };
    let live = api
        .get_opt(&name)
        .await
        .with_context(|| format!("cannot read {label}"))?;
    let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
    let merged = api
        .patch(&name, &params, &Patch::Apply(&object))
        .await
        .with_context(|| format!("the server-side apply dry-run of {label} failed"))?;
    let mut before = live.map_or(Value::Null, |l| comparable(serde_json::to_value(l)));
    let mut after = comparable(serde_json::to_value(merged));
    if !show_secrets {
        secrets::mask_pair(&mut before, &mut after);
    }
    Ok(ObjectDiff {
        diff: unified(&label, &before, &after),
    })
}

/// The object without what an apply does not decide and other writers change between the read and the
/// dry-run: `managedFields`, `resourceVersion` and `status` (a controller's).
fn comparable(object: Result<Value, serde_json::Error>) -> Value {
    let mut object = object.unwrap_or(Value::Null);
    if let Value::Object(map) = &mut object {
        map.remove("status");
    }
    if let Some(Value::Object(metadata)) = object.get_mut("metadata") {
        metadata.remove("managedFields");
        metadata.remove("resourceVersion");
    }
    object
}

/// The unified diff of `before` and `after` as YAML; empty when equal.
pub fn unified(label: &str, before: &Value, after: &Value) -> String {
    if before == after {
        return String::new();
    }
    let yaml = |v: &Value| match v {
        Value::Null => String::new(),
        v => serde_yaml::to_string(v).unwrap_or_default(),
    };
    let (a, b) = (yaml(before), yaml(after));
    TextDiff::from_lines(&a, &b)
        .unified_diff()
        .header(&format!("live/{label}"), &format!("rendered/{label}"))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_changed_field_is_one_hunk_and_equal_objects_no_diff() {
        let live = json!({"kind": "Deployment", "spec": {"replicas": 5, "paused": false}});
        let rendered = json!({"kind": "Deployment", "spec": {"replicas": 1, "paused": false}});
        let d = unified("Deployment/ns/web", &live, &rendered);
        assert!(
            d.starts_with("--- live/Deployment/ns/web\n+++ rendered/Deployment/ns/web\n"),
            "{d}"
        );
        assert!(
            d.contains("-  replicas: 5\n") && d.contains("+  replicas: 1\n"),
            "{d}"
        );
        assert_eq!(unified("x", &live, &live), "");
    }

    #[test]
    fn a_missing_live_object_is_all_added() {
        let d = unified(
            "ConfigMap/ns/c",
            &Value::Null,
            &json!({"kind": "ConfigMap"}),
        );
        assert!(d.contains("+kind: ConfigMap"), "{d}");
    }
}
