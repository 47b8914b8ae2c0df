//! pack-controller: installs, upgrades and uninstalls the Helm release of each `Pack`.
//!
//! Modules (grow with the issues): `reconcile` (the Pack reconcile loop and its wiring), `repository`
//! (the ClusterPackRepository loop that fetches indexes into the shared cache), `resolve` (a Pack's chart
//! and constraint against a cached index, pure), `versions` (chart version constraints and picking the
//! highest match), `vars` (`{{ vars.NAME }}` substitution in values), `index` (fetching, parsing and the
//! shared cache of each repository's `index.yaml`).

pub mod index;
pub mod reconcile;
pub mod repository;
pub mod resolve;
pub mod vars;
pub mod versions;

pub use reconcile::run;
