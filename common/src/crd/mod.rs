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
    ClusterPackRepository, ClusterPackRepositorySpec, ClusterPackRepositoryStatus,
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
            ClusterPackRepository::crd(),
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

/// Renders a CRD as the YAML written to `deploy/crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    Ok(format!(
        "# Generated from the Rust types in common/src/crd by `make crds`. Do not edit.\n{}",
        serde_yaml::to_string(crd)?
    ))
}
