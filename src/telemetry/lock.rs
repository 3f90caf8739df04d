//! The one way telemetry takes a lock: ignoring poisoning, so counters stay usable after a
//! panic elsewhere (a count is still right after a thread died holding the lock).

use std::sync::{Mutex, MutexGuard};

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
