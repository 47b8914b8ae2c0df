//! redeploy-controller's domain metrics (the shared reconcile metrics come from `common`).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindResult {
    pub kind: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// Redeploys by kind and result, invalid annotations, watched objects, and change-to-patch latency.
#[derive(Clone, Debug)]
pub struct RedeployMetrics {
    pub redeploys: Family<KindResult, Counter>,
    pub invalid_annotations: Family<KindLabel, Counter>,
    pub watched_objects: Gauge,
    pub change_to_patch: Histogram,
}

impl RedeployMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = RedeployMetrics {
            redeploys: Family::default(),
            invalid_annotations: Family::default(),
            watched_objects: Gauge::default(),
            change_to_patch: Histogram::new([
                0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0,
            ]),
        };
        registry.register(
            "redeploys",
            "Rollouts triggered by a watched ConfigMap/Secret change, by workload kind and result (rolled, paused, rate_limited; a failed patch counts in reconcile_errors_total)",
            m.redeploys.clone(),
        );
        registry.register(
            "invalid_annotations",
            "Workloads seen with an invalid watch-to-redeploy annotation (not acted on)",
            m.invalid_annotations.clone(),
        );
        registry.register(
            "watched_objects",
            "Distinct ConfigMaps and Secrets watched by some workload",
            m.watched_objects.clone(),
        );
        registry.register(
            "redeploy_change_to_patch_seconds",
            "Time from a change being first seen to the rollout patch (includes the configured delay)",
            m.change_to_patch.clone(),
        );
        m
    }

    pub fn redeploy(&self, kind: &str, result: &str) {
        self.redeploys
            .get_or_create(&KindResult {
                kind: kind.into(),
                result: result.into(),
            })
            .inc();
    }
}
