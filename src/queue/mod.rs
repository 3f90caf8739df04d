//! The durable queue: the only place a point waits, and the only module that knows SQL.
//!
//! Invariants (everything else in the gateway relies on them):
//! - A point is *accepted* when the transaction holding it has committed (WAL,
//!   `synchronous=FULL` by default, so a commit survives power loss). Only after that are the
//!   readings acknowledged to their source.
//! - A point leaves the queue only after InfluxDB answered 2xx for it, or into the dead
//!   letters, or by the `drop_oldest` policy when the queue is full (counted and logged).
//! - `Limits::max_bytes` bounds everything kept: waiting points, parked readings and dead
//!   letters. Readings parked `unbound` and dead letters have caps of their own, so they never
//!   take more than their share; over a cap the oldest of that kind are deleted, in the
//!   transaction that went over it (counted and logged). Readings parked `fresh` are never
//!   deleted: they are every reading for a moment when bindings come from PostgreSQL.
//! - The database is moved aside at start only when it is definitely damaged; any other
//!   failure to open or check it refuses the start and leaves it as it is.
//! - Points are stored as encoded lines, in segments (the points of one commit for one
//!   destination, [`segment`]); each keeps its own id, and ids never repeat. Replaying a
//!   line is byte-identical, so a second write after a crash overwrites the first with the
//!   same values (InfluxDB's duplicate-point rule).
//! - Each destination is read in id order, one batch at a time: points of a destination are
//!   delivered in the order they were accepted.
//! - One thread owns the connection (a small actor, [`store`]); appends that arrive while a
//!   commit runs are committed together (group commit), never one transaction per reading.

pub mod config;
pub mod segment;
pub mod store;

use std::path::Path;
use std::sync::{Arc, mpsc};

use tokio::sync::oneshot;

use crate::model::{Binding, Destination};

pub use store::{
    Activity, AppendReport, Batch, Checked, DeadLetter, DeadLetterFilter, Delivered, FullPolicy, Gap, Leased, Limits,
    NewParked, NewPoint, PARKED_FRESH, PARKED_UNBOUND, Parked, QueueGauges, QueueStats, StartupCheck, Synchronous,
};

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("queue database: {0}")]
    Io(#[from] std::io::Error),
    #[error("the queue is closed")]
    Closed,
    /// The configured size limit (policy `backpressure`) or the free-disk floor is reached.
    #[error("queue full: {0}")]
    Full(String),
    #[error("queue database: {0}")]
    Invalid(String),
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, QueueError>>;

pub(crate) enum Command {
    Append(Arc<Batch>, Reply<AppendReport>),
    ScanParked {
        reason: &'static str,
        max_ts: i64,
        after_id: i64,
        limit: usize,
        reply: Reply<Vec<Parked>>,
    },
    Promote {
        points: Vec<NewPoint>,
        remove: Vec<i64>,
        repark: Vec<(i64, &'static str)>,
        reply: Reply<()>,
    },
    ExpireParked {
        cutoff_ns: i64,
        reply: Reply<u64>,
    },
    StreamKey(String, Reply<i64>),
    Activity(Reply<Vec<Activity>>),
    OpenGap {
        stream_key: i64,
        started_ns: i64,
        threshold_ns: i64,
        reply: Reply<bool>,
    },
    UnreportedGaps(Reply<Vec<Gap>>),
    MarkReported {
        activity: Vec<(i64, u64, u64)>,
        gaps: Vec<(i64, bool)>,
        reported_ns: i64,
        reply: Reply<()>,
    },
    Lease {
        dest_id: i64,
        after_id: i64,
        max_lines: usize,
        max_bytes: usize,
        reply: Reply<Vec<Leased>>,
    },
    Delete {
        dest_id: i64,
        first: i64,
        last: i64,
        seen: Option<store::Delivered>,
        reply: Reply<u64>,
    },
    DeadLetter {
        dest_id: i64,
        ids: Vec<i64>,
        reason: &'static str,
        status: Option<u16>,
        detail: String,
        reply: Reply<u64>,
    },
    DestinationId(Destination, Reply<i64>),
    Destinations(Reply<Vec<(i64, Destination, u64)>>),
    ReplaceBindings {
        bindings: Vec<Binding>,
        source: String,
        version: String,
        reply: Reply<()>,
    },
    LoadBindings(Reply<Option<(Vec<Binding>, String, String)>>),
    Stats(Reply<QueueStats>),
    Gauges(Reply<QueueGauges>),
    Ping(Reply<()>),
    Close(Reply<()>),
}

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
        reason: &'static str,
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
        repark: Vec<(i64, &'static str)>,
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
        seen: store::Delivered,
    ) -> Result<u64, QueueError> {
        self.call(|reply| Command::Delete { dest_id, first, last, seen: Some(seen), reply }).await
    }

    /// Moves points InfluxDB refused for good to the dead letters, with the reason.
    pub async fn dead_letter(
        &self,
        dest_id: i64,
        ids: Vec<i64>,
        reason: &'static str,
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
    pub async fn load_bindings(&self) -> Result<Option<(Vec<Binding>, String, String)>, QueueError> {
        self.call(Command::LoadBindings).await
    }

    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        self.call(Command::Stats).await
    }

    /// What is waiting, cheaply (metrics and status; see [`store::gauges`]).
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
