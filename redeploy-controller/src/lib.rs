//! redeploy-controller: rolls out Deployments, StatefulSets, DaemonSets (and the workloads of Packs)
//! annotated `pack-operator.k8s.kubit.ir/watch-to-redeploy` when a ConfigMap or Secret they name
//! changes.
//!
//! Modules: `index` (which workload watches what), `state` (hashes, the record on the workload, the
//! rollout decision), `limiter` (global rollout rate limit), `metrics`, `reconcile` (API glue).
//! The annotation parser is shared: `common::annotation`.

pub mod index;
pub mod limiter;
pub mod metrics;
pub mod reconcile;
pub mod state;

pub use reconcile::{Settings, run};
