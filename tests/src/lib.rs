//! Harness for the end-to-end tests: a real control plane (etcd, kube-apiserver,
//! kube-controller-manager) built from Go modules by `hack/tools.sh`, plus helpers that create a
//! namespace per test, run controller binaries, and wait with deadlines.
//!
//! Tests share one control plane per `make test` run: the `testcluster` binary starts it and
//! `make test` exports its kubeconfig as `PACK_OPERATOR_TEST_KUBECONFIG`. Without that variable the
//! tests use `.cluster/kubeconfig` from `make cluster`.

pub mod chart;
pub mod cluster;
pub mod controller;
pub mod events;
pub mod packs;
pub mod reflectors;
pub mod registry;
pub mod static_files;
pub mod tools;
pub mod wait;
pub mod workloads;

pub use cluster::{TestEnv, test_env};
