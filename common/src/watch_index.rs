//! Waking the objects that reference a ConfigMap or Secret when it changes, without caching ConfigMaps
//! or Secrets: a reverse index from a source (kind, namespace, name) to the objects that reference it
//! ([`WatchIndex`], generic over the referrer), and a metadata-only watch that turns events on sources
//! into [`SourceEvent`]s ([`source_changes`]). The controller then reads only the sources its referrers
//! name. Memory is O(referrers), independent of how many ConfigMaps and Secrets exist.
//!
//! Shared by the redeploy-controller (workloads whose `watch-to-redeploy` annotation names a source) and
//! the pack-controller (Packs whose `spec.valuesFrom` names one).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fmt::Debug,
    hash::Hash,
    sync::Arc,
};

use futures::{Stream, StreamExt};
use kube::{
    Api, Resource,
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

    /// The referenced sources of `kind`, in `namespace` (or in any namespace when `None`).
    pub fn sources(&self, kind: WatchKind, namespace: Option<&str>) -> Vec<SourceKey> {
        self.watchers
            .keys()
            .filter(|s| s.kind == kind && namespace.is_none_or(|ns| s.namespace == ns))
            .cloned()
            .collect()
    }
}

/// The sources a consumer's referrers reference now, of a kind, in a namespace (`None`: any); what a
/// source watch compares each (re)list against, to report the referenced sources missing from it as
/// deleted. Usually [`WatchIndex::sources`] under the consumer's lock.
pub type Referenced = Arc<dyn Fn(WatchKind, Option<&str>) -> Vec<SourceKey> + Send + Sync>;

/// A ConfigMap or Secret was created, changed or deleted (seen as metadata only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceEvent {
    pub source: SourceKey,
    /// Its `resourceVersion` (None when deleted or unknown).
    pub resource_version: Option<String>,
    pub deleted: bool,
}

/// Watches the objects of `api` (ConfigMaps or Secrets of `namespace`, or of every namespace when
/// `None`; metadata only, nothing cached) and yields a [`SourceEvent`] for each one created, changed or
/// deleted, relists included. Watch errors are retried with the default backoff and logged at debug
/// level; the stream ends only when the watch does.
///
/// A (re)list reports no deletion: an object deleted before the first list, or while the watch was
/// down, is simply absent from it. So when a list ends, every source `referenced` names that the list
/// did not contain is reported deleted ([`RelistGaps`]). Without that, a referrer that read a source
/// just before it was deleted, while this watch was still starting, would not hear of it until its
/// next resync.
pub fn source_changes<S>(
    api: Api<PartialObjectMeta<S>>,
    kind: WatchKind,
    namespace: Option<String>,
    referenced: Referenced,
) -> impl Stream<Item = SourceEvent> + Send + 'static
where
    S: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    PartialObjectMeta<S>:
        Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + 'static,
{
    let mut gaps = RelistGaps::new(kind, namespace, referenced);
    watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .flat_map(move |event| {
            let events = match event {
                Ok(event) => gaps.feed(event),
                Err(e) => {
                    debug!(error = %e, "source watch error (retrying)");
                    Vec::new()
                }
            };
            futures::stream::iter(events)
        })
}

/// Turns the watch events of one source watch into [`SourceEvent`]s, and after each (re)list reports
/// the referenced sources it did not contain as deleted. Only referenced sources are remembered during
/// a list: memory is O(referenced sources), not O(objects listed).
pub struct RelistGaps {
    kind: WatchKind,
    namespace: Option<String>,
    referenced: Referenced,
    /// During a list: the sources referenced when it began, and whether the list contained each.
    listing: Option<HashMap<SourceKey, bool>>,
}

impl RelistGaps {
    pub fn new(kind: WatchKind, namespace: Option<String>, referenced: Referenced) -> Self {
        RelistGaps {
            kind,
            namespace,
            referenced,
            listing: None,
        }
    }

    /// The [`SourceEvent`]s for one watch event on a source of this watch's kind.
    pub fn feed<O: Resource>(&mut self, event: watcher::Event<O>) -> Vec<SourceEvent> {
        let kind = self.kind;
        let key = |obj: &O| SourceKey {
            kind,
            namespace: obj.meta().namespace.clone().unwrap_or_default(),
            name: obj.meta().name.clone().unwrap_or_default(),
        };
        let changed = |obj: &O| SourceEvent {
            source: key(obj),
            resource_version: obj.meta().resource_version.clone(),
            deleted: false,
        };
        let deleted = |source: SourceKey| SourceEvent {
            source,
            resource_version: None,
            deleted: true,
        };
        match event {
            watcher::Event::Init => {
                let now = (self.referenced)(self.kind, self.namespace.as_deref());
                self.listing = Some(now.into_iter().map(|s| (s, false)).collect());
                Vec::new()
            }
            watcher::Event::InitApply(obj) => {
                let event = changed(&obj);
                if let Some(seen) = self.listing.as_mut().and_then(|l| l.get_mut(&event.source)) {
                    *seen = true;
                }
                vec![event]
            }
            watcher::Event::InitDone => {
                let listed: HashSet<SourceKey> = self
                    .listing
                    .take()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(s, seen)| seen.then_some(s))
                    .collect();
                // Sources referenced since the list began and listed count as missing too: a
                // needless wake, never a missed one.
                (self.referenced)(self.kind, self.namespace.as_deref())
                    .into_iter()
                    .filter(|s| !listed.contains(s))
                    .map(deleted)
                    .collect()
            }
            watcher::Event::Apply(obj) => vec![changed(&obj)],
            watcher::Event::Delete(obj) => vec![deleted(key(&obj))],
        }
    }
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

    type Cm = PartialObjectMeta<k8s_openapi::api::core::v1::ConfigMap>;

    fn cm(name: &str, rv: &str) -> Cm {
        let mut o = Cm::default();
        o.metadata.namespace = Some("ns".into());
        o.metadata.name = Some(name.into());
        o.metadata.resource_version = Some(rv.into());
        o
    }

    fn names(events: &[SourceEvent]) -> Vec<(String, bool)> {
        events
            .iter()
            .map(|e| (e.source.name.clone(), e.deleted))
            .collect()
    }

    #[test]
    fn a_list_reports_the_referenced_sources_it_lacks_as_deleted() {
        let index = Arc::new(std::sync::Mutex::new(WatchIndex::<String>::default()));
        index.lock().unwrap().set(
            &"app".to_string(),
            vec![
                s(WatchKind::ConfigMap, "kept"),
                s(WatchKind::ConfigMap, "gone"),
                s(WatchKind::Secret, "other-kind"),
            ],
        );
        let referenced: Referenced = {
            let index = index.clone();
            Arc::new(move |kind, ns| index.lock().unwrap().sources(kind, ns))
        };
        let mut gaps = RelistGaps::new(WatchKind::ConfigMap, Some("ns".into()), referenced);

        assert!(gaps.feed(watcher::Event::<Cm>::Init).is_empty());
        let listed = gaps.feed(watcher::Event::InitApply(cm("kept", "7")));
        assert_eq!(listed[0].resource_version.as_deref(), Some("7"));
        assert_eq!(names(&listed), [("kept".into(), false)]);
        assert_eq!(
            names(&gaps.feed(watcher::Event::InitApply(cm("unreferenced", "8")))),
            [("unreferenced".into(), false)]
        );
        // Referenced while the list ran (read before its deletion): reported too.
        index
            .lock()
            .unwrap()
            .set(&"late".to_string(), vec![s(WatchKind::ConfigMap, "late")]);
        let mut missing = names(&gaps.feed(watcher::Event::<Cm>::InitDone));
        missing.sort();
        assert_eq!(missing, [("gone".into(), true), ("late".into(), true)]);

        // Between lists, events pass through; a deletion is reported as such.
        assert_eq!(
            names(&gaps.feed(watcher::Event::Delete(cm("kept", "9")))),
            [("kept".into(), true)]
        );
        assert_eq!(
            names(&gaps.feed(watcher::Event::Apply(cm("gone", "10")))),
            [("gone".into(), false)]
        );
        // A relist that holds everything referenced reports nothing missing.
        gaps.feed(watcher::Event::<Cm>::Init);
        for name in ["kept", "gone", "late"] {
            gaps.feed(watcher::Event::InitApply(cm(name, "11")));
        }
        assert!(gaps.feed(watcher::Event::<Cm>::InitDone).is_empty());
    }

    #[test]
    fn sources_are_filtered_by_kind_and_namespace() {
        let mut idx: WatchIndex<String> = WatchIndex::default();
        let mut elsewhere = s(WatchKind::ConfigMap, "a");
        elsewhere.namespace = "other".into();
        idx.set(
            &"r".to_string(),
            vec![
                s(WatchKind::ConfigMap, "a"),
                elsewhere.clone(),
                s(WatchKind::Secret, "a"),
            ],
        );
        assert_eq!(
            idx.sources(WatchKind::ConfigMap, Some("ns")),
            vec![s(WatchKind::ConfigMap, "a")]
        );
        let mut all = idx.sources(WatchKind::ConfigMap, None);
        all.sort();
        assert_eq!(all, vec![s(WatchKind::ConfigMap, "a"), elsewhere]);
    }
}
