//! Capped exponential back-off with jitter, shared by every reconnect and retry loop.

use std::time::Duration;

/// Capped exponential back-off with jitter (50–100 % of the step).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    pub attempts: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, current: initial, attempts: 0 }
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
        self.attempts = 0;
    }

    pub fn next_delay(&mut self) -> Duration {
        let step = self.current;
        self.current = (self.current * 2).min(self.max);
        self.attempts += 1;
        step.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let steps: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        for (s, full) in steps.iter().zip([100u64, 200, 400, 400, 400]) {
            assert!(*s >= Duration::from_millis(full / 2) && *s <= Duration::from_millis(full), "{s:?} vs {full}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
