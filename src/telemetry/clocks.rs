//! Device clocks against the gateway's: the tolerance the decoders apply
//! (`clock.future_tolerance_ms`), and the readings refused because their device's clock runs
//! further ahead than that, counted by protocol and logged by device. A device serial is not
//! personal data; nothing of a message's content is logged.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use super::lock::lock;
use crate::decode::{ClockAhead, Now};
use crate::model::loggable;

/// A device whose clock is ahead is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(600);

/// Devices remembered for [`LOG_EVERY`]; past this many the memory starts afresh, so a flood
/// of made-up serials cannot grow it.
const LOG_DEVICES: usize = 10_000;

#[derive(Debug)]
pub struct DeviceClocks {
    future_tolerance_ns: AtomicI64,
    /// Readings refused, by protocol label.
    ahead: Mutex<BTreeMap<&'static str, u64>>,
    /// When each device was last logged.
    logged: Mutex<HashMap<String, Instant>>,
}

impl Default for DeviceClocks {
    fn default() -> Self {
        Self {
            future_tolerance_ns: AtomicI64::new(crate::decode::config::Clock::default().future_tolerance_ns()),
            ahead: Mutex::default(),
            logged: Mutex::default(),
        }
    }
}

impl DeviceClocks {
    /// Sets the tolerance (`clock.future_tolerance_ms`), once at start.
    pub fn set_future_tolerance_ns(&self, ns: i64) {
        self.future_tolerance_ns.store(ns, Relaxed);
    }

    /// The gateway clock for a decoder: now, and the tolerance.
    pub fn now(&self) -> Now {
        Now { ns: crate::now_ns(), future_tolerance_ns: self.future_tolerance_ns.load(Relaxed) }
    }

    /// Counts readings a decoder refused for a clock ahead, and logs each device at most every
    /// [`LOG_EVERY`].
    pub fn report(&self, protocol: &'static str, ahead: &[ClockAhead]) {
        if ahead.is_empty() {
            return;
        }
        *lock(&self.ahead).entry(protocol).or_default() += ahead.len() as u64;
        let now = Instant::now();
        let mut logged = lock(&self.logged);
        for a in ahead {
            if logged.get(&a.serial).is_some_and(|t| now.duration_since(*t) < LOG_EVERY) {
                continue;
            }
            if logged.len() >= LOG_DEVICES {
                logged.clear();
            }
            logged.insert(a.serial.clone(), now);
            warn!(
                device = %loggable(&a.serial),
                protocol,
                ahead_s = (a.ahead_ns / 1_000_000) as f64 / 1000.0,
                tolerance_s = (self.future_tolerance_ns.load(Relaxed) / 1_000_000) as f64 / 1000.0,
                "Device clock ahead of the gateway's; its readings stamped beyond clock.future_tolerance_ms are refused (counted; logged at most every 10 min per device)."
            );
        }
    }

    /// Readings refused for a clock ahead, by protocol.
    pub fn ahead(&self) -> Vec<(&'static str, u64)> {
        lock(&self.ahead).iter().map(|(p, n)| (*p, *n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_device_is_counted_every_time_and_logged_at_most_every_ten_minutes() {
        let c = DeviceClocks::default();
        let a = |s: &str| ClockAhead { serial: s.into(), ahead_ns: 600_000_000_000 };
        c.report("hl7", &[a("A"), a("B")]);
        c.report("hl7", &[a("A")]);
        c.report("json", &[a("A")]);
        assert_eq!(c.ahead(), [("hl7", 3), ("json", 1)]);
        let logged = lock(&c.logged).clone();
        assert_eq!(logged.len(), 2);
        tokio::time::advance(LOG_EVERY).await;
        c.report("hl7", &[a("A")]);
        assert!(lock(&c.logged)["A"] > logged["A"], "logged again after 10 min");
        assert_eq!(lock(&c.logged)["B"], logged["B"]);
        assert_eq!(c.now().future_tolerance_ns, 120_000_000_000);
    }
}
