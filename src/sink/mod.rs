//! Delivery: one worker per destination takes the oldest waiting points, posts them as one
//! batch and deletes them only after a 2xx.
//!
//! - A destination that is down or refuses its data only ever delays itself: each has its own
//!   worker, retry state and back-off.
//! - A batch is sent when `batch_max_lines` points wait or `flush_interval_ms` passed since the
//!   last flush; a backlog drains batch after batch without waiting.
//! - Retries never give up on data: network errors and 5xx back off (capped, with jitter,
//!   at least `Retry-After`); 4xx keep the data and back off too, loudly, and so does any
//!   answer that is not InfluxDB's (a redirect, a proxy's 400): see [`influx`].
//! - A point leaves the queue only as written (a 2xx, or the part of a partial write InfluxDB
//!   did not refuse) or dead-lettered. A range is deleted only once everything refused in it
//!   is in the dead letters; if moving it there fails, the range stays and is sent again.
//! - While a destination fails, a log line marks the first failure, every change of its
//!   cause, and every 10th attempt.
//! - A batch refused as too large (413) is split and later batches are smaller; after a run
//!   of full batches written at the smaller size, the size doubles back up to
//!   `batch_max_lines` ([`BatchSize`]).

pub mod config;
pub mod influx;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::backoff::Backoff;
use crate::ingest::Touched;
use crate::model::Destination;
use crate::queue::{Delivered, QueueHandle};
use crate::sink::config::Influx;
use crate::telemetry::health::{self, Heartbeat};
use crate::telemetry::{Counters, DestinationCounters, destination_label};
use influx::InfluxClient;
use influx::outcome::WriteOutcome;

/// What a worker is told by the manager.
struct Wake {
    /// Points committed since the last delivery (a hint for batching, not for correctness).
    pending: AtomicU64,
    notify: Notify,
}

/// Runs the workers until `shutdown`; workers finish the request in flight, start no new one.
pub async fn run_sinks(
    queue: QueueHandle,
    client: Arc<InfluxClient>,
    cfg: Influx,
    counters: Arc<Counters>,
    mut touched: mpsc::UnboundedReceiver<Touched>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let mut workers: HashMap<i64, Arc<Wake>> = HashMap::new();
    let mut names: HashMap<i64, Destination> = HashMap::new();

    let heartbeat = counters.health.register(health::STAGE_SINKS);
    let spawn = |id: i64, dest: Destination, pending: u64, workers: &mut HashMap<i64, Arc<Wake>>| {
        let wake = Arc::new(Wake { pending: AtomicU64::new(pending), notify: Notify::new() });
        workers.insert(id, wake.clone());
        let stage = format!("sink {}", destination_label(&dest));
        let w = Worker {
            id,
            stats: counters.destination(&dest),
            heartbeat: counters.health.register(stage.clone()),
            stage,
            dest,
            queue: queue.clone(),
            client: client.clone(),
            cfg: cfg.clone(),
            counters: counters.clone(),
            wake,
        };
        tracker.spawn(w.run(shutdown.clone()));
    };

    match queue.destinations().await {
        Ok(list) => {
            for (id, dest, pending) in list {
                if pending > 0 {
                    info!(destination = %dest, pending, "Delivering points waiting from before the start.");
                }
                names.insert(id, dest.clone());
                spawn(id, dest, pending, &mut workers);
            }
        }
        Err(e) => {
            error!(error = %e, "Could not list destinations; they start when new points arrive.")
        }
    }

    loop {
        heartbeat.beat();
        let batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(health::BEAT_EVERY) => continue,
            t = touched.recv() => match t {
                Some(t) => t,
                // Intake is gone: nothing new will arrive; keep delivering until told to stop.
                None => { heartbeat.while_waiting(shutdown.cancelled()).await; break; }
            },
        };
        for (id, n) in batch {
            if !workers.contains_key(&id) {
                if !names.contains_key(&id)
                    && let Ok(list) = queue.destinations().await
                {
                    names.extend(list.into_iter().map(|(i, d, _)| (i, d)));
                }
                let Some(dest) = names.get(&id).cloned() else {
                    error!(dest_id = id, "Points for an unknown destination id; they wait in the queue.");
                    continue;
                };
                spawn(id, dest, 0, &mut workers);
            }
            if let Some(w) = workers.get(&id) {
                let before = w.pending.fetch_add(n, Relaxed);
                if before + n >= cfg.batch_max_lines as u64 {
                    w.notify.notify_one();
                }
            }
        }
    }
    tracker.close();
    heartbeat.while_waiting(tracker.wait()).await;
    counters.health.deregister(health::STAGE_SINKS);
}

struct Worker {
    id: i64,
    dest: Destination,
    /// This destination's counters (metrics, status).
    stats: Arc<DestinationCounters>,
    /// Beats while the worker's loop comes round; named `stage`.
    heartbeat: Arc<Heartbeat>,
    stage: String,
    queue: QueueHandle,
    client: Arc<InfluxClient>,
    cfg: Influx,
    counters: Arc<Counters>,
    wake: Arc<Wake>,
}

/// A range written to InfluxDB, to be deleted, with what it held as leased.
struct Written {
    first: i64,
    last: i64,
    seen: Delivered,
}

/// Dead-letter reasons (metric labels, `dead-letters list --reason`).
pub const REASON_REJECTED: &str = "rejected";
pub const REASON_TOO_LARGE: &str = "too_large";

/// Consecutive connection breaks in the middle of a multi-line request after which the
/// batch is split: InfluxDB may reset the connection on a body it will not take, before
/// answering 413.
const BREAKS_BEFORE_SPLIT: u32 = 3;

/// What became of a leased batch.
enum Flow {
    /// Every line written or dead-lettered.
    Done,
    /// A transient failure: wait this long, then lease again.
    Retry(Duration),
    Cancelled,
}

/// Retry state of one destination.
struct Retry {
    backoff: Backoff,
    failing: bool,
    /// The cause of the last failure (`WriteOutcome`'s `cause`), to log when it changes.
    cause: Option<String>,
    breaks: u32,
    size: BatchSize,
}

impl Retry {
    /// Records a failed attempt with `cause`; true if it deserves a log line: the first
    /// failure, a cause other than the last one, and every 10th attempt of the same.
    fn failed(&mut self, cause: &str) -> bool {
        let changed = self.cause.as_deref() != Some(cause);
        let log = !self.failing || changed || self.backoff.attempts.is_multiple_of(10);
        if changed {
            self.cause = Some(cause.to_owned());
        }
        self.failing = true;
        log
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
struct BatchSize {
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
    fn new(configured: usize) -> Self {
        BatchSize { configured, current: configured, run: 0, needed: GROW_AFTER, untried: false }
    }

    fn current(&self) -> usize {
        self.current
    }

    /// A batch of `lines` lines was too large: from now on at most half of it.
    fn shrink(&mut self, lines: usize) {
        if self.untried {
            self.needed = (self.needed * 2).min(GROW_AFTER_MAX);
        }
        self.current = (lines / 2).min(self.current).max(1);
        self.run = 0;
        self.untried = false;
    }

    /// A batch of `lines` lines was written. True when this brought the size back to
    /// `configured`.
    fn written(&mut self, lines: usize) -> bool {
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

impl Worker {
    async fn run(self, shutdown: CancellationToken) {
        self.work(shutdown).await;
        self.counters.health.deregister(&self.stage);
    }

    async fn work(&self, shutdown: CancellationToken) {
        let flush = Duration::from_millis(self.cfg.flush_interval_ms);
        let mut st = Retry {
            backoff: Backoff::new(
                Duration::from_millis(self.cfg.retry_initial_ms),
                Duration::from_millis(self.cfg.retry_max_ms),
            ),
            failing: false,
            cause: None,
            breaks: 0,
            size: BatchSize::new(self.cfg.batch_max_lines),
        };
        // Start with a flush: whatever waits from before the start goes out now.
        let mut deadline = Instant::now();
        loop {
            while self.wake.pending.load(Relaxed) < st.size.current() as u64 && Instant::now() < deadline {
                self.heartbeat.beat();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.wake.notify.notified() => {}
                    _ = tokio::time::sleep_until(deadline.min(Instant::now() + health::BEAT_EVERY)) => {}
                }
            }
            self.heartbeat.beat();
            // Drain: batch after batch while full batches are waiting. While one batch is on
            // its way, the next is read and the one before it deleted: the store thread works
            // while InfluxDB does, and only the request itself is serial.
            let mut next: Option<Vec<crate::queue::Leased>> = None;
            let mut written: Vec<Written> = Vec::new();
            loop {
                if shutdown.is_cancelled() {
                    self.delete_written(&mut written).await;
                    return;
                }
                let rows = match next.take() {
                    Some(rows) => rows,
                    None => match self.queue.lease(self.id, st.size.current(), self.cfg.batch_max_bytes).await {
                        Ok(r) => r,
                        Err(e) => {
                            error!(destination = %self.dest, error = %e, "Could not read the queue; retrying.");
                            self.delete_written(&mut written).await;
                            if self.sleep_or_cancel(st.backoff.next_delay(), &shutdown).await {
                                return;
                            }
                            continue;
                        }
                    },
                };
                if rows.is_empty() {
                    self.delete_written(&mut written).await;
                    self.wake.pending.store(0, Relaxed);
                    break;
                }
                let (full, max_lines) = (rows.len() >= st.size.current(), st.size.current());
                let mut done_before = std::mem::take(&mut written);
                let read_next = async {
                    // Only a full batch suggests more is waiting.
                    let last = rows.last().map(|l| l.id)?;
                    if !full {
                        return None;
                    }
                    self.queue.lease_after(self.id, last, max_lines, self.cfg.batch_max_bytes).await.ok()
                };
                let (flow, following, ()) = tokio::join!(
                    self.deliver(&rows, &mut st, &mut written, &shutdown),
                    read_next,
                    self.delete_written(&mut done_before),
                );
                match flow {
                    Flow::Cancelled => {
                        self.delete_written(&mut written).await;
                        return;
                    }
                    // Lease again after the wait: rows may have been dropped (queue full) or
                    // replayed meanwhile, and new ones may fill the batch.
                    Flow::Retry(wait) => {
                        self.delete_written(&mut written).await;
                        if self.sleep_or_cancel(wait, &shutdown).await {
                            return;
                        }
                        continue;
                    }
                    Flow::Done if !full => {
                        self.delete_written(&mut written).await;
                        break;
                    }
                    // Points read ahead may since have been dropped to make room (queue full):
                    // they are delivered rather than lost, and their delete finds fewer points
                    // than it was handed, so the store reads the range again.
                    Flow::Done => next = following,
                }
            }
            deadline = Instant::now() + flush;
        }
    }

    /// Delivers one leased batch: every line ends up written or dead-lettered with its
    /// reason, or a transient failure asks for a wait (what is not done stays queued).
    async fn deliver(
        &self,
        rows: &[crate::queue::Leased],
        st: &mut Retry,
        written: &mut Vec<Written>,
        shutdown: &CancellationToken,
    ) -> Flow {
        // Ranges still to write, in order. A rejected range is split in halves until the
        // lines InfluxDB refuses are found one by one; rewriting the good ones is harmless
        // (same series, same time: InfluxDB keeps one point).
        let mut todo = std::collections::VecDeque::from([std::ops::Range { start: 0, end: rows.len() }]);
        while let Some(r) = todo.pop_front() {
            if shutdown.is_cancelled() {
                return Flow::Cancelled;
            }
            let part = &rows[r.clone()];
            let body = batch_body(part);
            let started = Instant::now();
            let outcome = self.heartbeat.while_waiting(self.client.write(&self.dest, body)).await;
            self.stats.write_duration.observe(started.elapsed().as_secs_f64());
            let wait = match outcome {
                WriteOutcome::Written => {
                    // Deleted by the caller, beside the next request.
                    if let (Some(first), Some(last)) = (part.first(), part.last()) {
                        written.push(Written { first: first.id, last: last.id, seen: Delivered::of(part) });
                    }
                    self.stats.written(part.len() as u64, crate::now_ns());
                    if st.failing {
                        info!(destination = %self.dest, "InfluxDB accepts writes again.");
                    }
                    st.failing = false;
                    st.cause = None;
                    st.breaks = 0;
                    st.backoff.reset();
                    if st.size.written(part.len()) {
                        info!(destination = %self.dest, batch_max_lines = st.size.current(), "InfluxDB takes full batches again; back to the configured size.");
                    }
                    tracing::debug!(destination = %self.dest, points = part.len(), ms = started.elapsed().as_millis() as u64, "Batch written.");
                    continue;
                }
                // The server named every refused line (v3), counting the lines of the body: exactly
                // those go, and the rest was stored. A leased line holding a line break (only a
                // replayed `damaged` dead letter can) shifts that count: split instead.
                WriteOutcome::Partial { status, body, rejected: Some(lines) }
                    if part.iter().all(|l| !l.line.contains('\n')) =>
                {
                    let ids: Vec<i64> = lines.iter().filter_map(|i| part.get(*i)).map(|l| l.id).collect();
                    // Deleting the range before its refused lines are safe in the dead letters
                    // would lose them: if they cannot move, all of it is sent again later.
                    if !self.dead_letter(ids, REASON_REJECTED, Some(status), &body).await {
                        return Flow::Retry(st.backoff.next_delay());
                    }
                    self.delete(part).await;
                    let delivered = part.len().saturating_sub(lines.len());
                    self.stats.written(delivered as u64, crate::now_ns());
                    continue;
                }
                WriteOutcome::Partial { status, body, .. } => {
                    if r.len() > 1 {
                        split(&mut todo, r.clone());
                    } else if !self.dead_letter(vec![part[0].id], REASON_REJECTED, Some(status), &body).await {
                        return Flow::Retry(st.backoff.next_delay());
                    }
                    continue;
                }
                WriteOutcome::TooLarge => {
                    if r.len() > 1 {
                        st.size.shrink(r.len());
                        warn!(destination = %self.dest, points = r.len(), new_batch_max_lines = st.size.current(), "InfluxDB refused the batch as too large (413); splitting, and sending smaller batches until full ones are written again.");
                        split(&mut todo, r.clone());
                    } else if !self
                        .dead_letter(
                            vec![part[0].id],
                            REASON_TOO_LARGE,
                            Some(413),
                            "one line is larger than InfluxDB accepts",
                        )
                        .await
                    {
                        return Flow::Retry(st.backoff.next_delay());
                    }
                    continue;
                }
                WriteOutcome::Retry { after, why, cause, mid_request } => {
                    self.stats.failed(short(&why));
                    if mid_request && r.len() > 1 {
                        st.breaks += 1;
                        if st.breaks >= BREAKS_BEFORE_SPLIT {
                            st.breaks = 0;
                            st.size.shrink(r.len());
                            warn!(destination = %self.dest, points = r.len(), error = %why, "The connection broke mid-request repeatedly; sending smaller batches.");
                            split(&mut todo, r.clone());
                            continue;
                        }
                    }
                    let log = st.failed(&cause);
                    let step = st.backoff.next_delay();
                    if log {
                        warn!(destination = %self.dest, error = %why, waiting = r.len(), attempt = st.backoff.attempts, "InfluxDB write failed; keeping the points and retrying.");
                    }
                    after.map_or(step, |a| a.max(step))
                }
                WriteOutcome::Auth { status, body } => {
                    self.stats.failed(format!("HTTP {status}: credentials refused"));
                    if st.failed(&format!("HTTP {status}")) {
                        error!(destination = %self.dest, status, response = %body, "InfluxDB refused the credentials; keeping every point. Fix the token or password file.");
                    }
                    st.backoff.next_delay()
                }
                WriteOutcome::Rejected { status, body } => {
                    self.stats.failed(short(&format!("HTTP {status}: {body}")));
                    if st.failed(&format!("HTTP {status}")) {
                        error!(destination = %self.dest, status, response = %body, "InfluxDB refused this destination (does the database or bucket exist?); keeping its points and retrying. Other destinations carry on.");
                    }
                    st.backoff.next_delay()
                }
                WriteOutcome::Foreign { status, why, cause } => {
                    self.stats.failed(short(&why));
                    if st.failed(&cause) {
                        error!(destination = %self.dest, status, error = %why, waiting = r.len(), "The answer is not InfluxDB's (a redirect, a proxy, another server?); keeping every point and retrying. Check influx.url and what stands between the gateway and InfluxDB.");
                    }
                    st.backoff.next_delay()
                }
            };
            return Flow::Retry(wait);
        }
        Flow::Done
    }

    /// Deletes what is left of a partly dead-lettered batch.
    async fn delete(&self, part: &[crate::queue::Leased]) {
        let (Some(first), Some(last)) = (part.first(), part.last()) else { return };
        let r = self.queue.delete(self.id, first.id, last.id).await;
        self.deleted(r, part.len() as u64);
    }

    /// Deletes written ranges and forgets them.
    async fn delete_written(&self, written: &mut Vec<Written>) {
        for w in written.drain(..) {
            let n = w.seen.points;
            let r = self.queue.delete_delivered(self.id, w.first, w.last, w.seen).await;
            self.deleted(r, n);
        }
    }

    fn deleted(&self, r: Result<u64, crate::queue::QueueError>, n: u64) {
        if let Err(e) = r {
            // Stored in InfluxDB but still queued: it will be written again, which InfluxDB
            // treats as the same points.
            error!(destination = %self.dest, error = %e, "Could not delete a delivered batch.");
        }
        let _ = self.wake.pending.fetch_update(Relaxed, Relaxed, |p| Some(p.saturating_sub(n)));
    }

    /// Moves refused points to the dead letters; false if that failed (they stay queued, and
    /// nothing around them may be deleted as written).
    async fn dead_letter(&self, ids: Vec<i64>, reason: &'static str, status: Option<u16>, detail: &str) -> bool {
        let n = ids.len() as u64;
        match self.queue.dead_letter(self.id, ids, reason, status, detail.to_owned()).await {
            Ok(moved) => {
                self.stats.dead_lettered(reason, moved);
                error!(destination = %self.dest, points = moved, reason, status, response = %detail, "InfluxDB refused points for good; moved them to the dead letters (see `heartguard-gateway dead-letters list`).");
                let _ = self.wake.pending.fetch_update(Relaxed, Relaxed, |p| Some(p.saturating_sub(n)));
                true
            }
            Err(e) => {
                error!(destination = %self.dest, points = n, error = %e, "Could not move refused points to the dead letters; they stay queued and are sent again.");
                false
            }
        }
    }
}

/// The request body for a leased batch: its lines in lease order, each ended by `\n`.
/// Public so `benches/hot_path.rs` measures the code delivery runs.
pub fn batch_body(part: &[crate::queue::Leased]) -> Vec<u8> {
    let mut body = Vec::with_capacity(part.iter().map(|l| l.line.len() + 1).sum());
    for l in part {
        body.extend_from_slice(l.line.as_bytes());
        body.push(b'\n');
    }
    body
}

/// Puts the two halves of `r` at the front of `todo`, first half first.
fn split(todo: &mut std::collections::VecDeque<std::ops::Range<usize>>, r: std::ops::Range<usize>) {
    let mid = r.start + r.len() / 2;
    todo.push_front(mid..r.end);
    todo.push_front(r.start..mid);
}

impl Worker {
    /// Sleeps, beating; true if cancelled meanwhile.
    async fn sleep_or_cancel(&self, d: Duration, token: &CancellationToken) -> bool {
        tokio::select! {
            _ = token.cancelled() => true,
            _ = self.heartbeat.while_waiting(tokio::time::sleep(d)) => false,
        }
    }
}

/// A failure, cut short for `status` (the log has it in full).
fn short(why: &str) -> String {
    const MAX: usize = 160;
    let one_line = why.replace(['\n', '\r'], " ");
    match one_line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
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
