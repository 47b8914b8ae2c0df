//! Liveness and readiness as the health server reports them.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

/// Shared readiness state. A replica is ready when it is a standby (waiting to lead) or when it leads and
/// its controller's caches have synced; a leader whose caches are still filling is not ready yet.
#[derive(Clone, Debug, Default)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Debug, Default)]
struct HealthInner {
    leading: AtomicBool,
    synced: AtomicBool,
}

impl Health {
    /// Marks whether this replica currently leads; losing the lead also forgets the cache sync.
    pub fn set_leading(&self, leading: bool) {
        self.inner.leading.store(leading, Ordering::SeqCst);
        if !leading {
            self.inner.synced.store(false, Ordering::SeqCst);
        }
    }

    /// Called by a controller once its watch caches hold a complete first listing.
    pub fn set_synced(&self, synced: bool) {
        self.inner.synced.store(synced, Ordering::SeqCst);
    }

    /// Whether this replica currently leads.
    pub fn is_leading(&self) -> bool {
        self.inner.leading.load(Ordering::SeqCst)
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        !self.is_leading() || self.inner.synced.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_is_ready_leader_waits_for_sync() {
        let h = Health::default();
        assert!(h.is_ready(), "a standby is ready");
        h.set_leading(true);
        assert!(!h.is_ready(), "a leader without synced caches is not ready");
        h.set_synced(true);
        assert!(h.is_ready());
        h.set_leading(false);
        h.set_leading(true);
        assert!(!h.is_ready(), "a new term starts unsynced");
    }
}
