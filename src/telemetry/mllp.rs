//! The HL7 listener's connections: how many are open against `hl7.max_connections`, and those
//! it refused or closed idle. A refusal because every slot was taken makes the gateway
//! not ready for a while: monitors are being turned away (half-open sockets of unplugged
//! monitors, or a flood), which `/readyz` must say, not hide.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::lock::lock;

/// Refusal reasons (the `reason` label of `heartguard_ingest_hl7_connections_refused_total`).
pub const REFUSED_LIMIT: &str = "limit";
pub const REFUSED_NOT_ALLOWED: &str = "not_allowed";
pub const REFUSED_TLS: &str = "tls";

/// After a connection was refused at the limit, the gateway reports it as not ready this long.
pub const FULL_FOR: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct MllpConnections {
    /// Connections open now.
    pub open: AtomicU64,
    /// `hl7.max_connections`; 0 without a listener.
    pub max: AtomicU64,
    /// Connections closed because nothing came for `hl7.idle_timeout_secs`.
    pub idle_timeouts: AtomicU64,
    /// Connections closed at once, by reason.
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// When a connection was last refused because every slot was taken (ns since the epoch;
    /// 0: never).
    last_full_ns: AtomicI64,
}

impl MllpConnections {
    pub fn refuse(&self, reason: &'static str, now_ns: i64) {
        *lock(&self.refused).entry(reason).or_default() += 1;
        if reason == REFUSED_LIMIT {
            self.last_full_ns.store(now_ns, Relaxed);
        }
    }

    pub fn refused(&self) -> Vec<(&'static str, u64)> {
        lock(&self.refused).iter().map(|(r, n)| (*r, *n)).collect()
    }

    /// What keeps the listener from taking every monitor: a connection refused at the limit
    /// within [`FULL_FOR`].
    pub fn problem(&self, now_ns: i64) -> Option<String> {
        let last = self.last_full_ns.load(Relaxed);
        let window = FULL_FOR.as_nanos() as i64;
        (last > 0 && now_ns.saturating_sub(last) <= window).then(|| {
            format!(
                "hl7: connections refused in the last {} s, every hl7.max_connections slot ({}) in use ({} open now)",
                FULL_FOR.as_secs(),
                self.max.load(Relaxed),
                self.open.load(Relaxed)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_at_the_limit_is_a_problem_for_a_minute() {
        let c = MllpConnections::default();
        c.max.store(64, Relaxed);
        c.refuse(REFUSED_NOT_ALLOWED, 1_000);
        assert_eq!(c.problem(1_000), None, "a stranger turned away is no capacity problem");
        c.refuse(REFUSED_LIMIT, 2_000);
        let p = c.problem(2_000 + FULL_FOR.as_nanos() as i64).expect("within the window");
        assert!(p.contains("hl7.max_connections slot (64)"), "{p}");
        assert_eq!(c.problem(2_001 + FULL_FOR.as_nanos() as i64), None);
        assert_eq!(c.refused(), [(REFUSED_LIMIT, 1), (REFUSED_NOT_ALLOWED, 1)]);
    }
}
