//! reflector-controller's domain metrics (the shared reconcile metrics come from `common`). Labels
//! carry the kind copied and results only: never object names, data or namespaces.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// The kind copied: `secret` or `configmap`.
    pub kind: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The kind copied: `secret` or `configmap`.
    pub kind: String,
}

/// Reflections by kind and result, managed copies and conflicts by kind.
#[derive(Clone, Debug, Default)]
pub struct ReflectorMetrics {
    pub reflections: Family<ResultLabels, Counter>,
    pub copies_managed: Family<KindLabel, Gauge>,
    pub conflicts: Family<KindLabel, Gauge>,
}

impl ReflectorMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = ReflectorMetrics::default();
        registry.register(
            "reflections",
            "Writes to copies and target outcomes, by kind copied and result (created, updated, replaced, deleted, conflict, error)",
            m.reflections.clone(),
        );
        registry.register(
            "reflector_copies_managed",
            "Copies this controller manages (objects carrying its marker, within its scope), by kind",
            m.copies_managed.clone(),
        );
        registry.register(
            "reflector_conflicts",
            "Targets currently in Conflict (an object of the target name this reflector does not manage), by kind",
            m.conflicts.clone(),
        );
        m
    }

    /// The metrics of one kind copied (`secret`, `configmap`).
    pub fn for_kind(&self, kind: &'static str) -> KindMetrics {
        KindMetrics {
            all: self.clone(),
            kind,
        }
    }
}

/// The metrics of the reflectors of one kind.
#[derive(Clone, Debug)]
pub struct KindMetrics {
    all: ReflectorMetrics,
    kind: &'static str,
}

impl KindMetrics {
    fn label(&self) -> KindLabel {
        KindLabel {
            kind: self.kind.into(),
        }
    }

    pub fn reflection(&self, result: &str) {
        self.all
            .reflections
            .get_or_create(&ResultLabels {
                kind: self.kind.into(),
                result: result.into(),
            })
            .inc();
    }

    pub fn set_copies_managed(&self, n: i64) {
        self.all.copies_managed.get_or_create(&self.label()).set(n);
    }

    pub fn set_conflicts(&self, n: i64) {
        self.all.conflicts.get_or_create(&self.label()).set(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes() {
        let mut registry = Registry::with_prefix("pack_operator");
        let m = ReflectorMetrics::register(&mut registry).for_kind("configmap");
        m.reflection("created");
        m.set_copies_managed(3);
        m.set_conflicts(1);
        let text = common::metrics::encode(&registry).unwrap();
        assert!(
            text.contains(
                "pack_operator_reflections_total{kind=\"configmap\",result=\"created\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("pack_operator_reflector_copies_managed{kind=\"configmap\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("pack_operator_reflector_conflicts{kind=\"configmap\"} 1"),
            "{text}"
        );
    }
}
