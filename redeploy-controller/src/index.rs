//! Which workloads watch which ConfigMaps and Secrets: a reverse index from a watched object to the
//! workloads whose annotation names it, so a change of one object wakes exactly its watchers.
//! Memory is O(annotated workloads), independent of how many ConfigMaps and Secrets exist.

use std::collections::{BTreeSet, HashMap};

use common::annotation::{WatchKind, WatchTarget};

/// Kind of an annotated object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    Pack,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
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

/// A watched ConfigMap or Secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    pub kind: WatchKind,
    pub namespace: String,
    pub name: String,
}

impl SourceKey {
    pub fn of(namespace: &str, target: &WatchTarget) -> Self {
        SourceKey {
            kind: target.kind,
            namespace: namespace.to_owned(),
            name: target.name.clone(),
        }
    }
}

/// The reverse index.
#[derive(Debug, Default)]
pub struct WatchIndex {
    watchers: HashMap<SourceKey, BTreeSet<WorkloadKey>>,
    watched: HashMap<WorkloadKey, Vec<SourceKey>>,
}

impl WatchIndex {
    /// Records that `workload` watches exactly `sources` (replacing what it watched before).
    pub fn set(&mut self, workload: &WorkloadKey, sources: Vec<SourceKey>) {
        self.remove(workload);
        if sources.is_empty() {
            return;
        }
        for source in &sources {
            self.watchers
                .entry(source.clone())
                .or_default()
                .insert(workload.clone());
        }
        self.watched.insert(workload.clone(), sources);
    }

    /// Forgets `workload` (deleted, or its annotation removed or invalid).
    pub fn remove(&mut self, workload: &WorkloadKey) {
        if let Some(old) = self.watched.remove(workload) {
            for source in old {
                if let Some(set) = self.watchers.get_mut(&source) {
                    set.remove(workload);
                    if set.is_empty() {
                        self.watchers.remove(&source);
                    }
                }
            }
        }
    }

    /// The workloads watching `source`.
    pub fn watchers_of(&self, source: &SourceKey) -> Vec<WorkloadKey> {
        self.watchers
            .get(source)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Number of distinct watched objects (for the `watched_objects` metric).
    pub fn watched_objects(&self) -> usize {
        self.watchers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
