//! `SecretReflector`: keeps copies of a Secret of its own namespace in other namespaces.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Copies the Secret `source` (in this object's namespace) into the `targets` namespaces.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "k8s.kubit.ir",
    version = "v1alpha1",
    kind = "SecretReflector",
    namespaced,
    status = "SecretReflectorStatus",
    shortname = "sr",
    category = "pack-operator",
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".spec.source.name"}"#,
    printcolumn = r#"{"name":"Targets","type":"string","jsonPath":".status.summary"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SecretReflectorSpec {
    /// The Secret to copy; always in the SecretReflector's own namespace.
    pub source: SourceReference,
    /// Where copies go.
    pub targets: Targets,
    /// Name of the copies (default: the source's name). A Secret name: lowercase letters, digits,
    /// '-' and '.'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(max = 253)
    )]
    pub target_name: Option<String>,
}

/// The source Secret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SourceReference {
    /// A Secret name: lowercase letters, digits, '-' and '.'.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(min = 1, max = 253)
    )]
    pub name: String,
}

/// Target namespaces: the union of explicit names and a label selector.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.namespaceSelector) || !has(self.namespaceSelector.matchExpressions) || self.namespaceSelector.matchExpressions.all(e, (e.operator in ['In', 'NotIn'] && has(e.values) && size(e.values) > 0) || (e.operator in ['Exists', 'DoesNotExist'] && (!has(e.values) || size(e.values) == 0)))",
    "message": "namespaceSelector.matchExpressions: operator must be In or NotIn with values, or Exists or DoesNotExist without values"
}]))]
pub struct Targets {
    /// Namespaces by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    ))]
    pub namespaces: Vec<String>,
    /// Namespaces by label; namespaces that gain the labels later get a copy too. An empty selector
    /// (`{}`) selects every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Namespaces never to copy into, even when named or selected above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    ))]
    pub exclude_namespaces: Vec<String>,
}

/// Observed state of a SecretReflector.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretReflectorStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// `synced/desired`, e.g. `3/4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Every namespace named or selected, with the state of its copy (sorted by namespace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetStatus>,
}

/// State of one target namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    pub namespace: String,
    /// `Synced`, `Conflict`, `Error`, `NamespaceNotFound` (counted as desired), or `OptedOut` /
    /// `Denied` (the namespace or the controller refuses copies; not counted as desired).
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
