//! Delivering one leased batch: every line ends up written or dead-lettered with its reason,
//! or a failure asks for a wait (what is not done stays queued).
//!
//! A rejected range is split in halves until the lines InfluxDB refuses are found one by one;
//! rewriting the good ones is harmless (same series, same time: InfluxDB keeps one point).

use std::collections::VecDeque;
use std::ops::{ControlFlow, Range};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::influx::outcome::WriteOutcome;
use super::policy::Retry;
use super::worker::{Worker, Written};
use crate::queue::dead_letters::DeadLetterReason;
use crate::queue::delivery::{Delivered, Leased};

/// What became of a leased batch.
pub enum Flow {
    /// Every line written or dead-lettered.
    Done,
    /// A transient failure: wait this long, then lease again.
    Retry(Duration),
    Cancelled,
}

/// Ranges of a batch still to write, in order.
type Todo = VecDeque<Range<usize>>;

impl Worker {
    /// Delivers `rows`; the ranges written are added to `written`, for the caller to delete.
    pub async fn deliver(
        &self,
        rows: &[Leased],
        st: &mut Retry,
        written: &mut Vec<Written>,
        shutdown: &CancellationToken,
    ) -> Flow {
        let mut todo = Todo::from([Range { start: 0, end: rows.len() }]);
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
                    self.written(part, st, written, started);
                    continue;
                }
                // The server named every refused line (v3), counting the lines of the body: exactly
                // those go, and the rest was stored. A leased line holding a line break (only a
                // replayed `damaged` dead letter can) shifts that count: split instead.
                WriteOutcome::Partial { status, body, rejected: Some(lines) }
                    if part.iter().all(|l| !l.line.contains('\n')) =>
                {
                    self.named_refused(part, &lines, status, &body, st).await
                }
                WriteOutcome::Partial { status, body, .. } => {
                    self.unnamed_refused(part, r, &mut todo, status, &body, st).await
                }
                WriteOutcome::TooLarge => self.too_large(part, r, &mut todo, st).await,
                WriteOutcome::Retry { after, why, cause, mid_request } => {
                    self.stats.failed(short(&why));
                    if mid_request && r.len() > 1 && st.broke_mid_request() {
                        st.size.shrink(r.len());
                        warn!(destination = %self.dest, points = r.len(), error = %why, "The connection broke mid-request repeatedly; sending smaller batches.");
                        split(&mut todo, r);
                        continue;
                    }
                    let log = st.failed(&cause);
                    let step = st.backoff.next_delay();
                    if log {
                        warn!(destination = %self.dest, error = %why, waiting = r.len(), attempt = st.backoff.attempts, "InfluxDB write failed; keeping the points and retrying.");
                    }
                    ControlFlow::Break(after.map_or(step, |a| a.max(step)))
                }
                WriteOutcome::Auth { status, body } => {
                    self.stats.failed(format!("HTTP {status}: credentials refused"));
                    if st.failed(&format!("HTTP {status}")) {
                        error!(destination = %self.dest, status, response = %body, "InfluxDB refused the credentials; keeping every point. Fix the token or password file.");
                    }
                    ControlFlow::Break(st.backoff.next_delay())
                }
                WriteOutcome::Rejected { status, body } => {
                    self.stats.failed(short(&format!("HTTP {status}: {body}")));
                    if st.failed(&format!("HTTP {status}")) {
                        error!(destination = %self.dest, status, response = %body, "InfluxDB refused this destination (does the database or bucket exist?); keeping its points and retrying. Other destinations carry on.");
                    }
                    ControlFlow::Break(st.backoff.next_delay())
                }
                WriteOutcome::Foreign { status, why, cause } => {
                    self.stats.failed(short(&why));
                    if st.failed(&cause) {
                        error!(destination = %self.dest, status, error = %why, waiting = r.len(), "The answer is not InfluxDB's (a redirect, a proxy, another server?); keeping every point and retrying. Check influx.url and what stands between the gateway and InfluxDB.");
                    }
                    ControlFlow::Break(st.backoff.next_delay())
                }
            };
            if let ControlFlow::Break(wait) = wait {
                return Flow::Retry(wait);
            }
        }
        Flow::Done
    }

    /// `part` was written: it is deleted by the caller, beside the next request.
    fn written(&self, part: &[Leased], st: &mut Retry, written: &mut Vec<Written>, started: Instant) {
        if let (Some(first), Some(last)) = (part.first(), part.last()) {
            written.push(Written { first: first.id, last: last.id, seen: Delivered::of(part) });
        }
        self.stats.written(part.len() as u64, crate::now_ns());
        if st.recovered() {
            info!(destination = %self.dest, "InfluxDB accepts writes again.");
        }
        if st.size.written(part.len()) {
            info!(destination = %self.dest, batch_max_lines = st.size.current(), "InfluxDB takes full batches again; back to the configured size.");
        }
        tracing::debug!(destination = %self.dest, points = part.len(), ms = started.elapsed().as_millis() as u64, "Batch written.");
    }

    /// InfluxDB refused the `lines` of `part` it named and stored the others.
    async fn named_refused(
        &self,
        part: &[Leased],
        lines: &[usize],
        status: u16,
        body: &str,
        st: &mut Retry,
    ) -> ControlFlow<Duration> {
        let ids: Vec<i64> = lines.iter().filter_map(|i| part.get(*i)).map(|l| l.id).collect();
        // Deleting the range before its refused lines are safe in the dead letters would lose
        // them: if they cannot move, all of it is sent again later.
        if !self.dead_letter(ids, DeadLetterReason::Rejected, Some(status), body).await {
            return ControlFlow::Break(st.backoff.next_delay());
        }
        self.delete(part).await;
        let delivered = part.len().saturating_sub(lines.len());
        self.stats.written(delivered as u64, crate::now_ns());
        ControlFlow::Continue(())
    }

    /// InfluxDB refused some lines of `part` (range `r`) without naming them: split until each
    /// refused line is alone, then dead-letter it.
    async fn unnamed_refused(
        &self,
        part: &[Leased],
        r: Range<usize>,
        todo: &mut Todo,
        status: u16,
        body: &str,
        st: &mut Retry,
    ) -> ControlFlow<Duration> {
        if r.len() > 1 {
            split(todo, r);
        } else if !self.dead_letter(vec![part[0].id], DeadLetterReason::Rejected, Some(status), body).await {
            return ControlFlow::Break(st.backoff.next_delay());
        }
        ControlFlow::Continue(())
    }

    /// InfluxDB refused `part` (range `r`) as too large (413): split it, and send smaller
    /// batches from now on; a single line too large goes to the dead letters.
    async fn too_large(
        &self,
        part: &[Leased],
        r: Range<usize>,
        todo: &mut Todo,
        st: &mut Retry,
    ) -> ControlFlow<Duration> {
        if r.len() > 1 {
            st.size.shrink(r.len());
            warn!(destination = %self.dest, points = r.len(), new_batch_max_lines = st.size.current(), "InfluxDB refused the batch as too large (413); splitting, and sending smaller batches until full ones are written again.");
            split(todo, r);
        } else if !self
            .dead_letter(
                vec![part[0].id],
                DeadLetterReason::TooLarge,
                Some(413),
                "one line is larger than InfluxDB accepts",
            )
            .await
        {
            return ControlFlow::Break(st.backoff.next_delay());
        }
        ControlFlow::Continue(())
    }
}

/// The request body for a leased batch: its lines in lease order, each ended by `\n`.
/// Public so `benches/hot_path.rs` measures the code delivery runs.
pub fn batch_body(part: &[Leased]) -> Vec<u8> {
    let mut body = Vec::with_capacity(part.iter().map(|l| l.line.len() + 1).sum());
    for l in part {
        body.extend_from_slice(l.line.as_bytes());
        body.push(b'\n');
    }
    body
}

/// Puts the two halves of `r` at the front of `todo`, first half first.
fn split(todo: &mut Todo, r: Range<usize>) {
    let mid = r.start + r.len() / 2;
    todo.push_front(mid..r.end);
    todo.push_front(r.start..mid);
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
