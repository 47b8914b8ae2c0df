//! `SecretReflector` and `ConfigMapReflector`: keep copies of a Secret (or a ConfigMap) of their own
//! namespace in other namespaces. Both kinds share one spec ([`ReflectorSpec`]) and one status
//! ([`ReflectorStatus`]); only the kind of the copied object differs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Copies the Secret `source` (in this object's namespace) into the `targets` namespaces.
///
/// The spec of both reflector kinds: a `SecretReflector` is this type's custom resource, a
/// `ConfigMapReflector` holds it flattened ([`ConfigMapReflectorSpec`]), so their YAML is the same.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "k8s.kubit.ir",
    version = "v1alpha1",
    kind = "SecretReflector",
    namespaced,
    status = "ReflectorStatus",
    shortname = "sr",
    category = "pack-operator",
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".spec.source.name"}"#,
    printcolumn = r#"{"name":"Targets","type":"string","jsonPath":".status.summary"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ReflectorSpec {
    /// The object to copy (a Secret, or a ConfigMap for a ConfigMapReflector); always in the
    /// reflector's own namespace.
    pub source: SourceReference,
    /// Where copies go.
    pub targets: Targets,
    /// Name of the copies (default: the source's name). An object name: lowercase letters, digits,
    /// '-' and '.'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(max = 253)
    )]
    pub target_name: Option<String>,
}

/// The name of a SecretReflector's spec, kept for readers of the first API.
pub type SecretReflectorSpec = ReflectorSpec;

/// Copies the ConfigMap `source` (in this object's namespace), its `data` and `binaryData`, into
/// the `targets` namespaces. The same spec, status and rules as a SecretReflector.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "k8s.kubit.ir",
    version = "v1alpha1",
    kind = "ConfigMapReflector",
    namespaced,
    status = "ReflectorStatus",
    shortname = "cmr",
    category = "pack-operator",
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".spec.source.name"}"#,
    printcolumn = r#"{"name":"Targets","type":"string","jsonPath":".status.summary"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct ConfigMapReflectorSpec {
    /// The fields of every reflector, at the top of the spec.
    #[serde(flatten)]
    pub reflector: ReflectorSpec,
}

/// The source object, by name.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SourceReference {
    /// An object name: lowercase letters, digits, '-' and '.'.
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
}, {
    "rule": "!has(self.namespaceSelector) || ((!has(self.namespaceSelector.matchLabels) || self.namespaceSelector.matchLabels.all(k, !format.qualifiedName().validate(k).hasValue())) && (!has(self.namespaceSelector.matchExpressions) || self.namespaceSelector.matchExpressions.all(e, !format.qualifiedName().validate(e.key).hasValue())))",
    "message": "namespaceSelector: every key must be a label key ([prefix/]name: a name of at most 63 characters of [A-Za-z0-9._-] starting and ending with a letter or digit, the prefix a DNS subdomain)"
}, {
    "rule": "!has(self.namespaceSelector) || ((!has(self.namespaceSelector.matchLabels) || self.namespaceSelector.matchLabels.all(k, !format.labelValue().validate(self.namespaceSelector.matchLabels[k]).hasValue())) && (!has(self.namespaceSelector.matchExpressions) || self.namespaceSelector.matchExpressions.all(e, !has(e.values) || e.values.all(v, !format.labelValue().validate(v).hasValue()))))",
    "message": "namespaceSelector: every value must be a label value (empty, or at most 63 characters of [A-Za-z0-9._-] starting and ending with a letter or digit)"
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
    #[schemars(schema_with = "namespace_selector_schema")]
    pub namespace_selector: Option<LabelSelector>,
    /// Namespaces never to copy into, even when named or selected above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    ))]
    pub exclude_namespaces: Vec<String>,
}

/// Most entries of a `namespaceSelector` (labels, expressions, values of one expression): bounds that
/// let the API server's CEL cost estimate accept the label key/value rules on [`Targets`].
pub const MAX_SELECTOR_ENTRIES: u32 = 64;

/// The schema of a `LabelSelector`, with bounds on its maps, lists and strings (a label key is at
/// most a 253-character prefix, `/`, and a 63-character name; a value at most 63 characters).
fn namespace_selector_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "nullable": true,
        "description": "Namespaces by label; namespaces that gain the labels later get a copy too. An empty selector ({}) selects every namespace.",
        "properties": {
            "matchLabels": {
                "type": "object",
                "description": "Labels a namespace must have (key: value), ANDed.",
                "maxProperties": MAX_SELECTOR_ENTRIES,
                "additionalProperties": {"type": "string", "maxLength": 63}
            },
            "matchExpressions": {
                "type": "array",
                "description": "Label selector requirements, ANDed.",
                "maxItems": MAX_SELECTOR_ENTRIES,
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {"type": "string", "maxLength": 317},
                        "operator": {"type": "string", "maxLength": 16},
                        "values": {
                            "type": "array",
                            "maxItems": MAX_SELECTOR_ENTRIES,
                            "items": {"type": "string", "maxLength": 63}
                        }
                    }
                }
            }
        }
    })
}

/// Observed state of a SecretReflector or a ConfigMapReflector.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReflectorStatus {
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

/// The name of a SecretReflector's status, kept for readers of the first API.
pub type SecretReflectorStatus = ReflectorStatus;

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
