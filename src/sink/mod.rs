//! Delivery: one worker per destination takes the oldest waiting points, posts them as one
//! batch and deletes them only after a 2xx.
//!
//! - A destination that is down or refuses its data only ever delays itself: each has its own
//!   worker, retry state and back-off.
//! - A batch is sent when `batch_max_lines` points wait or `flush_interval_ms` passed since the
//!   last flush; a backlog drains batch after batch without waiting.
//! - Retries never give up on data: network errors and 5xx back off (capped, with jitter,
//!   at least `Retry-After`); 4xx keep the data and back off too, loudly.

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
use crate::bindings::Destination;
use crate::config::Influx;
use crate::ingest::Touched;
use crate::queue::QueueHandle;
use crate::telemetry::Counters;
use influx::{InfluxClient, WriteOutcome};

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

    let spawn =
        |id: i64, dest: Destination, pending: u64, workers: &mut HashMap<i64, Arc<Wake>>| {
            let wake = Arc::new(Wake {
                pending: AtomicU64::new(pending),
                notify: Notify::new(),
            });
            workers.insert(id, wake.clone());
            let w = Worker {
                id,
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
        let batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            t = touched.recv() => match t {
                Some(t) => t,
                // Intake is gone: nothing new will arrive; keep delivering until told to stop.
                None => { shutdown.cancelled().await; break; }
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
                    error!(
                        dest_id = id,
                        "Points for an unknown destination id; they wait in the queue."
                    );
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
    tracker.wait().await;
}

struct Worker {
    id: i64,
    dest: Destination,
    queue: QueueHandle,
    client: Arc<InfluxClient>,
    cfg: Influx,
    counters: Arc<Counters>,
    wake: Arc<Wake>,
}

impl Worker {
    async fn run(self, shutdown: CancellationToken) {
        let flush = Duration::from_millis(self.cfg.flush_interval_ms);
        let mut backoff = Backoff::new(
            Duration::from_millis(self.cfg.retry_initial_ms),
            Duration::from_millis(self.cfg.retry_max_ms),
        );
        // Start with a flush: whatever waits from before the start goes out now.
        let mut deadline = Instant::now();
        let mut max_lines = self.cfg.batch_max_lines;
        let mut failing = false;
        loop {
            while self.wake.pending.load(Relaxed) < max_lines as u64 && Instant::now() < deadline {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.wake.notify.notified() => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
            // Drain: batch after batch while full batches are waiting.
            loop {
                if shutdown.is_cancelled() {
                    return;
                }
                let rows = match self
                    .queue
                    .lease(self.id, max_lines, self.cfg.batch_max_bytes)
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        error!(destination = %self.dest, error = %e, "Could not read the queue; retrying.");
                        if sleep_or_cancel(backoff.next_delay(), &shutdown).await {
                            return;
                        }
                        continue;
                    }
                };
                let (Some(first), Some(last)) =
                    (rows.first().map(|r| r.id), rows.last().map(|r| r.id))
                else {
                    self.wake.pending.store(0, Relaxed);
                    break;
                };
                let n = rows.len();
                let mut body = Vec::with_capacity(rows.iter().map(|r| r.line.len() + 1).sum());
                for r in &rows {
                    body.extend_from_slice(r.line.as_bytes());
                    body.push(b'\n');
                }
                drop(rows);
                let started = Instant::now();
                let outcome = self.client.write(&self.dest, body).await;
                let wait = match outcome {
                    WriteOutcome::Written => {
                        if let Err(e) = self.queue.delete(self.id, first, last).await {
                            // Stored in InfluxDB but still queued: it will be written again,
                            // which InfluxDB treats as the same points.
                            error!(destination = %self.dest, error = %e, "Could not delete a delivered batch.");
                        }
                        self.counters.points_delivered.fetch_add(n as u64, Relaxed);
                        let _ = self
                            .wake
                            .pending
                            .fetch_update(Relaxed, Relaxed, |p| Some(p.saturating_sub(n as u64)));
                        if failing {
                            info!(destination = %self.dest, "InfluxDB accepts writes again.");
                            failing = false;
                        }
                        backoff.reset();
                        tracing::debug!(destination = %self.dest, points = n, ms = started.elapsed().as_millis() as u64, "Batch written.");
                        if n < max_lines {
                            break;
                        }
                        continue;
                    }
                    WriteOutcome::TooLarge => {
                        max_lines = (n / 2).max(1);
                        warn!(destination = %self.dest, points = n, new_batch_max_lines = max_lines, "InfluxDB refused the batch as too large (413); splitting.");
                        if n > 1 {
                            continue;
                        }
                        backoff.next_delay()
                    }
                    WriteOutcome::Retry { after, why } => {
                        self.counters.write_failures.fetch_add(1, Relaxed);
                        let step = backoff.next_delay();
                        if !failing || backoff.attempts.is_multiple_of(10) {
                            warn!(destination = %self.dest, error = %why, waiting = n, attempt = backoff.attempts, "InfluxDB write failed; keeping the points and retrying.");
                        }
                        failing = true;
                        after.map_or(step, |a| a.max(step))
                    }
                    WriteOutcome::Auth { status, body } => {
                        self.counters.write_failures.fetch_add(1, Relaxed);
                        failing = true;
                        error!(destination = %self.dest, status, response = %body, "InfluxDB refused the credentials; keeping every point. Fix the token or password file.");
                        backoff.next_delay()
                    }
                    WriteOutcome::Rejected { status, body } => {
                        self.counters.write_failures.fetch_add(1, Relaxed);
                        failing = true;
                        error!(destination = %self.dest, status, response = %body, "InfluxDB rejected the batch; keeping the points and retrying. Check the database/bucket exists.");
                        backoff.next_delay()
                    }
                };
                if sleep_or_cancel(wait, &shutdown).await {
                    return;
                }
            }
            deadline = Instant::now() + flush;
        }
    }
}

/// Sleeps; true if cancelled meanwhile.
async fn sleep_or_cancel(d: Duration, token: &CancellationToken) -> bool {
    tokio::select! {
        _ = token.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}
