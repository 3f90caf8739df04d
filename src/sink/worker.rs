//! One destination's worker: what its task holds, and its chores on the queue (deleting what
//! was written, moving what InfluxDB refused for good to the dead letters). Its loop is in
//! [`super::flush`], the delivery of one batch in [`super::deliver`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::error;

use super::influx::InfluxClient;
use crate::model::Destination;
use crate::queue::QueueError;
use crate::queue::dead_letters::DeadLetterReason;
use crate::queue::delivery::{Delivered, Leased};
use crate::queue::handle::QueueHandle;
use crate::sink::config::Influx;
use crate::telemetry::health::Heartbeat;
use crate::telemetry::{Counters, DestinationCounters};

/// What a worker is told by the manager.
pub struct Wake {
    /// Points committed since the last delivery (a hint for batching, not for correctness).
    pub pending: AtomicU64,
    pub notify: Notify,
}

pub struct Worker {
    pub id: i64,
    pub dest: Destination,
    /// This destination's counters (metrics, status).
    pub stats: Arc<DestinationCounters>,
    /// Beats while the worker's loop comes round; named `stage`.
    pub heartbeat: Arc<Heartbeat>,
    pub stage: String,
    pub queue: QueueHandle,
    pub client: Arc<InfluxClient>,
    pub cfg: Influx,
    pub counters: Arc<Counters>,
    pub wake: Arc<Wake>,
}

/// A range written to InfluxDB, to be deleted, with what it held as leased.
pub struct Written {
    pub first: i64,
    pub last: i64,
    pub seen: Delivered,
}

impl Worker {
    /// Deletes what is left of a partly dead-lettered batch.
    pub async fn delete(&self, part: &[Leased]) {
        let (Some(first), Some(last)) = (part.first(), part.last()) else { return };
        let r = self.queue.delete(self.id, first.id, last.id).await;
        self.deleted(r, part.len() as u64);
    }

    /// Deletes written ranges and forgets them.
    pub async fn delete_written(&self, written: &mut Vec<Written>) {
        for w in written.drain(..) {
            let n = w.seen.points;
            let r = self.queue.delete_delivered(self.id, w.first, w.last, w.seen).await;
            self.deleted(r, n);
        }
    }

    fn deleted(&self, r: Result<u64, QueueError>, n: u64) {
        if let Err(e) = r {
            // Stored in InfluxDB but still queued: it will be written again, which InfluxDB
            // treats as the same points.
            error!(destination = %self.dest, error = %e, "Could not delete a delivered batch.");
        }
        let _ = self.wake.pending.fetch_update(Relaxed, Relaxed, |p| Some(p.saturating_sub(n)));
    }

    /// Moves refused points to the dead letters; false if that failed (they stay queued, and
    /// nothing around them may be deleted as written).
    pub async fn dead_letter(
        &self,
        ids: Vec<i64>,
        reason: DeadLetterReason,
        status: Option<u16>,
        detail: &str,
    ) -> bool {
        let n = ids.len() as u64;
        match self.queue.dead_letter(self.id, ids, reason, status, detail.to_owned()).await {
            Ok(moved) => {
                self.stats.dead_lettered(reason.as_str(), moved);
                error!(destination = %self.dest, points = moved, reason = reason.as_str(), status, response = %detail, "InfluxDB refused points for good; moved them to the dead letters (see `heartguard-gateway dead-letters list`).");
                let _ = self.wake.pending.fetch_update(Relaxed, Relaxed, |p| Some(p.saturating_sub(n)));
                true
            }
            Err(e) => {
                error!(destination = %self.dest, points = n, error = %e, "Could not move refused points to the dead letters; they stay queued and are sent again.");
                false
            }
        }
    }

    /// Sleeps, beating; true if cancelled meanwhile.
    pub async fn sleep_or_cancel(&self, d: Duration, token: &CancellationToken) -> bool {
        tokio::select! {
            _ = token.cancelled() => true,
            _ = self.heartbeat.while_waiting(tokio::time::sleep(d)) => false,
        }
    }
}
