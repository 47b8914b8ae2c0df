//! `Pack`: a Helm release of a chart from a pack repository, with values and vars.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Helm release of `chart`, named after the Pack, in the Pack's namespace.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "k8s.kubit.ir",
    version = "v1alpha1",
    kind = "Pack",
    namespaced,
    status = "PackStatus",
    shortname = "pk",
    category = "pack-operator",
    printcolumn = r#"{"name":"Chart","type":"string","jsonPath":".spec.chart.name"}"#,
    printcolumn = r#"{"name":"Constraint","type":"string","jsonPath":".spec.chart.version"}"#,
    printcolumn = r#"{"name":"Version","type":"string","description":"The chart version deployed (last applied successfully)","jsonPath":".status.appliedVersion"}"#,
    printcolumn = r#"{"name":"Target","type":"string","priority":1,"description":"The chart version the constraint resolves to","jsonPath":".status.version"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Revision","type":"integer","priority":1,"jsonPath":".status.revision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PackSpec {
    /// The chart to install and where it comes from.
    pub chart: ChartReference,

    /// Scalar variables (string, number, bool or null) substituted into `values` wherever a string is
    /// `{{ vars.NAME }}`. (A CEL rule cannot type-check values of a preserve-unknown-fields map, so
    /// non-scalars are rejected by the controller with `InvalidVars`.)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "scalar_map_schema")]
    pub vars: BTreeMap<String, serde_json::Value>,

    /// Values read from Secrets and ConfigMaps of the Pack's namespace, merged in list order; `values` is
    /// merged on top of them, then `vars` are applied to the result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_from: Vec<ValuesReference>,

    /// Helm values, free-form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_schema")]
    pub values: Option<serde_json::Value>,

    /// When an upgrade fails, roll the release back to its last deployed revision and stop retrying that
    /// spec until it changes (or a newer chart version, or a `reconcile.k8s.kubit.ir/requestedAt`
    /// annotation, comes). Default `false`: the failed release stays and the upgrade is retried with
    /// exponential backoff.
    #[serde(default, skip_serializing_if = "is_false")]
    pub rollback_on_failure: bool,

    /// Stop reconciling: no install, upgrade or auto-upgrade until set back to `false`. Deleting a
    /// suspended Pack still uninstalls its release.
    #[serde(default, skip_serializing_if = "is_false")]
    pub suspend: bool,

    /// The ServiceAccount of the Pack's namespace that every Helm operation of the release runs as
    /// (impersonated): what it may not do, the Pack cannot do. Empty: the controller's
    /// `--default-service-account` of this namespace, or, when the controller has none, the controller's
    /// own rights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub service_account_name: Option<String>,

    /// After an install or upgrade, the Pack is `Ready` only once the release's objects are ready by
    /// kstatus rules (Deployments, StatefulSets, DaemonSets, Jobs, PVCs, LoadBalancer Services, custom
    /// resources with a `Ready` condition); until then `Ready=False` `Progressing` naming those not ready.
    /// Past `timeout` the upgrade failed (`ApplyFailed`, reason `NotReady`) and `rollbackOnFailure`
    /// applies. The controller checks the objects itself: waiting holds no Helm process. Default `false`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub wait: bool,

    /// How long `wait` waits for the release's objects, e.g. `5m` or `1h30m` (numbers with units `ms`,
    /// `s`, `m`, `h`). Default: the controller's `--helm-timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::cli::DURATION_PATTERN))]
    pub timeout: Option<String>,

    /// Packs of the same namespace that must be `Ready` (at their current generation) before this one is
    /// installed or upgraded; until then `Ready=False` `DependencyNotReady` naming them. A cycle is
    /// `Stalled` `DependencyCycle`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<PackDependency>,

    /// Whether the release's live objects are compared with what Helm applied (only the fields Helm
    /// manages, by a server-side apply dry-run as Helm's field manager), on each resync and when one of
    /// its Deployments, StatefulSets, DaemonSets, Jobs, PVCs or Services changes. Default: disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift_detection: Option<DriftDetection>,
}

/// `spec.driftDetection`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriftDetection {
    /// `disabled` (default): not compared. `warn`: `Drifted=True` and a Warning Event naming the objects
    /// and field paths (never values). `enabled`: the drifted objects are re-applied as Helm applied
    /// them, and an Event says what was corrected.
    #[serde(default)]
    pub mode: DriftMode,
    /// Fields others may own: never reported nor corrected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub ignore: Vec<DriftIgnoreRule>,
}

/// `spec.driftDetection.mode`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DriftMode {
    #[default]
    Disabled,
    Warn,
    Enabled,
}

/// Fields left out of drift detection, like Flux's `driftDetection.ignore`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriftIgnoreRule {
    /// JSON pointers (RFC 6901) of the fields, e.g. `/spec/replicas` or
    /// `/metadata/annotations/example.com~1note`.
    #[schemars(length(min = 1, max = 32), inner(regex(pattern = r"^(/[^/]*)+$")))]
    pub paths: Vec<String>,
    /// The objects it applies to; every object of the release when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<DriftIgnoreTarget>,
}

/// Which objects a [`DriftIgnoreRule`] applies to: all given fields must match.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriftIgnoreTarget {
    /// The object's kind, e.g. `Deployment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A Pack this one depends on.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackDependency {
    /// The Pack's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its namespace; default this Pack's. Another namespace is accepted only when the controller runs
    /// with `--allow-cross-namespace-dependencies` (off by default: refused as
    /// `CrossNamespaceDependency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Chart name, repository and version constraint.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChartReference {
    /// The repository that serves the chart.
    pub repository: RepositoryReference,
    /// Chart name in the repository index.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Version constraint: an exact version (`4.15.2`), a compatible release (`~=0.1`), or a Helm
    /// semver range (`^1.2`, `>=1, <2`, `1.2.x`). Empty means the highest stable version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Reference to a pack repository.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryReference {
    /// Kind of the repository object.
    pub kind: RepositoryKind,
    /// Name of the repository object.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// Kinds of repository a Pack can reference.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum RepositoryKind {
    // A cluster-wide repository every namespace may use.
    ClusterPackRepository,
    // A repository of the Pack's own namespace (there is no way to name another namespace's).
    PackRepository,
}

/// A Secret or ConfigMap of the Pack's namespace whose key holds values.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValuesReference {
    /// `Secret` or `ConfigMap`.
    pub kind: ValuesSourceKind,
    /// Name of the object, in the Pack's namespace (never another namespace).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key of the object's data that holds the values. Default `values.yaml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub values_key: Option<String>,
    /// When set, the key's content is not parsed: its raw string is set at this dotted path of the
    /// values (`a.b.c`; `\.` for a dot inside a key, as Flux). When unset, the key holds a YAML map that is
    /// deep-merged into the values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 250))]
    pub target_path: Option<String>,
    /// A missing object or key is skipped instead of being an error. Default `false`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub optional: bool,
}

impl ValuesReference {
    /// The default of `valuesKey`.
    pub const DEFAULT_KEY: &'static str = "values.yaml";

    /// `valuesKey`, or its default.
    pub fn key(&self) -> &str {
        self.values_key.as_deref().unwrap_or(Self::DEFAULT_KEY)
    }
}

/// Kinds of object `valuesFrom` can read.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum ValuesSourceKind {
    Secret,
    ConfigMap,
}

impl ValuesSourceKind {
    /// The kind as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ValuesSourceKind::Secret => "Secret",
            ValuesSourceKind::ConfigMap => "ConfigMap",
        }
    }
}

/// A `valuesFrom` object as it was when the release was last applied (never its content).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValuesSourceVersion {
    pub kind: ValuesSourceKind,
    pub name: String,
    /// Its `metadata.resourceVersion`.
    pub resource_version: String,
}

/// The summary state shown in `kubectl get packs`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PackState {
    /// The release is deployed as the spec asks.
    Applied,
    /// Helm is installing or upgrading the release (or a release left pending is being recovered);
    /// `appliedVersion` is still what is deployed.
    Progressing,
    /// Nothing is deployed yet and the spec cannot be resolved now (repository, chart or version not
    /// found); retried on every change of the repository.
    NotResolved,
    ApplyFailed,
    Removing,
    RemoveFailed,
    Invalid,
}

/// Observed state of a Pack.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackStatus {
    /// The generation last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Summary state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<PackState>,
    /// The chart version the constraint resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// SHA-256 (lowercase hex) of the resolved chart archive, as the repository index gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart_digest: Option<String>,
    /// OCI registries: the manifest the resolved version is pinned to, `oci://host/path/<chart>@sha256:…`
    /// (the chart layer is pulled by digest from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart_ref: Option<String>,
    /// The chart version of the release as last applied successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_version: Option<String>,
    /// The Helm release revision last installed or upgraded by this Pack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Digest of (chart, version, chart digest, final values) last applied successfully. A reconcile whose
    /// digest equals it, with the release `deployed`, runs no Helm command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_digest: Option<String>,
    /// Digest of the last attempt, successful or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_digest: Option<String>,
    /// Consecutive failed attempts of `lastAttemptedDigest`; reset when the spec or the resolved chart
    /// changes. Drives the retry backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    /// The last `reconcile.k8s.kubit.ir/requestedAt` annotation value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
    /// The `valuesFrom` objects of the values last applied, with their resourceVersion: an upgrade names
    /// those that changed since.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_from: Vec<ValuesSourceVersion>,
    /// The last few Helm operations, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<PackAttempt>,
}

/// One Helm operation of a Pack, as kept in `status.history`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackAttempt {
    /// `Install`, `Upgrade`, `Rollback`, `Uninstall` or `Recover` (a stuck pending release marked failed).
    pub action: String,
    /// Chart version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The release digest (see `lastAppliedDigest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `Succeeded` or `Failed`.
    pub result: String,
    /// The release revision the operation produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// When the operation finished (RFC 3339).
    pub time: String,
    /// How long it took, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// Helm's error for a failure (trimmed; never the values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

pub(crate) fn free_form_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

fn scalar_map_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": {
            "x-kubernetes-preserve-unknown-fields": true,
            "nullable": true,
        },
    })
}
