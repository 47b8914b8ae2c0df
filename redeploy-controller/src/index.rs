//! Which workloads watch which ConfigMaps and Secrets: a reverse index from a watched object to the
//! workloads whose annotation names it, so a change of one object wakes exactly its watchers.
//! Memory is O(annotated workloads), independent of how many ConfigMaps and Secrets exist. The index
//! itself is [`common::watch_index`]; this module names what it maps to.

/// Kind of an annotated object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    CronJob,
    Rollout,
    Pack,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::CronJob => "CronJob",
            WorkloadKind::Rollout => "Rollout",
            WorkloadKind::Pack => "Pack",
        }
    }
}

/// An annotated workload (or Pack).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadKey {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

/// A watched ConfigMap or Secret (the key of the shared reverse index).
pub use common::watch_index::SourceKey;

/// The reverse index from a watched object to the workloads that watch it (shared with the
/// pack-controller's `valuesFrom`: [`common::watch_index`]).
pub type WatchIndex = common::watch_index::WatchIndex<WorkloadKey>;

#[cfg(test)]
mod tests {
    use super::*;
    use common::annotation::WatchKind;

    fn w(name: &str) -> WorkloadKey {
        WorkloadKey {
            kind: WorkloadKind::Deployment,
            namespace: "ns".into(),
            name: name.into(),
        }
    }
    fn s(kind: WatchKind, name: &str) -> SourceKey {
        SourceKey {
            kind,
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    #[test]
    fn tracks_watchers_and_replaces_sets() {
        let mut idx = WatchIndex::default();
        idx.set(
            &w("a"),
            vec![s(WatchKind::ConfigMap, "cm"), s(WatchKind::Secret, "sec")],
        );
        idx.set(&w("b"), vec![s(WatchKind::ConfigMap, "cm")]);
        assert_eq!(
            idx.watchers_of(&s(WatchKind::ConfigMap, "cm")),
            vec![w("a"), w("b")]
        );
        assert_eq!(idx.watchers_of(&s(WatchKind::Secret, "sec")), vec![w("a")]);
        // A Secret and a ConfigMap of the same name are different sources.
        assert!(idx.watchers_of(&s(WatchKind::Secret, "cm")).is_empty());
        assert_eq!(idx.watched_objects(), 2);

        idx.set(&w("a"), vec![s(WatchKind::Secret, "other")]);
        assert_eq!(
            idx.watchers_of(&s(WatchKind::ConfigMap, "cm")),
            vec![w("b")]
        );
        assert!(idx.watchers_of(&s(WatchKind::Secret, "sec")).is_empty());

        idx.remove(&w("b"));
        idx.set(&w("a"), vec![]);
        assert_eq!(idx.watched_objects(), 0);
    }
}
