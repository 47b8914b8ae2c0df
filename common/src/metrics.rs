//! Metrics every controller reports, registered under the `pack_operator_` prefix:
//! reconciles and failures by reason, reconcile duration, leadership, and build info.

use std::time::Instant;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info},
    registry::Registry,
};

/// Prefix of every metric this project exports.
pub const PREFIX: &str = "pack_operator";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    controller: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    controller: String,
    version: String,
}

/// Reconcile counters and the duration histogram of one controller.
#[derive(Clone, Debug)]
pub struct ReconcileMetrics {
    controller: ControllerLabel,
    reconciles: Family<ControllerLabel, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: Family<ControllerLabel, Histogram>,
}

fn duration_histogram() -> Histogram {
    // 1 ms .. ~65 s: covers a cache-only no-op and a slow helm upgrade.
    Histogram::new([
        0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

impl ReconcileMetrics {
    /// Registers the reconcile metrics for `controller` (e.g. `pack`, `reflector`, `redeploy`).
    pub fn register(registry: &mut Registry, controller: &str) -> Self {
        let metrics = ReconcileMetrics {
            controller: ControllerLabel {
                controller: controller.to_owned(),
            },
            reconciles: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
        };
        registry.register(
            "reconciles",
            "Reconciliations started",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed, by reason",
            metrics.failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time taken by one reconciliation",
            metrics.duration.clone(),
        );
        metrics
    }

    /// The same families for a second loop of the process (pack-controller's ClusterPackRepository loop):
    /// its series differ only by the `controller` label, e.g.
    /// `pack_operator_reconciles_total{controller="clusterpackrepository"}`.
    pub fn for_controller(&self, controller: &str) -> Self {
        ReconcileMetrics {
            controller: ControllerLabel {
                controller: controller.to_owned(),
            },
            ..self.clone()
        }
    }

    /// Counts a reconcile and returns a guard that records its duration when dropped.
    pub fn start(&self) -> ReconcileTimer {
        self.reconciles.get_or_create(&self.controller).inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: self.duration.get_or_create(&self.controller).clone(),
        }
    }

    /// Counts a failed reconcile under `reason` (an error's `reason()`).
    pub fn failure(&self, reason: &str) {
        self.failures
            .get_or_create(&FailureLabels {
                controller: self.controller.controller.clone(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Current failure count for `reason` (for tests and benchmarks).
    pub fn failures(&self, reason: &str) -> u64 {
        self.failures
            .get_or_create(&FailureLabels {
                controller: self.controller.controller.clone(),
                reason: reason.to_owned(),
            })
            .get()
    }

    /// Current reconcile count (for tests and benchmarks).
    pub fn reconciles(&self) -> u64 {
        self.reconciles.get_or_create(&self.controller).get()
    }
}

/// Records a reconcile's duration when dropped.
#[derive(Debug)]
pub struct ReconcileTimer {
    start: Instant,
    histogram: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

/// Leadership metrics: whether this replica leads, and how often it became leader.
#[derive(Clone, Debug, Default)]
pub struct LeaderMetrics {
    leader: Gauge,
    transitions: Counter,
}

impl LeaderMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = LeaderMetrics::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader-election Lease and runs its controller, else 0",
            metrics.leader.clone(),
        );
        registry.register(
            "leader_acquisitions",
            "Times this replica became leader",
            metrics.transitions.clone(),
        );
        metrics
    }

    /// Records whether this replica leads. One that stops leading drops its condition series: the new
    /// leader reports the objects.
    pub fn set_leading(&self, leading: bool) {
        if leading {
            self.transitions.inc();
        } else {
            crate::condition_metrics::clear();
        }
        self.leader.set(i64::from(leading));
    }

    pub fn is_leading(&self) -> bool {
        self.leader.get() == 1
    }
}

/// Registers `pack_operator_build_info{controller, version}`.
pub fn register_build_info(registry: &mut Registry, controller: &str, version: &str) {
    registry.register(
        "build",
        "Build information",
        Info::new(BuildLabels {
            controller: controller.to_owned(),
            version: version.to_owned(),
        }),
    );
}

/// Encodes a registry in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_metrics_encode() {
        let mut registry = Registry::with_prefix(PREFIX);
        let m = ReconcileMetrics::register(&mut registry, "pack");
        let leader = LeaderMetrics::register(&mut registry);
        register_build_info(&mut registry, "pack", "0.1.0");
        drop(m.start());
        drop(m.start());
        m.failure("HelmFailed");
        leader.set_leading(true);
        let text = encode(&registry).unwrap();
        assert!(
            text.contains("pack_operator_reconciles_total{controller=\"pack\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "pack_operator_reconcile_errors_total{controller=\"pack\",reason=\"HelmFailed\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("pack_operator_reconcile_duration_seconds_count{controller=\"pack\"} 2"),
            "{text}"
        );
        assert!(text.contains("pack_operator_leader 1"), "{text}");
        assert!(
            text.contains("pack_operator_build_info{controller=\"pack\",version=\"0.1.0\"} 1"),
            "{text}"
        );
        assert!(
            text.ends_with("# EOF\n"),
            "OpenMetrics output ends with # EOF"
        );
        assert_eq!(m.reconciles(), 2);
        assert_eq!(m.failures("HelmFailed"), 1);
    }

    #[test]
    fn a_second_loop_shares_the_families_under_its_controller_label() {
        let mut registry = Registry::with_prefix(PREFIX);
        let packs = ReconcileMetrics::register(&mut registry, "pack");
        let repositories = packs.for_controller("clusterpackrepository");
        drop(packs.start());
        drop(repositories.start());
        drop(repositories.start());
        repositories.failure("IndexFetchFailed");
        let text = encode(&registry).unwrap();
        for line in [
            "pack_operator_reconciles_total{controller=\"pack\"} 1",
            "pack_operator_reconciles_total{controller=\"clusterpackrepository\"} 2",
            "pack_operator_reconcile_errors_total{controller=\"clusterpackrepository\",reason=\"IndexFetchFailed\"} 1",
            "pack_operator_reconcile_duration_seconds_count{controller=\"clusterpackrepository\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        // One family each: a name registered twice would be a duplicate in the exposition.
        assert_eq!(
            text.matches("# TYPE pack_operator_reconciles counter")
                .count(),
            1,
            "{text}"
        );
        assert_eq!((packs.reconciles(), repositories.reconciles()), (1, 2));
    }
}
