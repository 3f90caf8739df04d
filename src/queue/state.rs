//! What the store's operations share: the connection, and the figures kept in memory about
//! its tables so that no commit and no scrape has to count them (a backlog of a million
//! points would stall the queue). Every operation brings them up to date once its
//! transaction has committed; [`State::recount`] reads them from the tables again when
//! another connection (an operator command) changed those.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::activity::open_gap_streams;
use super::inspect::Running;
use super::limits::{Evicted, Evictions, Kept, evict_over_caps, kept_bytes};
use super::points::{NewPoint, count_waiting, waiting_bytes};
use super::{Full, Limits, QueueError};

pub(super) struct State {
    pub(super) conn: Connection,
    /// The data directory: its filesystem's free space bounds intake.
    pub(super) dir: PathBuf,
    pub(super) limits: Limits,
    /// Bytes of waiting points, kept current on every insert and delete.
    pub(super) bytes: u64,
    /// Bytes of parked readings and dead letters, kept current likewise.
    pub(super) kept: Kept,
    /// Parked readings and dead letters deleted over their caps.
    pub(super) evictions: Evictions,
    /// Waiting points per destination id, kept current likewise: metrics read it on every
    /// scrape.
    pub(super) waiting: HashMap<i64, u64>,
    /// Streams with an open gap: only their readings need the gap-closing update.
    pub(super) open_gaps: HashSet<i64>,
    /// Reused for encoding segments.
    pub(super) buf: Vec<u8>,
    /// Whether "queue full" was logged since the queue last had room (log once per episode).
    full_logged: bool,
}

impl State {
    /// The state of an open database, its figures read from the tables.
    pub(super) fn load(conn: Connection, dir: &Path, limits: Limits) -> Result<Self, QueueError> {
        Ok(Self {
            bytes: waiting_bytes(&conn)?,
            kept: kept_bytes(&conn)?,
            waiting: count_waiting(&conn)?,
            open_gaps: open_gap_streams(&conn)?,
            conn,
            dir: dir.to_path_buf(),
            limits,
            evictions: Evictions::default(),
            buf: Vec::new(),
            full_logged: false,
        })
    }

    /// Reads the figures from the tables again (another connection changed them); a figure
    /// that cannot be read keeps its value.
    pub(super) fn recount(&mut self) {
        if let Ok(b) = waiting_bytes(&self.conn) {
            self.bytes = b;
        }
        if let Ok(w) = count_waiting(&self.conn) {
            self.waiting = w;
        }
        if let Ok(k) = kept_bytes(&self.conn) {
            self.kept = k;
        }
    }

    /// The figures, for [`super::inspect::gauges`].
    pub(super) fn running(&self) -> Running<'_> {
        Running {
            bytes: self.bytes,
            waiting: &self.waiting,
            parked_bytes: self.kept.parked,
            unbound_bytes: self.kept.unbound,
            dead_letter_bytes: self.kept.dead_letters,
            evicted: (self.evictions.total.parked.0, self.evictions.total.dead_letters.0),
        }
    }

    /// Takes the bytes a committed transaction left parked and in the dead letters (`kept`,
    /// before evictions) and what the caps made it delete.
    pub(super) fn kept_changed(&mut self, kept: Kept, evicted: Evicted) {
        self.kept = kept.after(evicted);
        self.evictions.note(evicted, &self.limits);
    }

    /// Deletes what is over the caps, in a transaction of its own.
    pub(super) fn trim(&mut self) -> Result<(), QueueError> {
        let tx = self.conn.transaction()?;
        let evicted = evict_over_caps(&tx, &self.limits, self.kept)?;
        tx.commit()?;
        self.kept_changed(self.kept, evicted);
        Ok(())
    }

    /// Forgets the open gaps of `closed` streams, once their closing is committed; a stream
    /// with one more open gap (opened twice before a reading) stays.
    pub(super) fn forget_gaps(&mut self, closed: Vec<i64>) {
        if !closed.is_empty() {
            self.open_gaps = open_gap_streams(&self.conn).unwrap_or_else(|_| {
                let mut all = std::mem::take(&mut self.open_gaps);
                all.extend(closed);
                all
            });
        }
    }

    /// Adds `delta` to the waiting count of `dest_id`.
    pub(super) fn count(&mut self, dest_id: i64, delta: i64) {
        let n = self.waiting.entry(dest_id).or_insert(0);
        *n = n.saturating_add_signed(delta);
    }

    /// Counts `points` as waiting, a run of one destination at a time.
    pub(super) fn count_points<'a>(&mut self, points: impl Iterator<Item = &'a NewPoint>) {
        let mut last: Option<(i64, i64)> = None;
        for p in points {
            match &mut last {
                Some((dest, n)) if *dest == p.dest_id => *n += 1,
                _ => {
                    if let Some((dest, n)) = last.take() {
                        self.count(dest, n);
                    }
                    last = Some((p.dest_id, 1));
                }
            }
        }
        if let Some((dest, n)) = last {
            self.count(dest, n);
        }
    }

    /// A refusal of intake, logged once until the queue has room again ([`Self::has_room`]).
    pub(super) fn full(&mut self, why: Full) -> QueueError {
        if !self.full_logged {
            tracing::warn!(reason = %why, "Queue full: refusing new readings until there is room (sources hold them).");
            self.full_logged = true;
        }
        QueueError::Full(why)
    }

    /// A commit of intake went through: the next refusal is a new episode, logged again.
    pub(super) fn has_room(&mut self) {
        self.full_logged = false;
    }

    /// Explicit WAL checkpoint: a long backlog must not grow the WAL without bound.
    pub(super) fn checkpoint(&self) -> Result<(), QueueError> {
        self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}
