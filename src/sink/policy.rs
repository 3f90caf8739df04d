//! The retry and batch-size policy of one destination: when a failure deserves a log line,
//! when a broken connection splits the batch, and how the batch size shrinks after a 413 and
//! grows back.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::sink::config::Influx;

/// Consecutive connection breaks in the middle of a multi-line request after which the
/// batch is split: InfluxDB may reset the connection on a body it will not take, before
/// answering 413.
const BREAKS_BEFORE_SPLIT: u32 = 3;

/// Retry state of one destination.
pub struct Retry {
    pub backoff: Backoff,
    failing: bool,
    /// The cause of the last failure (`WriteOutcome`'s `cause`), to log when it changes.
    cause: Option<String>,
    breaks: u32,
    pub size: BatchSize,
}

impl Retry {
    pub fn new(cfg: &Influx) -> Self {
        Retry {
            backoff: Backoff::new(Duration::from_millis(cfg.retry_initial_ms), Duration::from_millis(cfg.retry_max_ms)),
            failing: false,
            cause: None,
            breaks: 0,
            size: BatchSize::new(cfg.batch_max_lines),
        }
    }

    /// Records a failed attempt with `cause`; true if it deserves a log line: the first
    /// failure, a cause other than the last one, and every 10th attempt of the same.
    pub fn failed(&mut self, cause: &str) -> bool {
        let changed = self.cause.as_deref() != Some(cause);
        let log = !self.failing || changed || self.backoff.attempts.is_multiple_of(10);
        if changed {
            self.cause = Some(cause.to_owned());
        }
        self.failing = true;
        log
    }

    /// Records a batch written: the destination works. True if it was failing until now.
    pub fn recovered(&mut self) -> bool {
        let was_failing = self.failing;
        self.failing = false;
        self.cause = None;
        self.breaks = 0;
        self.backoff.reset();
        was_failing
    }

    /// Records a connection broken in the middle of a multi-line request; true when that
    /// happened [`BREAKS_BEFORE_SPLIT`] times in a row (and the count starts again).
    pub fn broke_mid_request(&mut self) -> bool {
        self.breaks += 1;
        if self.breaks < BREAKS_BEFORE_SPLIT {
            return false;
        }
        self.breaks = 0;
        true
    }
}

/// Full batches to write at a reduced size before doubling it.
const GROW_AFTER: u32 = 8;
/// The longest run asked for before growing again (see [`BatchSize`]).
const GROW_AFTER_MAX: u32 = 1024;

/// The batch size of one destination: `batch_max_lines`, unless the server refused a batch
/// as too large (413) or kept breaking the connection on it; then half that batch. After a
/// run of [`GROW_AFTER`] full batches written at the smaller size it doubles, up to
/// `batch_max_lines`. A size refused on its first try after growing is tried again only after
/// twice as long a run (up to [`GROW_AFTER_MAX`]): a server with a hard limit below
/// `batch_max_lines` then sees one refused request in ever longer intervals.
#[derive(Debug)]
pub struct BatchSize {
    configured: usize,
    current: usize,
    /// Full batches written since the size last changed.
    run: u32,
    /// Full batches to write at `current` before doubling it.
    needed: u32,
    /// `current` was reached by growing and no full batch was written at it yet.
    untried: bool,
}

impl BatchSize {
    pub fn new(configured: usize) -> Self {
        BatchSize { configured, current: configured, run: 0, needed: GROW_AFTER, untried: false }
    }

    pub fn current(&self) -> usize {
        self.current
    }

    /// A batch of `lines` lines was too large: from now on at most half of it.
    pub fn shrink(&mut self, lines: usize) {
        if self.untried {
            self.needed = (self.needed * 2).min(GROW_AFTER_MAX);
        }
        self.current = (lines / 2).min(self.current).max(1);
        self.run = 0;
        self.untried = false;
    }

    /// A batch of `lines` lines was written. True when this brought the size back to
    /// `configured`.
    pub fn written(&mut self, lines: usize) -> bool {
        if lines < self.current {
            return false;
        }
        self.untried = false;
        if self.current >= self.configured {
            return false;
        }
        self.run += 1;
        if self.run < self.needed {
            return false;
        }
        self.current = (self.current * 2).min(self.configured);
        self.run = 0;
        self.untried = true;
        let back = self.current == self.configured;
        if back {
            self.needed = GROW_AFTER;
        }
        back
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `n` full batches at the current size; whether the last brought it back.
    fn write_full(b: &mut BatchSize, n: u32) -> bool {
        (0..n).map(|_| b.written(b.current())).last().unwrap_or(false)
    }

    #[test]
    fn batch_size_grows_back_after_runs_of_full_batches() {
        let mut b = BatchSize::new(64);
        assert!(!b.written(64), "at the configured size nothing changes");
        b.shrink(64);
        assert_eq!(b.current(), 32);
        b.shrink(32);
        assert_eq!(b.current(), 16);
        assert!(!write_full(&mut b, GROW_AFTER - 1));
        assert!(!b.written(15), "a batch that is not full proves nothing");
        assert_eq!(b.current(), 16);
        assert!(!b.written(16));
        assert_eq!(b.current(), 32, "doubled after a run");
        assert!(write_full(&mut b, GROW_AFTER), "back to the configured size, said once");
        assert_eq!(b.current(), 64);
        assert!(!write_full(&mut b, 3 * GROW_AFTER));
        b.shrink(64);
        assert_eq!(b.needed, GROW_AFTER, "64 had been written: a later 413 is no relapse");
    }

    #[test]
    fn batch_size_refused_right_after_growing_waits_twice_as_long() {
        let mut b = BatchSize::new(64);
        b.shrink(16);
        assert_eq!(b.current(), 8);
        write_full(&mut b, GROW_AFTER);
        assert_eq!(b.current(), 16);
        b.shrink(16);
        assert_eq!(b.current(), 8, "16 was refused at once");
        write_full(&mut b, GROW_AFTER);
        assert_eq!(b.current(), 8, "not yet");
        write_full(&mut b, GROW_AFTER);
        assert_eq!(b.current(), 16, "after twice the run");
        b.written(16);
        b.shrink(16);
        write_full(&mut b, 2 * GROW_AFTER);
        assert_eq!(b.current(), 16, "16 had worked once: no longer a relapse");
        for _ in 0..20 {
            write_full(&mut b, GROW_AFTER_MAX);
            b.shrink(b.current());
        }
        assert!(b.needed <= GROW_AFTER_MAX);
        assert_eq!(BatchSize::new(1).current(), 1);
        let mut one = BatchSize::new(4);
        one.shrink(1);
        assert_eq!(one.current(), 1, "never below one line");
    }

    #[test]
    fn every_change_of_cause_is_worth_a_log_line() {
        let mut st = Retry {
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(2)),
            failing: false,
            cause: None,
            breaks: 0,
            size: BatchSize::new(10),
        };
        let mut logged = Vec::new();
        for cause in ["HTTP 503", "HTTP 503", "HTTP 404", "HTTP 404", "HTTP 400 not from InfluxDB", "HTTP 503"] {
            logged.push(st.failed(cause));
            st.backoff.next_delay();
        }
        assert_eq!(logged, [true, false, true, false, true, true]);
    }
}
