//! The messages from [`super::handle::QueueHandle`] to the store thread: one [`Command`]
//! per call, each carrying the oneshot its answer goes back on.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::QueueError;
use super::activity::{Activity, Gap};
use super::cache::CachedBindings;
use super::dead_letters::DeadLetterReason;
use super::delivery::{Delivered, Leased};
use super::inspect::{QueueGauges, QueueStats};
use super::intake::{AppendReport, Batch};
use super::parked::{ParkReason, Parked};
use super::points::NewPoint;
use crate::model::{Binding, Destination};

pub(super) type Reply<T> = oneshot::Sender<Result<T, QueueError>>;

pub(super) enum Command {
    Append(Arc<Batch>, Reply<AppendReport>),
    ScanParked {
        reason: ParkReason,
        max_ts: i64,
        after_id: i64,
        limit: usize,
        reply: Reply<Vec<Parked>>,
    },
    Promote {
        points: Vec<NewPoint>,
        remove: Vec<i64>,
        repark: Vec<(i64, ParkReason)>,
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
        seen: Option<Delivered>,
        reply: Reply<u64>,
    },
    DeadLetter {
        dest_id: i64,
        ids: Vec<i64>,
        reason: DeadLetterReason,
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
    LoadBindings(Reply<Option<CachedBindings>>),
    Stats(Reply<QueueStats>),
    Gauges(Reply<QueueGauges>),
    Ping(Reply<()>),
    Close(Reply<()>),
}
