//! Shared-state helpers.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, going on with the data when another thread panicked while holding it: every lock in the
/// controllers guards bookkeeping that stays valid after a partial update (counts, sets of names).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
