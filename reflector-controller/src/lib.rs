//! reflector-controller: keeps copies of a Secret (named by a `SecretReflector`) or a ConfigMap (named
//! by a `ConfigMapReflector`) in other namespaces. One implementation, generic over the kind copied
//! ([`kind::Reflected`]); one controller per kind enabled (`--kinds`).
//!
//! Where things live, in the order one reflector change goes through them:
//! - `controller` — wiring, what wakes a reconcile: the watches (reflectors, managed copies, the
//!   kind's metadata, Namespaces) and their caches, the orphan sweep, the [`Settings`], [`CopiedKind`]
//!   and [`run`].
//! - `kind` — what differs between kinds: what a copy holds, which sources are refused and why.
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
pub mod kind;
pub mod metrics;
pub mod reconcile;
pub mod status;
pub mod targets;

pub use controller::{CopiedKind, Settings, run};
