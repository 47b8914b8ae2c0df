//! reflector-controller: keeps copies of a Secret, named by a `SecretReflector`, in other namespaces.
//!
//! Modules (grow with the issues): `reconcile` (the SecretReflector reconcile loop).

pub mod reconcile;

pub use reconcile::run;
