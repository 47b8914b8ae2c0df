//! reflector-controller: keeps copies of a Secret, named by a `SecretReflector`, in other namespaces.
//!
//! Modules: `targets` (which namespaces get a copy: names, selector, exclusions, opt-out label,
//! allow/deny flags), `copy` (the desired copy, the ownership marker, and the create / update /
//! replace / conflict decision), `status` (per-target states, summary, conditions), `metrics`, and
//! `reconcile` (watches and API glue).

pub mod copy;
pub mod metrics;
pub mod reconcile;
pub mod status;
pub mod targets;

pub use reconcile::{Settings, run};
