//! Waiting for a condition instead of sleeping a fixed time.

use std::future::Future;
use std::time::{Duration, Instant};

/// Patience for anything that should happen "soon".
pub const WAIT: Duration = Duration::from_secs(60);

/// Polls `f` every 100 ms until it returns true; panics with `what` once `timeout`
/// passed. A single call of `f` is also cut off at the deadline.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // `timeout_at` polls `f()` before looking at the clock, so a check that is
        // ready at once still counts after the deadline.
        if let Ok(true) = tokio::time::timeout_at(deadline, f()).await {
            return;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep((deadline - now).min(Duration::from_millis(100))).await;
    }
}

/// Blocking `eventually`: polls `f` every 100 ms until true; panics with `what` once
/// `timeout` passed.
pub fn eventually_sync<F>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> bool,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(100)));
    }
}
