//! pack-controller's domain metrics: Helm operations and Packs by state (the shared reconcile metrics
//! come from `common`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use common::crd::pack::PackState;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationResult {
    pub operation: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

/// Helm processes run, by operation (`install`, `upgrade`, `uninstall`, `rollback`, `recover`) and result
/// (`success`, `failure`, `cancelled`), and their durations.
#[derive(Clone, Debug)]
pub struct HelmMetrics {
    pub operations: Family<OperationResult, Counter>,
    pub durations: Family<OperationLabel, Histogram>,
}

impl HelmMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = HelmMetrics {
            operations: Family::default(),
            durations: Family::new_with_constructor(|| {
                Histogram::new([
                    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                ])
            }),
        };
        registry.register(
            "helm_operations",
            "Helm operations run, by operation (install, upgrade, rollback, uninstall, recover) and result (success, failure, cancelled)",
            m.operations.clone(),
        );
        registry.register(
            "helm_operation_duration_seconds",
            "Wall time of Helm operations, by operation",
            m.durations.clone(),
        );
        m
    }

    pub fn record(&self, operation: &str, result: &str, took: Duration) {
        self.operations
            .get_or_create(&OperationResult {
                operation: operation.into(),
                result: result.into(),
            })
            .inc();
        self.durations
            .get_or_create(&OperationLabel {
                operation: operation.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// Total operations (any kind, any result): a test's proof that a reconcile ran no Helm.
    pub fn total(&self) -> u64 {
        ["install", "upgrade", "rollback", "uninstall", "recover"]
            .iter()
            .flat_map(|op| {
                ["success", "failure", "cancelled"].iter().map(move |r| {
                    self.operations
                        .get_or_create(&OperationResult {
                            operation: (*op).into(),
                            result: (*r).into(),
                        })
                        .get()
                })
            })
            .sum()
    }
}

/// Packs by summary state (`Applied`, `Progressing`, `NotResolved`, `ApplyFailed`, `Removing`,
/// `RemoveFailed`, `Invalid`, `Pending` for
/// none yet), counted over the Packs this process reconciled.
#[derive(Clone, Debug)]
pub struct PackStates {
    gauge: Family<StateLabel, Gauge>,
    by_pack: Arc<Mutex<HashMap<String, &'static str>>>,
}

pub fn state_name(state: Option<PackState>) -> &'static str {
    match state {
        None => "Pending",
        Some(PackState::Applied) => "Applied",
        Some(PackState::Progressing) => "Progressing",
        Some(PackState::NotResolved) => "NotResolved",
        Some(PackState::ApplyFailed) => "ApplyFailed",
        Some(PackState::Removing) => "Removing",
        Some(PackState::RemoveFailed) => "RemoveFailed",
        Some(PackState::Invalid) => "Invalid",
    }
}

impl PackStates {
    pub fn register(registry: &mut Registry) -> Self {
        let m = PackStates {
            gauge: Family::default(),
            by_pack: Arc::default(),
        };
        registry.register(
            "packs",
            "Packs by status.state (Pending = not applied yet)",
            m.gauge.clone(),
        );
        m
    }

    /// Records the state of Pack `key` (`namespace/name`); `None` forgets it (deleted).
    pub fn set(&self, key: &str, state: Option<Option<PackState>>) {
        let mut by_pack = self.by_pack.lock().unwrap_or_else(PoisonError::into_inner);
        let old = match state {
            Some(s) => by_pack.insert(key.to_owned(), state_name(s)),
            None => by_pack.remove(key),
        };
        if let Some(old) = old {
            self.gauge
                .get_or_create(&StateLabel { state: old.into() })
                .dec();
        }
        if let Some(s) = state {
            self.gauge
                .get_or_create(&StateLabel {
                    state: state_name(s).into(),
                })
                .inc();
        }
    }
}

impl PackStates {
    /// Forgets every Pack: this process stopped leading, and only the leader's counts may be non-zero
    /// (a standby's stale counts would add to the leader's in `sum by (state)`).
    pub fn clear(&self) {
        let mut by_pack = self.by_pack.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, state) in by_pack.drain() {
            self.gauge
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_move_between_labels() {
        let m = PackStates::register(&mut Registry::default());
        let get = |s: &str| m.gauge.get_or_create(&StateLabel { state: s.into() }).get();
        m.set("a/x", Some(None));
        m.set("a/y", Some(Some(PackState::Applied)));
        m.set("a/x", Some(Some(PackState::Applied)));
        assert_eq!((get("Pending"), get("Applied")), (0, 2));
        m.set("a/x", None);
        m.set("a/x", None);
        assert_eq!(get("Applied"), 1);
        m.set("a/z", Some(Some(PackState::RemoveFailed)));
        m.clear();
        assert_eq!((get("Applied"), get("RemoveFailed")), (0, 0));
        // Counting starts afresh when leading again.
        m.set("a/y", Some(Some(PackState::Applied)));
        assert_eq!(get("Applied"), 1);
    }
}
