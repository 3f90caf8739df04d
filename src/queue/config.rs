//! `[queue]`: durability and the bounds of what the queue keeps.

use serde::{Deserialize, Serialize};

use super::{FullPolicy, Limits, Synchronous};
use crate::config::problem::Problems;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Queue {
    /// `full` (every commit survives power loss) or `normal` (faster on slow storage; the
    /// last commits may be lost on power loss, never on a process crash).
    pub synchronous: Synchronous,
    /// Most bytes the queue keeps (about the disk space they take): waiting points (line
    /// protocol), parked readings and dead letters. The default suits a small eMMC card: about
    /// 1.5 million readings.
    pub max_bytes: u64,
    /// When `max_bytes` is reached: `drop_oldest` (counted and logged) or `backpressure`
    /// (stop acknowledging MQTT so the broker holds the data). Either acts on waiting points.
    pub full_policy: FullPolicy,
    /// Most bytes of readings parked `unbound` (stored reading and serial); over it the oldest
    /// are deleted, so readings nobody claims cannot take the waiting points' room. Not set:
    /// `max_bytes / 8`.
    pub max_parked_bytes: Option<u64>,
    /// Most bytes of dead letters (line and detail); over it the oldest are deleted. Not set:
    /// `max_bytes / 8`.
    pub max_dead_letter_bytes: Option<u64>,
    /// Intake stops, whatever the policy, when less than this is free on the data
    /// directory's filesystem, so the disk never fills up.
    pub min_free_bytes: u64,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            max_bytes: 512 * 1024 * 1024,
            full_policy: FullPolicy::DropOldest,
            max_parked_bytes: None,
            max_dead_letter_bytes: None,
            min_free_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Queue {
    pub fn limits(&self) -> Limits {
        Limits {
            max_bytes: self.max_bytes,
            policy: self.full_policy,
            max_parked_bytes: self.max_parked_bytes(),
            max_dead_letter_bytes: self.max_dead_letter_bytes(),
            min_free_bytes: self.min_free_bytes,
            ..Limits::default()
        }
    }

    /// `max_parked_bytes`, or its default: an eighth of `max_bytes`.
    pub fn max_parked_bytes(&self) -> u64 {
        self.max_parked_bytes.unwrap_or(self.max_bytes / 8)
    }

    /// `max_dead_letter_bytes`, or its default: an eighth of `max_bytes`.
    pub fn max_dead_letter_bytes(&self) -> u64 {
        self.max_dead_letter_bytes.unwrap_or(self.max_bytes / 8)
    }
}

impl Queue {
    /// Checks every `queue.*` key.
    pub fn validate(&self, p: &mut Problems) {
        let q = self;
        if q.max_bytes < 64 * 1024 {
            p.bad("queue.max_bytes", "at least 65536".into());
        }
        let (parked, dead) = (q.max_parked_bytes(), q.max_dead_letter_bytes());
        if parked >= q.max_bytes {
            p.bad("queue.max_parked_bytes", format!("{parked} must be below queue.max_bytes ({})", q.max_bytes));
        }
        if dead >= q.max_bytes {
            p.bad("queue.max_dead_letter_bytes", format!("{dead} must be below queue.max_bytes ({})", q.max_bytes));
        } else if parked < q.max_bytes && parked.saturating_add(dead) >= q.max_bytes {
            p.bad(
                "queue.max_dead_letter_bytes",
                format!(
                    "{dead} and queue.max_parked_bytes ({parked}) together must stay below queue.max_bytes ({}), so \
                     that waiting points keep room",
                    q.max_bytes
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn queue_caps_default_to_an_eighth_of_max_bytes_and_stay_below_it() {
        let cfg = Config::parse("[queue]\nmax_bytes = 800000\n").expect("parses");
        let l = cfg.queue.limits();
        assert_eq!((l.max_bytes, l.max_parked_bytes, l.max_dead_letter_bytes), (800_000, 100_000, 100_000));
        cfg.validate().expect("valid");
        let keys = |toml: &str| -> Vec<String> {
            let cfg = Config::parse(toml).expect("parses");
            cfg.validate().err().unwrap_or_default().into_iter().map(|p| format!("{}: {}", p.key, p.message)).collect()
        };
        assert_eq!(
            keys("[queue]\nmax_bytes = 800000\nmax_parked_bytes = 800000\n"),
            ["queue.max_parked_bytes: 800000 must be below queue.max_bytes (800000)"]
        );
        assert_eq!(
            keys("[queue]\nmax_bytes = 800000\nmax_parked_bytes = 500000\nmax_dead_letter_bytes = 300000\n"),
            ["queue.max_dead_letter_bytes: 300000 and queue.max_parked_bytes (500000) together must stay below \
                 queue.max_bytes (800000), so that waiting points keep room"]
        );
        assert_eq!(keys("[queue]\nmax_bytes = 800000\nmax_dead_letter_bytes = 0\n"), Vec::<String>::new());
    }
}
