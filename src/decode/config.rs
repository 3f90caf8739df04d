//! `[clock]`: the gateway clock against the devices' clocks.

use serde::{Deserialize, Serialize};

use crate::config::problem::Problems;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Clock {
    /// A device time further ahead of the gateway clock than this is a device clock that is
    /// wrong, not a reading from the future: refused (HL7 and MQTT JSON), counted and logged
    /// with the device. Small, because a reading stamped ahead would also be resolved against
    /// a binding that is not yet in force.
    pub future_tolerance_ms: u64,
}

impl Default for Clock {
    fn default() -> Self {
        Self { future_tolerance_ms: 120_000 }
    }
}

impl Clock {
    pub fn future_tolerance_ns(&self) -> i64 {
        i64::try_from(self.future_tolerance_ms).unwrap_or(i64::MAX / 1_000_000).saturating_mul(1_000_000)
    }
}

impl Clock {
    pub fn validate(&self, p: &mut Problems) {
        if !(1_000..=86_400_000).contains(&self.future_tolerance_ms) {
            p.bad("clock.future_tolerance_ms", "between 1000 and 86400000 (24 h)".into());
        }
    }
}
