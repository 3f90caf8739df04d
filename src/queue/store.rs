//! The store thread: owns the SQLite connection; every statement of the daemon runs here.
//!
//! It takes one [`Command`] at a time and answers it; appends waiting behind an append are
//! committed with it in one transaction (group commit, [`Store::group_commit`]). Between
//! commands, every [`MAINTENANCE_EVERY`], it checkpoints the WAL and takes in what another
//! connection (an operator command) changed.
//!
//! [`Store::handle`] is one match over every command, kept whole: each arm hands the
//! command to the operation that carries it out, so the match reads as the list of what the
//! store does.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use rusqlite::Connection;

use super::command::{Command, Reply};
use super::intake::{AppendReport, Batch};
use super::schema::DB_FILE;
use super::startup::{StartupCheck, open_or_recover};
use super::state::State;
use super::{Full, Limits, QueueError, Synchronous, activity, cache, delivery, inspect, intake, parked};

/// Most points committed in one group-commit transaction.
const GROUP_COMMIT_MAX_POINTS: usize = 50_000;

/// How often the store checkpoints its WAL and re-reads figures other processes changed.
const MAINTENANCE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A failed group commit, as each of its appends learns of it: the one error is shared.
enum Failed {
    Full(Full),
    Other(Arc<QueueError>),
}

impl Failed {
    fn error(&self) -> QueueError {
        match self {
            Failed::Full(why) => QueueError::Full(why.clone()),
            Failed::Other(e) => QueueError::Commit(e.clone()),
        }
    }
}

/// Opens (creating if needed) the database in `data_dir` and starts the store thread on it.
pub(super) fn spawn(
    data_dir: &Path,
    sync: Synchronous,
    limits: Limits,
) -> Result<(mpsc::Sender<Command>, std::thread::JoinHandle<()>), QueueError> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(DB_FILE);
    let (conn, _) = open_or_recover(&path, sync, StartupCheck::default())?;
    let data_version = data_version(&conn)?;
    let state = State::load(conn, data_dir, limits)?;
    let (tx, rx) = mpsc::channel();
    let mut store =
        Store { state, path, deferred: VecDeque::new(), data_version, last_maintenance: std::time::Instant::now() };
    // A cap may have been lowered since the last run.
    if let Err(e) = store.state.trim() {
        tracing::warn!(error = %e, "Could not delete what is over the queue's caps; the next commit tries again.");
    }
    let join = std::thread::Builder::new().name("queue-store".into()).spawn(move || store.run(rx))?;
    Ok((tx, join))
}

/// `PRAGMA data_version`: it changes when *another* connection commits.
fn data_version(conn: &Connection) -> Result<i64, QueueError> {
    Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}

struct Store {
    state: State,
    /// The database file, for its size.
    path: PathBuf,
    /// Commands read while gathering a group commit, handled right after it.
    deferred: VecDeque<Command>,
    /// `PRAGMA data_version` at the last look: it changes when *another* connection (an
    /// operator command) commits, and then the running figures are read again.
    data_version: i64,
    last_maintenance: std::time::Instant,
}

impl Store {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        let closing = loop {
            // `None`: every handle dropped; close as on a clean stop.
            let Some(cmd) = self.next(&rx) else { break None };
            if let Some(reply) = self.handle(cmd, &rx) {
                break Some(reply);
            }
        };
        self.state.evictions.log(&self.state.limits);
        let r = self.state.checkpoint();
        // Dropping the connection closes it; answer after that.
        drop(self);
        if let Some(reply) = closing {
            let _ = reply.send(r);
        }
    }

    /// The next command: one deferred by a group commit, else one from the channel, with
    /// maintenance when it is due; `None` once every handle is dropped.
    fn next(&mut self, rx: &mpsc::Receiver<Command>) -> Option<Command> {
        loop {
            if self.last_maintenance.elapsed() >= MAINTENANCE_EVERY {
                self.maintain();
            }
            if let Some(c) = self.deferred.pop_front() {
                return Some(c);
            }
            match rx.recv_timeout(MAINTENANCE_EVERY) {
                Ok(c) => return Some(c),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Carries out `cmd` and answers it; a `Close` is handed back, to close the store.
    fn handle(&mut self, cmd: Command, rx: &mpsc::Receiver<Command>) -> Option<Reply<()>> {
        let st = &mut self.state;
        match cmd {
            Command::Append(points, reply) => self.group_commit(points, reply, rx),
            Command::Lease { dest_id, after_id, max_lines, max_bytes, reply } => {
                let _ = reply.send(delivery::lease(st, dest_id, after_id, max_lines, max_bytes));
            }
            Command::Delete { dest_id, first, last, seen, reply } => {
                let _ = reply.send(delivery::delete(st, dest_id, first, last, seen));
            }
            Command::DeadLetter { dest_id, ids, reason, status, detail, reply } => {
                let _ = reply.send(delivery::dead_letter(st, dest_id, &ids, reason, status, &detail));
            }
            Command::ScanParked { reason, max_ts, after_id, limit, reply } => {
                let _ = reply.send(parked::scan(&st.conn, reason, max_ts, after_id, limit));
            }
            Command::Promote { points, remove, repark, reply } => {
                let _ = reply.send(intake::promote(st, &points, &remove, &repark));
            }
            Command::ExpireParked { cutoff_ns, reply } => {
                let _ = reply.send(intake::expire_parked(st, cutoff_ns));
            }
            Command::StreamKey(stream_id, reply) => {
                let _ = reply.send(activity::stream_key(&st.conn, &stream_id));
            }
            Command::Activity(reply) => {
                let _ = reply.send(activity::list(&st.conn));
            }
            Command::OpenGap { stream_key, started_ns, threshold_ns, reply } => {
                let opened = activity::open_gap(&st.conn, stream_key, started_ns, threshold_ns);
                if let Ok(true) = opened {
                    st.open_gaps.insert(stream_key);
                }
                let _ = reply.send(opened);
            }
            Command::UnreportedGaps(reply) => {
                let _ = reply.send(activity::unreported_gaps(&st.conn));
            }
            Command::MarkReported { activity, gaps, reported_ns, reply } => {
                let _ = reply.send(activity::mark_reported(&mut st.conn, &activity, &gaps, reported_ns));
            }
            Command::DestinationId(d, reply) => {
                let _ = reply.send(cache::destination_id(&st.conn, &d));
            }
            Command::Destinations(reply) => {
                let _ = reply.send(cache::destinations(&st.conn));
            }
            Command::ReplaceBindings { bindings, source, version, reply } => {
                let _ = reply.send(cache::replace_bindings(&mut st.conn, &bindings, &source, &version));
            }
            Command::LoadBindings(reply) => {
                let _ = reply.send(cache::load_bindings(&st.conn));
            }
            Command::Stats(reply) => {
                let _ = reply.send(inspect::stats(&st.conn, &self.path));
            }
            Command::Gauges(reply) => {
                // An operator command may have changed the queue since the last look.
                self.recount_if_changed();
                let st = &self.state;
                let _ = reply.send(inspect::gauges(&st.conn, &self.path, Some(st.running())));
            }
            Command::Ping(reply) => {
                let _ = reply.send(Ok(()));
            }
            Command::Close(reply) => return Some(reply),
        }
        None
    }

    /// Commits `first` together with every append already waiting in the channel.
    fn group_commit(&mut self, first: Arc<Batch>, reply: Reply<AppendReport>, rx: &mpsc::Receiver<Command>) {
        let mut total = first.points.len() + first.parked.len();
        let mut batches = vec![(first, reply)];
        while total < GROUP_COMMIT_MAX_POINTS {
            match rx.try_recv() {
                Ok(Command::Append(p, r)) => {
                    total += p.points.len() + p.parked.len();
                    batches.push((p, r));
                }
                Ok(other) => {
                    self.deferred.push_back(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let result = intake::commit(&mut self.state, &batches).map_err(|e| match e {
            QueueError::Full(why) => Failed::Full(why),
            e => Failed::Other(Arc::new(e)),
        });
        for (i, (_, reply)) in batches.into_iter().enumerate() {
            // The first caller gets the report (it logs what was dropped); all get the outcome.
            let r = match &result {
                Ok(rep) if i == 0 => Ok(rep.clone()),
                Ok(_) => Ok(AppendReport::default()),
                Err(failed) => Err(failed.error()),
            };
            let _ = reply.send(r);
        }
    }

    /// Explicit WAL checkpoint (a long backlog must not grow the WAL without bound) and a
    /// recount when another process (an operator command) changed the database.
    fn maintain(&mut self) {
        self.last_maintenance = std::time::Instant::now();
        if let Err(e) = self.state.checkpoint() {
            tracing::warn!(error = %e, "WAL checkpoint failed; retrying later.");
        }
        self.recount_if_changed();
        self.state.evictions.log_when_due(&self.state.limits);
    }

    /// Recomputes the running figures when another connection (an operator command) has
    /// committed since the last look.
    fn recount_if_changed(&mut self) {
        if let Ok(v) = data_version(&self.state.conn)
            && v != self.data_version
        {
            self.data_version = v;
            self.state.recount();
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::queue::dead_letters::{DeadLetterFilter, DeadLetterReason, replay};
    use crate::queue::handle::QueueHandle;
    use crate::queue::schema::open_read_write;
    use crate::queue::test_support::{dest, point};
    use crate::queue::{Limits, Synchronous};

    #[tokio::test]
    async fn concurrent_appends_are_all_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (q, _join) = QueueHandle::open(dir.path(), Synchronous::Full, Limits::default()).expect("open");
        let a = q.destination_id(dest("a")).await.expect("dest");
        let tasks: Vec<_> = (0..20)
            .map(|t| {
                let q = q.clone();
                tokio::spawn(async move { q.append((0..50).map(|n| point(a, t * 50 + n)).collect()).await })
            })
            .collect();
        for t in tasks {
            t.await.expect("join").expect("append");
        }
        assert_eq!(q.stats().await.expect("stats").points, 1000);
    }

    #[tokio::test]
    async fn gauges_follow_an_operator_command_beside_the_daemon() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (q, _join) = QueueHandle::open(dir.path(), Synchronous::Normal, Limits::default()).expect("open");
        let a = q.destination_id(dest("a")).await.expect("dest");
        q.append((0..10).map(|n| point(a, n)).collect()).await.expect("append");
        assert_eq!(q.gauges().await.expect("gauges").points, 10);
        let rows = q.lease(a, 4, usize::MAX).await.expect("lease");
        q.dead_letter(a, rows.iter().map(|r| r.id).collect(), DeadLetterReason::Rejected, Some(400), "x".into())
            .await
            .expect("dead");
        let g = q.gauges().await.expect("gauges");
        assert_eq!((g.points, g.destinations[0].1), (6, 6));
        // `dead-letters replay` writes through a connection of its own.
        let mut conn = open_read_write(dir.path()).expect("rw");
        assert_eq!(replay(&mut conn, &DeadLetterFilter::default()).expect("replay"), 4);
        let g = q.gauges().await.expect("gauges");
        assert_eq!((g.points, g.destinations[0].1), (10, 10));
        assert_eq!(g.bytes, q.stats().await.expect("stats").bytes);
        assert_eq!(g.bytes, (0..10).map(|n| point(a, n).line.len() as u64 + 1).sum::<u64>());
    }
}
