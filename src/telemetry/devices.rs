//! Devices seen recently, for the operator's `status` (never a metric label: serials are
//! unbounded). Only the serial and two times are kept, nothing about a patient.

use std::collections::HashMap;
use std::sync::Mutex;

use super::lock::lock;
use crate::model::Reading;

/// Entries not seen for this long are forgotten.
const FORGET_AFTER_NS: i64 = 15 * 60 * 1_000_000_000;
/// Most devices remembered; beyond it the oldest entries are forgotten first.
const MAX_DEVICES: usize = 10_000;

#[derive(Debug, Default)]
pub struct DevicesSeen {
    by_serial: Mutex<HashMap<String, Seen>>,
}

/// When a device was last heard from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    /// When its last reading arrived (gateway clock, ns since the epoch).
    pub received_ns: i64,
    /// The timestamp of its newest reading (device clock unless absent).
    pub reading_ts_ns: i64,
}

impl DevicesSeen {
    /// Records the readings of one intake batch (one lock for the batch).
    pub fn record<'a>(&self, readings: impl IntoIterator<Item = &'a Reading>, now_ns: i64) {
        let mut map = lock(&self.by_serial);
        for r in readings {
            match map.get_mut(r.serial.as_str()) {
                Some(s) => {
                    s.received_ns = now_ns;
                    s.reading_ts_ns = s.reading_ts_ns.max(r.ts_ns);
                }
                None => {
                    map.insert(r.serial.clone(), Seen { received_ns: now_ns, reading_ts_ns: r.ts_ns });
                }
            }
        }
        if map.len() > MAX_DEVICES {
            map.retain(|_, s| now_ns - s.received_ns < FORGET_AFTER_NS);
            if map.len() > MAX_DEVICES {
                let mut by_age: Vec<(i64, String)> = map.iter().map(|(k, s)| (s.received_ns, k.clone())).collect();
                by_age.sort_unstable();
                let excess = map.len() - MAX_DEVICES / 2;
                for (_, k) in by_age.into_iter().take(excess) {
                    map.remove(&k);
                }
            }
        }
    }

    /// Devices heard from since `since_ns`, most recent first.
    pub fn since(&self, since_ns: i64) -> Vec<(String, Seen)> {
        let map = lock(&self.by_serial);
        let mut out: Vec<(String, Seen)> =
            map.iter().filter(|(_, s)| s.received_ns >= since_ns).map(|(k, s)| (k.clone(), *s)).collect();
        out.sort_by(|a, b| b.1.received_ns.cmp(&a.1.received_ns).then_with(|| a.0.cmp(&b.0)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(serial: &str, ts_ns: i64) -> Reading {
        Reading { serial: serial.into(), ts_ns, signal_type: None, fields: Vec::new() }
    }

    #[test]
    fn keeps_the_newest_reading_time_and_stays_bounded() {
        let d = DevicesSeen::default();
        d.record(&[reading("A", 50), reading("A", 40), reading("B", 10)], 100);
        d.record(&[reading("B", 20)], 200);
        let seen = d.since(0);
        assert_eq!(seen[0], ("B".into(), Seen { received_ns: 200, reading_ts_ns: 20 }));
        assert_eq!(seen[1], ("A".into(), Seen { received_ns: 100, reading_ts_ns: 50 }));
        assert_eq!(d.since(150).len(), 1);
        let many: Vec<Reading> = (0..MAX_DEVICES + 10).map(|i| reading(&format!("S{i}"), 0)).collect();
        d.record(&many, 300);
        assert_eq!(d.since(0).len(), MAX_DEVICES / 2);
    }
}
