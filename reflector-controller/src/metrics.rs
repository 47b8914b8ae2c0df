//! reflector-controller's domain metrics (the shared reconcile metrics come from `common`). Labels
//! carry results only: never Secret names, data or namespaces.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

/// Reflections by result, managed copies, and conflicts.
#[derive(Clone, Debug, Default)]
pub struct ReflectorMetrics {
    pub reflections: Family<ResultLabel, Counter>,
    pub copies_managed: Gauge,
    pub conflicts: Gauge,
}

impl ReflectorMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = ReflectorMetrics::default();
        registry.register(
            "reflections",
            "Writes to copies and target outcomes, by result (created, updated, replaced, deleted, conflict, error)",
            m.reflections.clone(),
        );
        registry.register(
            "reflector_copies_managed",
            "Copies this controller manages (Secrets carrying its marker label, within its scope)",
            m.copies_managed.clone(),
        );
        registry.register(
            "reflector_conflicts",
            "Targets currently in Conflict (a Secret of the target name this reflector does not manage)",
            m.conflicts.clone(),
        );
        m
    }

    pub fn reflection(&self, result: &str) {
        self.reflections
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes() {
        let mut registry = Registry::with_prefix("pack_operator");
        let m = ReflectorMetrics::register(&mut registry);
        m.reflection("created");
        m.copies_managed.set(3);
        m.conflicts.set(1);
        let text = common::metrics::encode(&registry).unwrap();
        assert!(
            text.contains("pack_operator_reflections_total{result=\"created\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pack_operator_reflector_copies_managed 3"),
            "{text}"
        );
        assert!(
            text.contains("pack_operator_reflector_conflicts 1"),
            "{text}"
        );
    }
}
