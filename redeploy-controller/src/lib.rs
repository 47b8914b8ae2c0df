//! redeploy-controller: rolls out Deployments, StatefulSets, DaemonSets (and the workloads of Packs)
//! annotated `pack-operator.k8s.kubit.ir/watch-to-redeploy` when a ConfigMap or Secret they name
//! changes.
//!
//! Modules (grow with the issues): `reconcile` (the workload loop).

pub mod reconcile;

pub use reconcile::run;
