//! `ClusterPackRepository`: a cluster-wide Helm repository (an HTTP(S) `index.yaml`), and
//! `PackRepository`: the same repository owned by one namespace, usable only by that namespace's Packs.
//! Both kinds share one spec ([`ClusterPackRepositorySpec`]) and one status
//! ([`ClusterPackRepositoryStatus`]); they differ only in where their Secrets are read (see
//! [`SecretReference`]).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Helm chart repository every namespace's Packs may use.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "k8s.kubit.ir",
    version = "v1alpha1",
    kind = "ClusterPackRepository",
    status = "ClusterPackRepositoryStatus",
    shortname = "cpr",
    category = "pack-operator",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.url"}"#,
    printcolumn = r#"{"name":"Charts","type":"integer","jsonPath":".status.charts"}"#,
    printcolumn = r#"{"name":"Versions","type":"integer","jsonPath":".status.versions","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPackRepositorySpec {
    /// Base URL of the repository: `<url>/index.yaml` is its index; or an OCI registry,
    /// `oci://host[:port]/path`, whose repository `path/<chart>` holds each chart, one tag per version.
    #[schemars(regex(pattern = r"^(https?|oci)://"))]
    pub url: String,
    /// How often the index is refreshed, e.g. `5m` or `1h30m` (numbers with units `ms`, `s`, `m`, `h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::cli::DURATION_PATTERN))]
    pub interval: Option<String>,
    /// Secret with `username` and `password` keys for basic auth; for an OCI registry also a
    /// `kubernetes.io/dockerconfigjson` Secret (its entry for the registry's host is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,
    /// Secret with a `ca.crt` key: a PEM CA bundle to trust for this repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretReference>,
    /// OCI registries only: speak plain HTTP instead of HTTPS (a registry without TLS, e.g. on loopback).
    /// Off by default; refused with an `http(s)://` URL, whose scheme already says it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
}

/// A tenant's Helm chart repository: the same spec as a `ClusterPackRepository`, usable only by the
/// Packs of its own namespace, its Secrets read in that namespace.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "k8s.kubit.ir",
    version = "v1alpha1",
    kind = "PackRepository",
    namespaced,
    status = "ClusterPackRepositoryStatus",
    shortname = "pr",
    category = "pack-operator",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.url"}"#,
    printcolumn = r#"{"name":"Charts","type":"integer","jsonPath":".status.charts"}"#,
    printcolumn = r#"{"name":"Versions","type":"integer","jsonPath":".status.versions","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct PackRepositorySpec {
    #[serde(flatten)]
    pub repository: ClusterPackRepositorySpec,
}

/// A Secret. A `ClusterPackRepository` must name its namespace; a `PackRepository` must not (its
/// Secrets are read in its own namespace, so a tenant cannot point the controller at another
/// namespace's Secrets). The CRDs enforce both (see `crate::crd::repository_crds`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretReference {
    #[schemars(length(min = 1))]
    pub name: String,
    /// The Secret's namespace: required in a `ClusterPackRepository`, refused in a `PackRepository`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub namespace: Option<String>,
}

/// Observed state of a repository.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPackRepositoryStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Number of charts in the index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charts: Option<i64>,
    /// Number of chart versions in the index, over all charts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<i64>,
    /// SHA-256 (lowercase hex) of the index now serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<String>,
    /// When the index was last fetched successfully (a `304 Not Modified` answer counts), RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fetch_time: Option<String>,
}
