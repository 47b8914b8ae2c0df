//! The shared in-memory cache of parsed indexes, repository name → [`CachedRepository`]. Readers clone an
//! `Arc`; they never fetch. Whoever refreshes a repository inserts only after a successful fetch, so a failed
//! refresh leaves the previous good index serving.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use super::error::redact_url_text;
use super::http::CacheValidators;
use super::parse::RepositoryIndex;

/// A repository's index as last fetched successfully.
#[derive(Clone)]
pub struct CachedRepository {
    /// The parsed index, shared with every reader.
    pub index: Arc<RepositoryIndex>,
    /// Validators to make the next fetch conditional.
    pub validators: CacheValidators,
    /// The repository URL (`spec.url`) the index was fetched from.
    pub url: String,
}

impl CachedRepository {
    /// Wraps a freshly fetched index.
    pub fn new(
        url: impl Into<String>,
        index: RepositoryIndex,
        validators: CacheValidators,
    ) -> Self {
        CachedRepository {
            index: Arc::new(index),
            validators,
            url: url.into(),
        }
    }

    /// The validators to send when fetching `url`: none if the index came from another URL (`spec.url`
    /// changed), so that the new URL is always fetched in full.
    pub fn validators_for(&self, url: &str) -> Option<&CacheValidators> {
        (self.url == url).then_some(&self.validators)
    }
}

impl fmt::Debug for CachedRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedRepository")
            .field("url", &redact_url_text(&self.url))
            .field("index", &self.index)
            .field("validators", &self.validators)
            .finish()
    }
}

/// The shared in-memory cache: repository name → its last good index. Cheap to clone; clones share the map.
///
/// Readers (Pack reconciles) only [`get`](Self::get), which clones an `Arc`. The repository reconcile
/// fetches and calls [`insert`](Self::insert) only when the fetch succeeded: after a failed refresh the
/// previous index keeps serving and the failure is reported on the repository's status. A deleted
/// repository is [`remove`](Self::remove)d.
#[derive(Clone)]
pub struct IndexCache {
    repositories: Arc<RwLock<HashMap<String, Arc<CachedRepository>>>>,
    /// Names of repositories whose cached index changed (another digest or URL), for the Packs to
    /// follow: the cache of *this* process is what a Pack resolves against.
    changes: tokio::sync::broadcast::Sender<String>,
    /// Repository name → the charts Packs asked it for: an OCI registry lists the tags of those only.
    wanted: Arc<RwLock<HashMap<String, BTreeSet<String>>>>,
    /// Names of repositories asked for a chart they were not asked for before, for the repository
    /// reconcile to list its tags without waiting for the interval.
    wants: tokio::sync::broadcast::Sender<String>,
}

impl Default for IndexCache {
    fn default() -> Self {
        IndexCache {
            repositories: Arc::default(),
            changes: tokio::sync::broadcast::channel(1024).0,
            wanted: Arc::default(),
            wants: tokio::sync::broadcast::channel(1024).0,
        }
    }
}

impl IndexCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cached index of repository `name`.
    pub fn get(&self, name: &str) -> Option<Arc<CachedRepository>> {
        self.read().get(name).cloned()
    }

    /// Stores the index of repository `name` (replacing the previous one, which is returned). Call only with
    /// the result of a successful fetch.
    pub fn insert(
        &self,
        name: impl Into<String>,
        repository: CachedRepository,
    ) -> Option<Arc<CachedRepository>> {
        let name = name.into();
        let key = (repository.url.clone(), repository.index.digest.clone());
        let previous = self.write().insert(name.clone(), Arc::new(repository));
        if previous
            .as_ref()
            .map(|p| (p.url.clone(), p.index.digest.clone()))
            != Some(key)
        {
            // No receiver (nothing subscribed yet) is fine.
            let _ = self.changes.send(name);
        }
        previous
    }

    /// Names of repositories whose cached index changes from now on. A receiver that falls behind gets
    /// `Lagged` and should treat every repository as changed.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// Forgets repository `name` (and the charts asked of it); readers holding its `Arc` keep their copy
    /// until they drop it.
    pub fn remove(&self, name: &str) -> Option<Arc<CachedRepository>> {
        self.wanted
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        self.write().remove(name)
    }

    /// Records that a Pack uses `chart` of repository `name`; true (and announced to
    /// [`subscribe_wants`](Self::subscribe_wants)) the first time.
    pub fn want(&self, name: &str, chart: &str) -> bool {
        let mut wanted = self.wanted.write().unwrap_or_else(PoisonError::into_inner);
        let added = wanted
            .entry(name.to_owned())
            .or_default()
            .insert(chart.to_owned());
        drop(wanted);
        if added {
            let _ = self.wants.send(name.to_owned());
        }
        added
    }

    /// The charts Packs asked repository `name` for, sorted.
    pub fn wanted(&self, name: &str) -> Vec<String> {
        self.wanted
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .map(|charts| charts.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Names of repositories asked for a new chart from now on (see [`want`](Self::want)).
    pub fn subscribe_wants(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.wants.subscribe()
    }

    /// Number of cached repositories.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no repository is cached.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    // A panic elsewhere while holding the lock cannot leave the map half-updated (each operation is one
    // HashMap call), so a poisoned lock is still safe to use.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<CachedRepository>>> {
        self.repositories
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<CachedRepository>>> {
        self.repositories
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for IndexCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = self.read();
        let mut names: Vec<&str> = map.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("IndexCache")
            .field("repositories", &names)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::index::parse::{
        parse_index,
        tests::{BASE, HELM_INDEX},
    };

    #[test]
    fn the_cache_announces_another_index_not_the_same_one_again() {
        let cache = IndexCache::new();
        let mut changes = cache.subscribe();
        let repo = |text: &[u8]| {
            CachedRepository::new(
                BASE,
                parse_index(text, BASE).unwrap(),
                CacheValidators::default(),
            )
        };
        cache.insert("r", repo(HELM_INDEX.as_bytes()));
        assert_eq!(changes.try_recv().unwrap(), "r");
        // The same bytes fetched again (no ETag support on the server): nothing to announce.
        cache.insert("r", repo(HELM_INDEX.as_bytes()));
        assert!(changes.try_recv().is_err());
        cache.insert("r", repo(b"apiVersion: v1\nentries: {}\n"));
        assert_eq!(changes.try_recv().unwrap(), "r");
    }

    #[test]
    fn the_cache_shares_one_copy_and_only_changes_on_insert_and_remove() {
        let cache = IndexCache::new();
        let reader = cache.clone();
        assert!(reader.get("kubit-packs").is_none());
        let index = parse_index(HELM_INDEX.as_bytes(), BASE).unwrap();
        let validators = CacheValidators {
            etag: Some("\"v1\"".into()),
            last_modified: None,
            digest: None,
        };
        assert!(
            cache
                .insert(
                    "kubit-packs",
                    CachedRepository::new(BASE, index, validators.clone())
                )
                .is_none()
        );

        let first = reader.get("kubit-packs").unwrap();
        let second = reader.get("kubit-packs").unwrap();
        assert!(Arc::ptr_eq(&first.index, &second.index));
        assert_eq!(first.index.chart("genpack").unwrap().len(), 3);
        assert_eq!(first.validators_for(BASE), Some(&validators));
        assert_eq!(
            first.validators_for("https://elsewhere.example.com/repo"),
            None
        );
        assert_eq!((cache.len(), cache.is_empty()), (1, false));
        assert!(format!("{cache:?}").contains("kubit-packs"));

        let newer = parse_index(b"apiVersion: v1\nentries: {}\n", BASE).unwrap();
        let replaced = cache.insert(
            "kubit-packs",
            CachedRepository::new(BASE, newer, CacheValidators::default()),
        );
        assert!(Arc::ptr_eq(&replaced.unwrap().index, &first.index));
        // A reader keeps the copy it holds; new readers see the new index.
        assert_eq!(first.index.chart_count(), 3);
        assert_eq!(reader.get("kubit-packs").unwrap().index.chart_count(), 0);

        assert!(cache.remove("kubit-packs").is_some());
        assert!(reader.get("kubit-packs").is_none());
        assert!(cache.is_empty());
    }
}
