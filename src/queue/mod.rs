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
//! - One thread owns the connection (a small actor, `store`); appends that arrive while a
//!   commit runs are committed together (group commit), never one transaction per reading.
//!
//! Map, from the outside in; a file uses only files listed after it, so there is no circle:
//! - [`handle`]: [`handle::QueueHandle`], the async API the gateway holds. Each call is a
//!   `command::Command` to the store thread, with a oneshot for the reply.
//! - `store`: the thread. It takes the commands one at a time, gathers the appends that
//!   wait into one commit, and checkpoints the WAL. `state`: what its operations share,
//!   the connection and the running figures (bytes, points per destination, open gaps) that
//!   spare every commit and scrape a count.
//! - [`inspect`]: read-only figures for `status`, metrics and `queue stats`.
//! - The operations, one transaction each: [`intake`] (commits of intake and of resolved
//!   parked readings, `drop_oldest`, expiry of parked readings) and [`delivery`] (what the
//!   sink does: lease, delete what was written, dead-letter what was refused, set a damaged
//!   segment aside).
//! - `limits`: the bytes of parked readings and dead letters, and their caps.
//! - [`startup`]: the check at start, and moving a damaged database aside. [`schema`]: the
//!   tables, their migrations and the connections' settings.
//! - One file per table family, with its SQL and its types: [`dead_letters`] (also the
//!   operator's list, replay and purge), [`parked`], [`activity`] (streams, activity, gaps),
//!   [`cache`] (destinations, the cached bindings), [`points`] (the segments table) and
//!   [`segment`] (the codec of one segment).
//! - This file: what they all speak, [`QueueError`] and the [`Limits`] a queue is opened with.

pub mod activity;
pub mod cache;
mod command;
pub mod config;
pub mod dead_letters;
pub mod delivery;
pub mod handle;
pub mod inspect;
pub mod intake;
mod limits;
pub mod parked;
pub mod points;
pub mod schema;
pub mod segment;
pub mod startup;
mod state;
mod store;

use std::path::PathBuf;
use std::sync::Arc;

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
    Full(Full),
    /// A segment read whole (`points::waiting_lines`) could not be decoded.
    #[error("queue database: {0}")]
    Damaged(#[from] segment::Damaged),
    /// An operator command found no database in the data directory.
    #[error("queue database: {} does not exist", .0.display())]
    Missing(PathBuf),
    /// SQLite would not switch the database to WAL (a file system without shared memory).
    #[error("queue database: could not enable WAL (journal_mode={mode})")]
    WalRefused { mode: String },
    /// A newer gateway wrote the database: this one does not downgrade it.
    #[error("queue database: database schema {found} is newer than this gateway understands ({understood})")]
    SchemaNewer { found: i64, understood: i64 },
    /// Operator commands read the current schema only; the daemon upgrades an older one.
    #[error(
        "queue database: the queue database has schema {found}, this gateway reads schema {reads}: start the daemon \
         once (systemctl restart heartguard-gateway) and it upgrades the database"
    )]
    SchemaNotCurrent { found: i64, reads: i64 },
    /// Every attempt at opening and checking the database failed for a reason other than
    /// damage; the file was left as it is.
    #[error(
        "queue database: {} could not be opened and checked ({attempts} attempts, last: {}); it was left as it is. \
         Another process may hold it (a second gateway on this data_dir, an operator command), or the storage failed",
        .path.display(),
        bare(.last)
    )]
    Unopened {
        path: PathBuf,
        attempts: u32,
        #[source]
        last: Box<QueueError>,
    },
    /// A group commit failed: every append in it gets the one error.
    #[error("queue database: {0}")]
    Commit(#[source] Arc<QueueError>),
    /// A binding could not be written to the cache.
    #[error("queue database: {0}")]
    EncodeBinding(#[source] serde_json::Error),
    /// A cached binding could not be read back.
    #[error("queue database: binding cache: {0}")]
    BindingCache(#[source] serde_json::Error),
}

/// An error as the refusal to open names it: SQLite's own words, without the prefix.
fn bare(e: &QueueError) -> &dyn std::fmt::Display {
    match e {
        QueueError::Sqlite(e) => e,
        e => e,
    }
}

/// Why the queue refuses a commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    #[error("less than queue.min_free_bytes ({min_free_bytes}) free on the data directory's filesystem ({free} free)")]
    FreeSpace { min_free_bytes: u64, free: u64 },
    #[error(
        "queue.max_bytes ({max_bytes}) reached: {waiting} bytes of waiting points, {parked} of parked readings, \
         {dead_letters} of dead letters"
    )]
    MaxBytes { max_bytes: u64, waiting: u64, parked: u64, dead_letters: u64 },
}

/// SQLite's `synchronous` setting for the queue. `Full` (the default) makes every commit
/// survive power loss; `Normal` survives a process crash but may lose the last commits on
/// power loss, and is faster on slow storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    #[default]
    Full,
    Normal,
}

/// What the queue does when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Delete the oldest waiting points (counted and logged) to make room for new ones.
    #[default]
    DropOldest,
    /// Refuse new points: intake stops acknowledging, so the MQTT broker holds the data.
    Backpressure,
}

/// Bounds on what the queue may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Everything kept, in bytes (about the disk space it takes): waiting points (their line
    /// protocol), parked readings and dead letters (see [`Limits::max_parked_bytes`] and
    /// [`Limits::max_dead_letter_bytes`] for how those are measured). `policy` makes room
    /// among the waiting points only.
    pub max_bytes: u64,
    pub policy: FullPolicy,
    /// Readings parked `unbound`, in bytes of their stored reading and serial. Over it the
    /// oldest of them are deleted, so that readings nobody claims (random serials) cannot
    /// take the room of waiting points. Readings parked `fresh` are never deleted for it:
    /// with PostgreSQL bindings every reading is one for a moment.
    pub max_parked_bytes: u64,
    /// Dead letters, in bytes of their line and detail. Over it the oldest are deleted.
    pub max_dead_letter_bytes: u64,
    /// Intake stops (whatever the policy) when less than this is free on the data
    /// directory's filesystem, counting the database's own free pages as free.
    pub min_free_bytes: u64,
    /// Most points in one segment (at most `segment::MAX_POINTS`). No larger than a delivery
    /// batch, so that a batch takes whole segments and deletes them without rewriting.
    pub segment_points: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: u64::MAX,
            policy: FullPolicy::DropOldest,
            max_parked_bytes: u64::MAX,
            max_dead_letter_bytes: u64::MAX,
            min_free_bytes: 0,
            segment_points: segment::MAX_POINTS,
        }
    }
}

#[cfg(test)]
mod model_test;
#[cfg(test)]
mod test_support;
