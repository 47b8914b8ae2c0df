//! Waking the objects that reference a ConfigMap or Secret when it changes, without caching ConfigMaps
//! or Secrets: a reverse index from a source (kind, namespace, name) to the objects that reference it
//! ([`WatchIndex`], generic over the referrer), and a metadata-only watch that turns events on sources
//! into [`SourceEvent`]s ([`source_changes`]). The controller then reads only the sources its referrers
//! name. Memory is O(referrers), independent of how many ConfigMaps and Secrets exist.
//!
//! Shared by the redeploy-controller (workloads whose `watch-to-redeploy` annotation names a source) and
//! the pack-controller (Packs whose `spec.valuesFrom` names one).

use std::{
    collections::{BTreeSet, HashMap},
    fmt::Debug,
    hash::Hash,
};

use futures::{Stream, StreamExt};
use kube::{
    Api, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;
use tracing::debug;

use crate::annotation::{WatchKind, WatchTarget};

/// A referenced ConfigMap or Secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    pub kind: WatchKind,
    pub namespace: String,
    pub name: String,
}

impl SourceKey {
    /// The source `target` names, in `namespace` (a target never names another namespace).
    pub fn of(namespace: &str, target: &WatchTarget) -> Self {
        SourceKey {
            kind: target.kind,
            namespace: namespace.to_owned(),
            name: target.name.clone(),
        }
    }
}

/// The reverse index: which referrers (of type `R`) reference which sources.
#[derive(Debug)]
pub struct WatchIndex<R> {
    watchers: HashMap<SourceKey, BTreeSet<R>>,
    watched: HashMap<R, Vec<SourceKey>>,
}

impl<R> Default for WatchIndex<R> {
    fn default() -> Self {
        WatchIndex {
            watchers: HashMap::new(),
            watched: HashMap::new(),
        }
    }
}

impl<R: Clone + Ord + Hash> WatchIndex<R> {
    /// Records that `referrer` references exactly `sources` (replacing what it referenced before).
    pub fn set(&mut self, referrer: &R, sources: Vec<SourceKey>) {
        self.remove(referrer);
        if sources.is_empty() {
            return;
        }
        for source in &sources {
            self.watchers
                .entry(source.clone())
                .or_default()
                .insert(referrer.clone());
        }
        self.watched.insert(referrer.clone(), sources);
    }

    /// Forgets `referrer` (deleted, or it references nothing any more).
    pub fn remove(&mut self, referrer: &R) {
        if let Some(old) = self.watched.remove(referrer) {
            for source in old {
                if let Some(set) = self.watchers.get_mut(&source) {
                    set.remove(referrer);
                    if set.is_empty() {
                        self.watchers.remove(&source);
                    }
                }
            }
        }
    }

    /// Keeps only the referrers for which `keep` is true (after a relist: those still there).
    pub fn retain(&mut self, mut keep: impl FnMut(&R) -> bool) {
        let gone: Vec<R> = self.watched.keys().filter(|r| !keep(r)).cloned().collect();
        for r in &gone {
            self.remove(r);
        }
    }

    /// The referrers of `source`, in order.
    pub fn watchers_of(&self, source: &SourceKey) -> Vec<R> {
        self.watchers
            .get(source)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Number of distinct referenced sources.
    pub fn watched_objects(&self) -> usize {
        self.watchers.len()
    }
}

/// A ConfigMap or Secret was created, changed or deleted (seen as metadata only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceEvent {
    pub source: SourceKey,
    /// Its `resourceVersion` (None when deleted or unknown).
    pub resource_version: Option<String>,
    pub deleted: bool,
}

/// Watches the objects of `api` (ConfigMaps or Secrets, metadata only, nothing cached) and yields a
/// [`SourceEvent`] for each one created, changed or deleted, relists included. Watch errors are retried
/// with the default backoff and logged at debug level; the stream ends only when the watch does.
pub fn source_changes<S>(
    api: Api<PartialObjectMeta<S>>,
    kind: WatchKind,
) -> impl Stream<Item = SourceEvent> + Send + 'static
where
    S: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    PartialObjectMeta<S>:
        Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + 'static,
{
    watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .filter_map(move |event| {
            let event = match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => Some((o, false)),
                Ok(watcher::Event::Delete(o)) => Some((o, true)),
                Ok(_) => None,
                Err(e) => {
                    debug!(error = %e, "source watch error (retrying)");
                    None
                }
            };
            std::future::ready(event.map(|(obj, deleted)| SourceEvent {
                source: SourceKey {
                    kind,
                    namespace: obj.namespace().unwrap_or_default(),
                    name: obj.name_any(),
                },
                resource_version: if deleted {
                    None
                } else {
                    obj.resource_version()
                },
                deleted,
            }))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(kind: WatchKind, name: &str) -> SourceKey {
        SourceKey {
            kind,
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    #[test]
    fn any_referrer_type_and_retain() {
        let mut idx: WatchIndex<(String, String)> = WatchIndex::default();
        let a = ("ns".to_string(), "a".to_string());
        let b = ("ns".to_string(), "b".to_string());
        idx.set(&a, vec![s(WatchKind::Secret, "db")]);
        idx.set(
            &b,
            vec![s(WatchKind::Secret, "db"), s(WatchKind::ConfigMap, "db")],
        );
        assert_eq!(
            idx.watchers_of(&s(WatchKind::Secret, "db")),
            vec![a.clone(), b.clone()]
        );
        assert_eq!(
            idx.watchers_of(&s(WatchKind::ConfigMap, "db")),
            vec![b.clone()]
        );
        idx.retain(|r| r == &a);
        assert_eq!(idx.watchers_of(&s(WatchKind::Secret, "db")), vec![a]);
        assert!(idx.watchers_of(&s(WatchKind::ConfigMap, "db")).is_empty());
        assert_eq!(idx.watched_objects(), 1);
    }
}
