//! pack-controller: installs, upgrades and uninstalls the Helm release of each `Pack`.
//!
//! Where things live (docs/architecture.md follows one Pack through them):
//! - **Wiring** — `controller` (what wakes a Pack reconcile: the watches, the index-cache subscription,
//!   the `Controller`, `Settings`, `run`); `repository` (the repository loop, one per kind, that
//!   fetches indexes into the shared cache); `repository_kind` (ClusterPackRepository and PackRepository
//!   behind one trait, the cache key of each, where their Secrets are read).
//! - **Decisions (pure)** — `resolve` (a Pack's chart and constraint against a cached index), `versions`
//!   (chart version constraints), `values_from` (merging `spec.valuesFrom`), `vars` (`{{ vars.NAME }}` substitution), `plan` (the release digest,
//!   what to do — nothing, install, upgrade, recover, wait — and the `Outcome` of doing it), `depends`
//!   (`spec.dependsOn`: proceed, wait, or a cycle), `readiness`
//!   (kstatus rules: which objects of a release are checked for `spec.wait`, and whether one is ready).
//! - **Execution** — `reconcile` (one reconcile: resolve, decide, act, report; deletion), `execute`
//!   (running a planned install/upgrade, rollback and stuck-release recovery into an `Outcome`), `helm`
//!   (the Helm CLI driver), `identity` (the ServiceAccount a Pack's Helm operations run as), `observe` (reading a release's
//!   manifest and objects for `spec.wait`), `drift` (`spec.driftDetection`: a release's objects against the
//!   cluster by a server-side apply dry-run as Helm, and their correction), `release` (Helm's release Secrets), `chart` (chart archive download, digest
//!   check and disk cache), `index` (index.yaml parsing, the HTTP fetcher, the shared cache, and the one
//!   place a kind of chart source is chosen).
//! - **Outside the controller** — `offline` (a Pack resolved and rendered with `helm template` by the same
//!   steps, for `kubectl pack template|diff`; reading `valuesFrom`, which the reconcile uses too).
//! - **Status and reporting** — `status` (pure: the Pack's status and Event for each outcome), `error`
//!   (reconcile errors and what the owner is told of them), `metrics` (Helm operations, Packs by state).

pub mod chart;
pub mod controller;
pub mod depends;
pub mod drift;
pub mod error;
pub mod execute;
pub mod helm;
pub mod identity;
pub mod index;
pub mod metrics;
pub mod observe;
pub mod offline;
pub mod plan;
pub mod readiness;
pub mod reconcile;
pub mod release;
pub mod repository;
pub mod repository_kind;
pub mod resolve;
pub mod status;
pub mod values_from;
pub mod vars;
pub mod versions;

pub use controller::{Metrics, Settings, run};
