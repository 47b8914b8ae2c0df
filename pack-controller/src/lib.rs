//! pack-controller: installs, upgrades and uninstalls the Helm release of each `Pack`.
//!
//! Modules: `reconcile` (the Pack loop and its wiring: resolve, plan, run Helm, report), `plan` (pure:
//! the release digest and what to do — nothing, install, upgrade, recover, wait), `status` (pure: how the
//! Pack's status changes with each outcome), `helm` (the Helm CLI driver), `release` (Helm's release
//! Secrets: latest revision, marking a stuck one failed), `chart` (chart archive download, digest check
//! and disk cache), `repository` (the ClusterPackRepository loop that fetches indexes into the shared
//! cache), `resolve` (a Pack's chart and constraint against a cached index, pure), `versions` (chart
//! version constraints), `vars` (`{{ vars.NAME }}` substitution), `index` (fetching, parsing and the
//! shared cache of each repository's `index.yaml`), `metrics` (Helm operations, Packs by state).

pub mod chart;
pub mod controller;
pub mod error;
pub mod execute;
pub mod helm;
pub mod index;
pub mod metrics;
pub mod plan;
pub mod reconcile;
pub mod release;
pub mod repository;
pub mod resolve;
pub mod status;
pub mod vars;
pub mod versions;

pub use controller::{Metrics, Settings, run};
