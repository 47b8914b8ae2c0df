//! redeploy-controller: rolls out Deployments, StatefulSets, DaemonSets, CronJobs (and the workloads of
//! Packs) annotated `pack-operator.k8s.kubit.ir/watch-to-redeploy` when a ConfigMap or Secret they name
//! changes, or annotated `watch-to-redeploy-auto: "true"` when one their pod template uses changes.
//!
//! Modules, in the order a change travels through them:
//! - `controller` (wiring: the watches, the per-kind `Controller`s and what wakes a reconcile, `run`,
//!   `Settings`),
//! - `podrefs` (pure: what a pod template references, and which keys, for auto discovery),
//! - `index` (which workload watches what: whom a ConfigMap/Secret event wakes),
//! - `reconcile` (one workload reconcile: read the annotation and hashes, decide, execute — record the
//!   hashes, roll out — and report),
//! - `state` (pure decisions: hashes, the record on the workload, the rollout decision and its delay),
//! - `outcome` (pure: what a reconcile did, and its Event, metric result and requeue),
//! - `rollout_crd` (the part of Argo Rollouts' `Rollout` read here),
//! - `limiter` (global rollout rate limit), `scope` (pure: which namespaces are acted on), `metrics`.
//!
//! The annotation parser is shared: `common::annotation`.

pub mod controller;
pub mod index;
pub mod limiter;
pub mod metrics;
pub mod outcome;
pub mod podrefs;
pub mod reconcile;
pub mod rollout_crd;
pub mod scope;
pub mod state;

pub use controller::{Settings, run};
