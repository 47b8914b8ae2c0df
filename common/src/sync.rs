//! Shared-state helpers.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, going on with the data when another thread panicked while holding it: every lock in the
/// controllers guards bookkeeping that stays valid after a partial update (counts, sets of names).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What this process last wrote on each object (a status, an annotation), kept as a 64-bit hash per
/// key: a cached object that shows something else lags behind that write (its watch event has not
/// arrived yet), so a decision taken on it could undo the write. The caller then reads the stored
/// object and takes what it finds ([`LastWritten::record`] it), so a value written by someone else is
/// accepted after one read and never read again and again.
#[derive(Debug, Default)]
pub struct LastWritten {
    by_key: Mutex<std::collections::HashMap<String, u64>>,
}

impl LastWritten {
    /// Notes that `value` is now the stored value of `key`'s field.
    pub fn record<T: serde::Serialize>(&self, key: &str, value: &T) {
        lock(&self.by_key).insert(key.to_owned(), hash(value));
    }

    /// Whether `cached` is not what this process last wrote on `key` (false when it wrote nothing yet).
    pub fn lags<T: serde::Serialize>(&self, key: &str, cached: &T) -> bool {
        lock(&self.by_key)
            .get(key)
            .is_some_and(|last| *last != hash(cached))
    }

    /// Forgets `key` (its object is gone, or no longer this process's business).
    pub fn forget(&self, key: &str) {
        lock(&self.by_key).remove(key);
    }
}

fn hash<T: serde::Serialize>(value: &T) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(value).unwrap_or_default().hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_lags_only_behind_a_value_this_process_wrote() {
        let written = LastWritten::default();
        assert!(!written.lags("ns/a", &Some("old")), "nothing written yet");
        written.record("ns/a", &Some("new"));
        assert!(written.lags("ns/a", &Some("old")));
        assert!(written.lags("ns/a", &None::<&str>));
        assert!(!written.lags("ns/a", &Some("new")));
        assert!(!written.lags("ns/b", &Some("old")), "another object");
        // What a read of the stored object found is taken as it is.
        written.record("ns/a", &Some("someone else's"));
        assert!(!written.lags("ns/a", &Some("someone else's")));
        written.forget("ns/a");
        assert!(!written.lags("ns/a", &Some("old")));
    }
}
