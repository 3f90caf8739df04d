//! [`QueueHandle`]: the queue as the rest of the gateway holds it. Each call sends a
//! `Command` to the store thread (`super::store`) and awaits its answer, so a call returns
//! once its statements ran (an append: once it is committed).

use std::path::Path;
use std::sync::{Arc, mpsc};

use tokio::sync::oneshot;

use super::activity::{Activity, Gap};
use super::cache::CachedBindings;
use super::command::{Command, Reply};
use super::dead_letters::DeadLetterReason;
use super::delivery::{Delivered, Leased};
use super::inspect::{QueueGauges, QueueStats};
use super::intake::{AppendReport, Batch};
use super::parked::{ParkReason, Parked};
use super::points::NewPoint;
use super::{Limits, QueueError, Synchronous, store};
use crate::model::{Binding, Destination};

/// Cheap to clone; every clone talks to the one store thread.
#[derive(Clone)]
pub struct QueueHandle {
    tx: mpsc::Sender<Command>,
}

impl QueueHandle {
    /// Opens (creating if needed) the database in `data_dir` and starts the store thread.
    pub fn open(
        data_dir: &Path,
        sync: Synchronous,
        limits: Limits,
    ) -> Result<(Self, std::thread::JoinHandle<()>), QueueError> {
        let (tx, join) = store::spawn(data_dir, sync, limits)?;
        Ok((Self { tx }, join))
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, QueueError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// Commits `points`; returns once they are durable, with what had to be dropped to fit.
    pub async fn append(&self, points: Vec<NewPoint>) -> Result<AppendReport, QueueError> {
        self.append_shared(Arc::new(Batch { points, parked: Vec::new() })).await
    }

    /// As [`Self::append`], keeping the points with the caller so a failed commit can be
    /// retried without copying them.
    pub async fn append_shared(&self, batch: Arc<Batch>) -> Result<AppendReport, QueueError> {
        self.call(|r| Command::Append(batch, r)).await
    }

    /// Parked readings with `reason`, taken at or before `max_ts`, after id `after_id`.
    pub async fn scan_parked(
        &self,
        reason: ParkReason,
        max_ts: i64,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<Parked>, QueueError> {
        self.call(|reply| Command::ScanParked { reason, max_ts, after_id, limit, reply }).await
    }

    /// Queues `points`, removes the parked readings they came from and re-marks others, in
    /// one transaction.
    pub async fn promote(
        &self,
        points: Vec<NewPoint>,
        remove: Vec<i64>,
        repark: Vec<(i64, ParkReason)>,
    ) -> Result<(), QueueError> {
        self.call(|reply| Command::Promote { points, remove, repark, reply }).await
    }

    /// The small integer key of a stream id, registered on first use.
    pub async fn stream_key(&self, stream_id: String) -> Result<i64, QueueError> {
        self.call(|r| Command::StreamKey(stream_id, r)).await
    }

    /// Every stream's activity (totals, last times, open gap).
    pub async fn activity(&self) -> Result<Vec<Activity>, QueueError> {
        self.call(Command::Activity).await
    }

    /// Opens a gap starting at `started_ns` unless the stream already has one open.
    pub async fn open_gap(&self, stream_key: i64, started_ns: i64, threshold_ns: i64) -> Result<bool, QueueError> {
        self.call(|reply| Command::OpenGap { stream_key, started_ns, threshold_ns, reply }).await
    }

    pub async fn unreported_gaps(&self) -> Result<Vec<Gap>, QueueError> {
        self.call(Command::UnreportedGaps).await
    }

    /// Records a successful report: (stream_key, readings, delivered) totals sent, and
    /// (gap id, sent closed).
    pub async fn mark_reported(
        &self,
        activity: Vec<(i64, u64, u64)>,
        gaps: Vec<(i64, bool)>,
        reported_ns: i64,
    ) -> Result<(), QueueError> {
        self.call(|reply| Command::MarkReported { activity, gaps, reported_ns, reply }).await
    }

    /// Moves readings parked before `cutoff_ns` to the dead letters; returns how many.
    pub async fn expire_parked(&self, cutoff_ns: i64) -> Result<u64, QueueError> {
        self.call(|reply| Command::ExpireParked { cutoff_ns, reply }).await
    }

    /// The oldest points of a destination, at most `max_lines` and about `max_bytes`.
    pub async fn lease(&self, dest_id: i64, max_lines: usize, max_bytes: usize) -> Result<Vec<Leased>, QueueError> {
        self.lease_after(dest_id, 0, max_lines, max_bytes).await
    }

    /// Like [`Self::lease`], but only points queued after point `after_id`: the next batch,
    /// read while the one before it is still on its way.
    pub async fn lease_after(
        &self,
        dest_id: i64,
        after_id: i64,
        max_lines: usize,
        max_bytes: usize,
    ) -> Result<Vec<Leased>, QueueError> {
        self.call(|reply| Command::Lease { dest_id, after_id, max_lines, max_bytes, reply }).await
    }

    /// Removes a delivered batch (ids `first..=last` of that destination).
    pub async fn delete(&self, dest_id: i64, first: i64, last: i64) -> Result<u64, QueueError> {
        self.call(|reply| Command::Delete { dest_id, first, last, seen: None, reply }).await
    }

    /// Like [`Self::delete`] for a range the caller read whole (`seen`, from its lease): the
    /// store need not read it again for the activity and byte figures.
    pub async fn delete_delivered(
        &self,
        dest_id: i64,
        first: i64,
        last: i64,
        seen: Delivered,
    ) -> Result<u64, QueueError> {
        self.call(|reply| Command::Delete { dest_id, first, last, seen: Some(seen), reply }).await
    }

    /// Moves points InfluxDB refused for good to the dead letters, with the reason.
    pub async fn dead_letter(
        &self,
        dest_id: i64,
        ids: Vec<i64>,
        reason: DeadLetterReason,
        status: Option<u16>,
        detail: String,
    ) -> Result<u64, QueueError> {
        self.call(|reply| Command::DeadLetter { dest_id, ids, reason, status, detail, reply }).await
    }

    /// The stable id of a destination, registering it on first use.
    pub async fn destination_id(&self, d: Destination) -> Result<i64, QueueError> {
        self.call(|r| Command::DestinationId(d, r)).await
    }

    /// Every known destination with its number of waiting points.
    pub async fn destinations(&self) -> Result<Vec<(i64, Destination, u64)>, QueueError> {
        self.call(Command::Destinations).await
    }

    /// Replaces the cached bindings in one transaction.
    pub async fn replace_bindings(
        &self,
        bindings: Vec<Binding>,
        source: String,
        version: String,
    ) -> Result<(), QueueError> {
        self.call(|reply| Command::ReplaceBindings { bindings, source, version, reply }).await
    }

    /// The cached bindings, if a copy was ever stored.
    pub async fn load_bindings(&self) -> Result<Option<CachedBindings>, QueueError> {
        self.call(Command::LoadBindings).await
    }

    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        self.call(Command::Stats).await
    }

    /// What is waiting, cheaply (metrics and status; see [`super::inspect::gauges`]).
    pub async fn gauges(&self) -> Result<QueueGauges, QueueError> {
        self.call(Command::Gauges).await
    }

    /// Answers once the store thread has handled every earlier command: it is alive.
    pub async fn ping(&self) -> Result<(), QueueError> {
        self.call(Command::Ping).await
    }

    /// Checkpoints the WAL and closes the database; the store thread then exits.
    pub async fn close(&self) -> Result<(), QueueError> {
        self.call(Command::Close).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::test_support::{dest, point};

    #[tokio::test]
    async fn points_survive_reopen_and_leave_only_when_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (q, join) = QueueHandle::open(dir.path(), Synchronous::Full, Limits::default()).expect("open");
        let a = q.destination_id(dest("a")).await.expect("dest");
        let b = q.destination_id(dest("b")).await.expect("dest");
        assert_eq!(q.destination_id(dest("a")).await.expect("same"), a);
        q.append((0..10).map(|n| point(a, n)).chain((0..3).map(|n| point(b, n))).collect()).await.expect("append");
        let batch = q.lease(a, 4, usize::MAX).await.expect("lease");
        assert_eq!(batch.iter().map(|l| l.line.as_str()).collect::<Vec<_>>()[0], "m v=0i 0");
        assert_eq!(batch.len(), 4);
        // Not deleted yet: leasing again yields the same batch (a failed send retries it).
        assert_eq!(q.lease(a, 4, usize::MAX).await.expect("again"), batch);
        // The next batch, read while this one is on its way: later points of `a` only.
        let next = q.lease_after(a, batch[3].id, 4, usize::MAX).await.expect("next");
        assert_eq!(
            next.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
            ["m v=4i 4", "m v=5i 5", "m v=6i 6", "m v=7i 7"]
        );
        assert!(q.lease_after(a, next[3].id + 3, 4, usize::MAX).await.expect("past the end").is_empty());
        assert_eq!(q.delete(a, batch[0].id, batch[3].id).await.expect("delete"), 4);
        q.close().await.expect("close");
        join.join().expect("thread");

        let (q, _join) = QueueHandle::open(dir.path(), Synchronous::Full, Limits::default()).expect("reopen");
        let rest = q.lease(a, 100, usize::MAX).await.expect("lease");
        assert_eq!(rest.len(), 6);
        assert_eq!(rest[0].line, "m v=4i 4");
        let d = q.destinations().await.expect("dests");
        assert_eq!(d.iter().map(|(_, _, n)| *n).collect::<Vec<_>>(), [6, 3]);
        assert_eq!(q.stats().await.expect("stats").points, 9);
    }
}
