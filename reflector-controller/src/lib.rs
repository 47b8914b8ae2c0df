//! reflector-controller: keeps copies of a Secret, named by a `SecretReflector`, in other namespaces.
//!
//! Where things live, in the order one SecretReflector change goes through them:
//! - `controller` — wiring, what wakes a reconcile: the watches (SecretReflectors, managed copies,
//!   Secrets' metadata, Namespaces) and their caches, the orphan sweep, the [`Settings`], and [`run`].
//! - `reconcile` — what one reconcile does: the finalizer, then a sync (reads the source, executes
//!   the decision: writes and deletes copies, each target's outcome as data, then reports status,
//!   Events and metrics) or the cleanup of every copy.
//! - `intent` — decisions, pure: per target namespace, write / yield to an older reflector / refuse,
//!   or why nothing is copied (source missing, refused type, invalid spec).
//! - `targets` — which namespaces get a copy (names, selector, exclusions, opt-out label, allow/deny
//!   flags) and which of rival reflectors wins a target. Pure.
//! - `copy` — the desired copy, the ownership marker, and the create / update / replace / conflict
//!   decision for one copy. Pure.
//! - `status` — the status from the outcomes: per-target states, summary, conditions. Pure.
//! - `metrics` — the reflector's Prometheus metrics.

pub mod controller;
pub mod copy;
pub mod intent;
pub mod metrics;
pub mod reconcile;
pub mod status;
pub mod targets;

pub use controller::{Settings, run};
