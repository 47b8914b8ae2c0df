//! Custom resources of group `k8s.kubit.ir`, version `v1alpha1`. The YAML in `deploy/crds/` is
//! generated from these types by the `crdgen` binary (`make crds`); CI fails when it drifts.

pub mod pack;
pub mod reflector;
pub mod repository;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use pack::{Pack, PackSpec, PackStatus};
pub use reflector::{
    ConfigMapReflector, ConfigMapReflectorSpec, ReflectorSpec, ReflectorStatus, SecretReflector,
    SecretReflectorSpec, SecretReflectorStatus,
};
pub use repository::{
    ClusterPackRepository, ClusterPackRepositorySpec, ClusterPackRepositoryStatus, PackRepository,
    PackRepositorySpec,
};

/// API group of every CRD of this project.
pub const GROUP: &str = "k8s.kubit.ir";
/// API version of every CRD of this project.
pub const VERSION: &str = "v1alpha1";

/// Every CRD, with the file name it is written to under `deploy/crds/`.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("k8s.kubit.ir_packs.yaml", pack_crd()),
        (
            "k8s.kubit.ir_clusterpackrepositories.yaml",
            cluster_repository_crd(),
        ),
        (
            "k8s.kubit.ir_packrepositories.yaml",
            namespaced_repository_crd(),
        ),
        ("k8s.kubit.ir_secretreflectors.yaml", SecretReflector::crd()),
        (
            "k8s.kubit.ir_configmapreflectors.yaml",
            ConfigMapReflector::crd(),
        ),
    ]
}

/// Longest Pack name: a Pack's name is its Helm release name, and Helm refuses longer ones.
pub const MAX_PACK_NAME: usize = 53;

/// The Pack CRD, with a rule on the object's root (where `metadata.name` is visible to CEL) that
/// refuses names Helm would refuse, at admission rather than at the first `helm upgrade`.
fn pack_crd() -> CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule;
    let mut crd = Pack::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            schema
                .x_kubernetes_validations
                .get_or_insert_with(Vec::new)
                .push(ValidationRule {
                    rule: format!("size(self.metadata.name) <= {MAX_PACK_NAME}"),
                    message: Some(format!(
                        "a Pack's name is its Helm release name, which Helm limits to {MAX_PACK_NAME} characters"
                    )),
                    ..Default::default()
                });
        }
    }
    crd
}

/// The spec fields of both repository kinds that name a Secret.
const SECRET_REFERENCES: [&str; 2] = ["secretRef", "caSecretRef"];

/// The ClusterPackRepository CRD: its Secret references must name their namespace.
fn cluster_repository_crd() -> CustomResourceDefinition {
    let mut crd = ClusterPackRepository::crd();
    for reference in secret_reference_schemas(&mut crd) {
        reference
            .required
            .get_or_insert_with(Vec::new)
            .push("namespace".into());
    }
    crd
}

/// The PackRepository CRD: its Secret references must not name a namespace (its Secrets are read in its
/// own namespace), refused at admission with a message saying so.
fn namespaced_repository_crd() -> CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule;
    let mut crd = PackRepository::crd();
    for reference in secret_reference_schemas(&mut crd) {
        reference
            .x_kubernetes_validations
            .get_or_insert_with(Vec::new)
            .push(ValidationRule {
                rule: "!has(self.__namespace__)".into(),
                message: Some(
                    "a PackRepository reads its Secrets in its own namespace: remove namespace"
                        .into(),
                ),
                ..Default::default()
            });
    }
    crd
}

/// The schemas of `spec.secretRef` and `spec.caSecretRef` of a repository CRD.
fn secret_reference_schemas(
    crd: &mut CustomResourceDefinition,
) -> Vec<&mut k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps> {
    crd.spec
        .versions
        .iter_mut()
        .filter_map(|v| v.schema.as_mut()?.open_api_v3_schema.as_mut())
        .filter_map(|s| s.properties.as_mut()?.get_mut("spec")?.properties.as_mut())
        .flat_map(|spec| {
            spec.iter_mut()
                .filter(|(k, _)| SECRET_REFERENCES.contains(&k.as_str()))
                .map(|(_, v)| v)
        })
        .collect()
}

/// Renders a CRD as the YAML written to `deploy/crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    Ok(format!(
        "# Generated from the Rust types in common/src/crd by `make crds`. Do not edit.\n{}",
        serde_yaml::to_string(crd)?
    ))
}
