//! Argo Rollouts' `Rollout` (`argoproj.io/v1alpha1`), only as far as the redeploy controller reads it: the
//! pod template. Everything else of the object is ignored when read and never written (a rollout is a
//! merge patch of one pod-template annotation, which the Argo controller turns into a new revision).

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// The Rollout's spec: its pod template (Argo also allows `workloadRef` instead; such a Rollout has no
/// template here and is rolled by annotating the referenced Deployment instead).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default)]
#[kube(
    group = "argoproj.io",
    version = "v1alpha1",
    kind = "Rollout",
    namespaced,
    schema = "disabled"
)]
pub struct RolloutSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodTemplateSpec>,
}

/// The resource the API server must serve for Rollouts to be watched.
pub const ROLLOUT_API: (&str, &str) = ("argoproj.io/v1alpha1", "rollouts");
