//! A worker's loop: wait until a full batch is pending or the flush interval passed, then
//! drain batch after batch while full batches are waiting.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::error;

use super::deliver::Flow;
use super::policy::Retry;
use super::worker::{Worker, Written};
use crate::queue::delivery::Leased;
use crate::telemetry::health;

impl Worker {
    pub async fn run(self, shutdown: CancellationToken) {
        self.work(shutdown).await;
        self.counters.health.deregister(&self.stage);
    }

    async fn work(&self, shutdown: CancellationToken) {
        let flush = Duration::from_millis(self.cfg.flush_interval_ms);
        let mut st = Retry::new(&self.cfg);
        // Start with a flush: whatever waits from before the start goes out now.
        let mut deadline = Instant::now();
        loop {
            if !self.wait_for_batch(deadline, st.size.current(), &shutdown).await {
                return;
            }
            self.heartbeat.beat();
            if !self.drain(&mut st, &shutdown).await {
                return;
            }
            deadline = Instant::now() + flush;
        }
    }

    /// Waits until `batch` points are pending or `deadline` passed, beating; false if
    /// cancelled meanwhile.
    async fn wait_for_batch(&self, deadline: Instant, batch: usize, shutdown: &CancellationToken) -> bool {
        while self.wake.pending.load(Relaxed) < batch as u64 && Instant::now() < deadline {
            self.heartbeat.beat();
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = self.wake.notify.notified() => {}
                _ = tokio::time::sleep_until(deadline.min(Instant::now() + health::BEAT_EVERY)) => {}
            }
        }
        true
    }

    /// Sends batch after batch while full batches are waiting, until the queue holds none or a
    /// batch that is not full was delivered; false if cancelled meanwhile.
    async fn drain(&self, st: &mut Retry, shutdown: &CancellationToken) -> bool {
        let mut next: Option<Vec<Leased>> = None;
        let mut written: Vec<Written> = Vec::new();
        loop {
            if shutdown.is_cancelled() {
                self.delete_written(&mut written).await;
                return false;
            }
            let rows = match next.take() {
                Some(rows) => rows,
                None => match self.queue.lease(self.id, st.size.current(), self.cfg.batch_max_bytes).await {
                    Ok(r) => r,
                    Err(e) => {
                        error!(destination = %self.dest, error = %e, "Could not read the queue; retrying.");
                        self.delete_written(&mut written).await;
                        if self.sleep_or_cancel(st.backoff.next_delay(), shutdown).await {
                            return false;
                        }
                        continue;
                    }
                },
            };
            if rows.is_empty() {
                self.delete_written(&mut written).await;
                self.wake.pending.store(0, Relaxed);
                return true;
            }
            let full = rows.len() >= st.size.current();
            let (flow, following) = self.deliver_reading_ahead(&rows, full, st, &mut written, shutdown).await;
            match flow {
                Flow::Cancelled => {
                    self.delete_written(&mut written).await;
                    return false;
                }
                // Lease again after the wait: rows may have been dropped (queue full) or
                // replayed meanwhile, and new ones may fill the batch.
                Flow::Retry(wait) => {
                    self.delete_written(&mut written).await;
                    if self.sleep_or_cancel(wait, shutdown).await {
                        return false;
                    }
                }
                Flow::Done if !full => {
                    self.delete_written(&mut written).await;
                    return true;
                }
                // Points read ahead may since have been dropped to make room (queue full):
                // they are delivered rather than lost, and their delete finds fewer points
                // than it was handed, so the store reads the range again.
                Flow::Done => next = following,
            }
        }
    }

    /// Delivers `rows` while the next batch is read (only a full batch suggests more is
    /// waiting) and the ranges written before are deleted: the store thread works while
    /// InfluxDB does, and only the request itself is serial.
    async fn deliver_reading_ahead(
        &self,
        rows: &[Leased],
        full: bool,
        st: &mut Retry,
        written: &mut Vec<Written>,
        shutdown: &CancellationToken,
    ) -> (Flow, Option<Vec<Leased>>) {
        let max_lines = st.size.current();
        let mut done_before = std::mem::take(written);
        let read_next = async {
            let last = rows.last().map(|l| l.id)?;
            if !full {
                return None;
            }
            self.queue.lease_after(self.id, last, max_lines, self.cfg.batch_max_bytes).await.ok()
        };
        let (flow, following, ()) =
            tokio::join!(self.deliver(rows, st, written, shutdown), read_next, self.delete_written(&mut done_before));
        (flow, following)
    }
}
