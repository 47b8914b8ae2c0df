//! pack-controller: installs, upgrades and uninstalls the Helm release of each `Pack`.
//!
//! Modules (grow with the issues): `reconcile` (the Pack reconcile loop).

pub mod reconcile;

pub use reconcile::run;
