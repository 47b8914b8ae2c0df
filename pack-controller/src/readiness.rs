//! Whether a release's objects are ready (`spec.wait`), by the rules of kstatus (sigs.k8s.io/cli-utils):
//! which objects a release holds (its manifest) and, for one object as the API server returns it, whether
//! it is ready and if not why. Pure, unit-tested without a cluster; the reconcile reads the objects.

use serde_json::Value;

/// One object of a release's manifest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReleaseObject {
    pub api_version: String,
    pub kind: String,
    /// None: cluster-scoped, or namespaced in the release's namespace (the manifest omits it).
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for ReleaseObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// The objects of a release's manifest (Helm's multi-document YAML, hooks excluded: Helm keeps those
/// apart). Documents that do not parse or name no kind are skipped: Helm applied them, so they parse.
pub fn manifest_objects(manifest: &str) -> Vec<ReleaseObject> {
    let mut objects: Vec<ReleaseObject> = manifest
        .split("\n---")
        .filter_map(|doc| serde_yaml::from_str::<Value>(doc).ok())
        .filter_map(|doc| {
            Some(ReleaseObject {
                api_version: doc.get("apiVersion")?.as_str()?.to_owned(),
                kind: doc.get("kind")?.as_str()?.to_owned(),
                namespace: doc
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .map(Into::into),
                name: doc.pointer("/metadata/name")?.as_str()?.to_owned(),
            })
        })
        .collect();
    objects.sort();
    objects.dedup();
    objects
}

/// Whether objects of this kind are checked at all: the workloads kstatus knows, and any custom resource
/// (checked by its `Ready` condition when it has one). ConfigMaps, Secrets, RBAC and the like are ready
/// once they exist, so they cost no read.
pub fn is_checked(o: &ReleaseObject) -> bool {
    let core_group = !o.api_version.contains('/');
    let builtin = core_group
        || o.api_version.ends_with(".k8s.io/v1")
        || ["apps/v1", "batch/v1", "autoscaling/v2", "policy/v1"].contains(&o.api_version.as_str());
    match o.kind.as_str() {
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "PersistentVolumeClaim"
        | "Service" => true,
        _ => !builtin,
    }
}

/// None when `obj` is ready; otherwise why not, in a few words (never a value of the object's spec).
pub fn not_ready(kind: &str, obj: &Value) -> Option<String> {
    let generation = obj.pointer("/metadata/generation").and_then(Value::as_i64);
    let observed = obj
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64);
    if let (Some(g), Some(o)) = (generation, observed)
        && o < g
    {
        return Some(format!("generation {g} not observed yet (at {o})"));
    }
    match kind {
        "Deployment" => deployment(obj),
        "StatefulSet" => stateful_set(obj),
        "DaemonSet" => daemon_set(obj),
        "Job" => job(obj),
        "PersistentVolumeClaim" => {
            let phase = str_at(obj, "/status/phase");
            (phase != "Bound").then(|| format!("phase {}", or_none(phase)))
        }
        "Service" => service(obj),
        _ => custom_resource(obj),
    }
}

fn deployment(obj: &Value) -> Option<String> {
    let want = int_at(obj, "/spec/replicas").unwrap_or(1);
    if let Some(c) = condition(obj, "Progressing")
        && c.reason == "ProgressDeadlineExceeded"
    {
        return Some(format!("ProgressDeadlineExceeded: {}", c.message));
    }
    let updated = int_at(obj, "/status/updatedReplicas").unwrap_or(0);
    let available = int_at(obj, "/status/availableReplicas").unwrap_or(0);
    let total = int_at(obj, "/status/replicas").unwrap_or(0);
    if updated < want {
        return Some(format!("{updated}/{want} replicas updated"));
    }
    if total > updated {
        return Some(format!(
            "{} old replicas pending termination",
            total - updated
        ));
    }
    if available < want {
        return Some(format!("{available}/{want} replicas available"));
    }
    None
}

fn stateful_set(obj: &Value) -> Option<String> {
    let want = int_at(obj, "/spec/replicas").unwrap_or(1);
    let ready = int_at(obj, "/status/readyReplicas").unwrap_or(0);
    if ready < want {
        return Some(format!("{ready}/{want} replicas ready"));
    }
    let current = str_at(obj, "/status/currentRevision");
    let update = str_at(obj, "/status/updateRevision");
    let rolling = str_at(obj, "/spec/updateStrategy/type") != "OnDelete";
    if rolling && current != update {
        let updated = int_at(obj, "/status/updatedReplicas").unwrap_or(0);
        return Some(format!("{updated}/{want} replicas updated"));
    }
    None
}

fn daemon_set(obj: &Value) -> Option<String> {
    let want = int_at(obj, "/status/desiredNumberScheduled").unwrap_or(0);
    let updated = int_at(obj, "/status/updatedNumberScheduled").unwrap_or(0);
    let available = int_at(obj, "/status/numberAvailable").unwrap_or(0);
    if obj.pointer("/status/desiredNumberScheduled").is_none() {
        return Some("not scheduled yet".into());
    }
    if updated < want {
        return Some(format!("{updated}/{want} pods updated"));
    }
    (available < want).then(|| format!("{available}/{want} pods available"))
}

fn job(obj: &Value) -> Option<String> {
    if let Some(c) = condition(obj, "Failed")
        && c.status == "True"
    {
        return Some(format!("failed: {}", c.reason));
    }
    match condition(obj, "Complete") {
        Some(c) if c.status == "True" => None,
        _ => Some("not complete".into()),
    }
}

fn service(obj: &Value) -> Option<String> {
    if str_at(obj, "/spec/type") != "LoadBalancer" {
        return None;
    }
    let ingress = obj
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array);
    ingress
        .is_none_or(Vec::is_empty)
        .then(|| "no load balancer address yet".into())
}

fn custom_resource(obj: &Value) -> Option<String> {
    match condition(obj, "Ready") {
        Some(c) if c.status == "True" => None,
        Some(c) => Some(format!("Ready={} {}", c.status, c.reason)),
        // kstatus: a resource that reports no Ready condition is current once it exists.
        None => None,
    }
}

struct ConditionView {
    status: String,
    reason: String,
    message: String,
}

fn condition(obj: &Value, type_: &str) -> Option<ConditionView> {
    let c = obj
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))?;
    let field = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    Some(ConditionView {
        status: field("status"),
        reason: field("reason"),
        message: field("message"),
    })
}

fn int_at(obj: &Value, pointer: &str) -> Option<i64> {
    obj.pointer(pointer).and_then(Value::as_i64)
}

fn str_at<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "unset" } else { s }
}

/// The message of a release that is not ready: the objects and why, the first `MAX_NAMED` of them.
pub fn summary(not_ready: &[(ReleaseObject, String)]) -> String {
    const MAX_NAMED: usize = 5;
    let mut named: Vec<String> = not_ready
        .iter()
        .take(MAX_NAMED)
        .map(|(o, why)| format!("{o} ({why})"))
        .collect();
    if not_ready.len() > MAX_NAMED {
        named.push(format!("and {} more", not_ready.len() - MAX_NAMED));
    }
    named.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn manifest_objects_are_listed_once_in_order() {
        let manifest = "---\n# Source: a\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n\
                        ---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: x\n\
                        ---\n# empty\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: x\n";
        let objects = manifest_objects(manifest);
        assert_eq!(objects.len(), 2, "{objects:?}");
        // Sorted by apiVersion, then kind.
        assert_eq!(objects[0].to_string(), "Deployment/web");
        assert_eq!(objects[0].namespace.as_deref(), Some("x"));
        assert!(is_checked(&objects[0]));
        assert_eq!(objects[1].to_string(), "ConfigMap/c");
        assert!(!is_checked(&objects[1]));
        let cr = ReleaseObject {
            api_version: "example.com/v1".into(),
            kind: "Database".into(),
            namespace: None,
            name: "db".into(),
        };
        assert!(is_checked(&cr));
    }

    #[test]
    fn kstatus_rules_per_kind() {
        let cond = |t: &str, s: &str, r: &str| json!({"type": t, "status": s, "reason": r, "message": "m"});
        let cases = [
            (
                "Deployment",
                json!({"spec": {"replicas": 2}, "status": {"updatedReplicas": 2, "replicas": 2, "availableReplicas": 1}}),
                Some("1/2 replicas available"),
            ),
            (
                "Deployment",
                json!({"spec": {"replicas": 2}, "status": {"updatedReplicas": 2, "replicas": 2, "availableReplicas": 2}}),
                None,
            ),
            (
                "Deployment",
                json!({"spec": {"replicas": 1}, "status": {"updatedReplicas": 1, "replicas": 2, "availableReplicas": 1}}),
                Some("1 old replicas pending termination"),
            ),
            (
                "Deployment",
                json!({"metadata": {"generation": 3}, "status": {"observedGeneration": 2}}),
                Some("generation 3 not observed yet (at 2)"),
            ),
            (
                "Deployment",
                json!({"status": {"conditions": [cond("Progressing", "False", "ProgressDeadlineExceeded")]}}),
                Some("ProgressDeadlineExceeded: m"),
            ),
            (
                "StatefulSet",
                json!({"spec": {"replicas": 1}, "status": {"readyReplicas": 1, "currentRevision": "a", "updateRevision": "a"}}),
                None,
            ),
            (
                "StatefulSet",
                json!({"spec": {"replicas": 1}, "status": {"readyReplicas": 1, "currentRevision": "a", "updateRevision": "b"}}),
                Some("0/1 replicas updated"),
            ),
            (
                "DaemonSet",
                json!({"status": {"desiredNumberScheduled": 2, "updatedNumberScheduled": 2, "numberAvailable": 2}}),
                None,
            ),
            (
                "DaemonSet",
                json!({"status": {}}),
                Some("not scheduled yet"),
            ),
            (
                "Job",
                json!({"status": {"conditions": [cond("Complete", "True", "CompletionsReached")]}}),
                None,
            ),
            (
                "Job",
                json!({"status": {"conditions": [cond("Failed", "True", "BackoffLimitExceeded")]}}),
                Some("failed: BackoffLimitExceeded"),
            ),
            ("Job", json!({"status": {}}), Some("not complete")),
            (
                "PersistentVolumeClaim",
                json!({"status": {"phase": "Pending"}}),
                Some("phase Pending"),
            ),
            (
                "PersistentVolumeClaim",
                json!({"status": {"phase": "Bound"}}),
                None,
            ),
            ("Service", json!({"spec": {"type": "ClusterIP"}}), None),
            (
                "Service",
                json!({"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {}}}),
                Some("no load balancer address yet"),
            ),
            (
                "Service",
                json!({"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}}),
                None,
            ),
            (
                "Database",
                json!({"status": {"conditions": [cond("Ready", "False", "Provisioning")]}}),
                Some("Ready=False Provisioning"),
            ),
            ("Database", json!({"status": {}}), None),
        ];
        for (kind, obj, want) in cases {
            assert_eq!(not_ready(kind, &obj).as_deref(), want, "{kind} {obj}");
        }
    }

    #[test]
    fn the_summary_names_the_first_objects() {
        let o = |n: usize| ReleaseObject {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: None,
            name: format!("d{n}"),
        };
        let list: Vec<_> = (0..7)
            .map(|n| (o(n), "0/1 replicas available".to_owned()))
            .collect();
        let s = summary(&list);
        assert!(
            s.starts_with("Deployment/d0 (0/1 replicas available), "),
            "{s}"
        );
        assert!(s.ends_with("and 2 more"), "{s}");
    }
}
