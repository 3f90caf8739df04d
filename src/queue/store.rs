//! The store thread: owns the SQLite connection; every statement runs here.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Command, QueueError};
use crate::bindings::{Binding, Destination};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "gateway.db";

/// Most points committed in one group-commit transaction.
const GROUP_COMMIT_MAX_POINTS: usize = 50_000;

/// Current schema version (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS destinations (
    id     INTEGER PRIMARY KEY,
    org    TEXT NOT NULL,
    bucket TEXT NOT NULL,
    UNIQUE (org, bucket)
);
CREATE TABLE IF NOT EXISTS points (
    id          INTEGER PRIMARY KEY,
    dest_id     INTEGER NOT NULL REFERENCES destinations(id),
    line        TEXT NOT NULL,
    enqueued_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS points_by_dest ON points (dest_id, id);
CREATE TABLE IF NOT EXISTS binding_cache (
    seq  INTEGER PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

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

/// A point to commit.
#[derive(Debug, Clone)]
pub struct NewPoint {
    pub dest_id: i64,
    pub line: String,
    /// When the point was accepted (ns), for the oldest-age figure.
    pub enqueued_ns: i64,
}

/// A waiting point handed to a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    pub id: i64,
    pub line: String,
}

/// What is waiting, for status and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    pub points: u64,
    pub bytes: u64,
    pub oldest_enqueued_ns: Option<i64>,
    pub db_file_bytes: u64,
}

pub(crate) fn spawn(
    data_dir: &Path,
    sync: Synchronous,
) -> Result<(mpsc::Sender<Command>, std::thread::JoinHandle<()>), QueueError> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(DB_FILE);
    let conn = open(&path, sync)?;
    let (tx, rx) = mpsc::channel();
    let join = std::thread::Builder::new()
        .name("queue-store".into())
        .spawn(move || {
            Store {
                conn,
                path,
                deferred: VecDeque::new(),
            }
            .run(rx)
        })?;
    Ok((tx, join))
}

/// Opens the database with the queue's pragmas and schema.
pub fn open(path: &Path, sync: Synchronous) -> Result<Connection, QueueError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(QueueError::Invalid(format!(
            "could not enable WAL (journal_mode={mode})"
        )));
    }
    conn.pragma_update(
        None,
        "synchronous",
        match sync {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        },
    )?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(QueueError::Invalid(format!(
            "database schema {version} is newer than this gateway understands ({SCHEMA_VERSION})"
        )));
    }
    conn.execute_batch(SCHEMA)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(conn)
}

/// Opens an existing database read-only, for operator commands that run beside the daemon.
pub fn open_read_only(data_dir: &Path) -> Result<Connection, QueueError> {
    let path = data_dir.join(DB_FILE);
    if !path.exists() {
        return Err(QueueError::Invalid(format!(
            "{} does not exist",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

struct Store {
    conn: Connection,
    path: PathBuf,
    /// Commands read while gathering a group commit, handled right after it.
    deferred: VecDeque<Command>,
}

impl Store {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        loop {
            let cmd = match self.deferred.pop_front() {
                Some(c) => c,
                None => match rx.recv() {
                    Ok(c) => c,
                    // Every handle dropped: close as on a clean stop.
                    Err(_) => {
                        let _ = self.checkpoint();
                        return;
                    }
                },
            };
            match cmd {
                Command::Append(points, reply) => self.group_commit(points, reply, &rx),
                Command::Lease {
                    dest_id,
                    max_lines,
                    max_bytes,
                    reply,
                } => {
                    let _ = reply.send(self.lease(dest_id, max_lines, max_bytes));
                }
                Command::Delete {
                    dest_id,
                    first,
                    last,
                    reply,
                } => {
                    let r = self
                        .conn
                        .prepare_cached(
                            "DELETE FROM points WHERE dest_id = ?1 AND id BETWEEN ?2 AND ?3",
                        )
                        .and_then(|mut s| s.execute(params![dest_id, first, last]))
                        .map(|n| n as u64)
                        .map_err(QueueError::from);
                    let _ = reply.send(r);
                }
                Command::DestinationId(d, reply) => {
                    let _ = reply.send(self.destination_id(&d));
                }
                Command::Destinations(reply) => {
                    let _ = reply.send(destinations(&self.conn));
                }
                Command::ReplaceBindings {
                    bindings,
                    source,
                    version,
                    reply,
                } => {
                    let _ = reply.send(self.replace_bindings(&bindings, &source, &version));
                }
                Command::LoadBindings(reply) => {
                    let _ = reply.send(load_bindings(&self.conn));
                }
                Command::Stats(reply) => {
                    let _ = reply.send(stats(&self.conn, &self.path));
                }
                Command::Close(reply) => {
                    let r = self.checkpoint();
                    // Dropping the connection closes it; answer after that.
                    drop(self.conn);
                    let _ = reply.send(r);
                    return;
                }
            }
        }
    }

    /// Commits `first` together with every append already waiting in the channel.
    fn group_commit(
        &mut self,
        first: std::sync::Arc<Vec<NewPoint>>,
        reply: super::Reply<()>,
        rx: &mpsc::Receiver<Command>,
    ) {
        let mut total = first.len();
        let mut batches = vec![(first, reply)];
        while total < GROUP_COMMIT_MAX_POINTS {
            match rx.try_recv() {
                Ok(Command::Append(p, r)) => {
                    total += p.len();
                    batches.push((p, r));
                }
                Ok(other) => {
                    self.deferred.push_back(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let result = self.insert_all(batches.iter().map(|(p, _)| p));
        for (_, reply) in batches {
            let _ = reply.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(QueueError::Invalid(e.to_string())),
            });
        }
    }

    fn insert_all<'a>(
        &mut self,
        batches: impl Iterator<Item = &'a std::sync::Arc<Vec<NewPoint>>>,
    ) -> Result<(), QueueError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO points (dest_id, line, enqueued_ns) VALUES (?1, ?2, ?3)",
            )?;
            for p in batches.flat_map(|b| b.iter()) {
                stmt.execute(params![p.dest_id, p.line, p.enqueued_ns])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn lease(
        &mut self,
        dest_id: i64,
        max_lines: usize,
        max_bytes: usize,
    ) -> Result<Vec<Leased>, QueueError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, line FROM points WHERE dest_id = ?1 ORDER BY id LIMIT ?2",
        )?;
        let mut rows = stmt.query(params![dest_id, max_lines as i64])?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = rows.next()? {
            let line: String = row.get(1)?;
            // Always hand out at least one line, however long, so a big line cannot wedge
            // its destination.
            if !out.is_empty() && bytes + line.len() + 1 > max_bytes {
                break;
            }
            bytes += line.len() + 1;
            out.push(Leased {
                id: row.get(0)?,
                line,
            });
        }
        Ok(out)
    }

    fn destination_id(&mut self, d: &Destination) -> Result<i64, QueueError> {
        self.conn
            .prepare_cached(
                "INSERT INTO destinations (org, bucket) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            )?
            .execute(params![d.org, d.bucket])?;
        Ok(self
            .conn
            .prepare_cached("SELECT id FROM destinations WHERE org = ?1 AND bucket = ?2")?
            .query_row(params![d.org, d.bucket], |r| r.get(0))?)
    }

    fn replace_bindings(
        &mut self,
        bindings: &[Binding],
        source: &str,
        version: &str,
    ) -> Result<(), QueueError> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM binding_cache", [])?;
        {
            let mut stmt = tx.prepare("INSERT INTO binding_cache (body) VALUES (?1)")?;
            for b in bindings {
                let body =
                    serde_json::to_string(b).map_err(|e| QueueError::Invalid(e.to_string()))?;
                stmt.execute([body])?;
            }
            let mut meta =
                tx.prepare("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?;
            meta.execute(["bindings_source", source])?;
            meta.execute(["bindings_version", version])?;
            meta.execute(["bindings_stored_at", &chrono::Utc::now().to_rfc3339()])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn checkpoint(&self) -> Result<(), QueueError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

pub fn destinations(conn: &Connection) -> Result<Vec<(i64, Destination, u64)>, QueueError> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.id, d.org, d.bucket, (SELECT count(*) FROM points p WHERE p.dest_id = d.id) FROM destinations d ORDER BY d.id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            Destination {
                org: r.get(1)?,
                bucket: r.get(2)?,
            },
            r.get::<_, i64>(3)? as u64,
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn load_bindings(
    conn: &Connection,
) -> Result<Option<(Vec<Binding>, String, String)>, QueueError> {
    let meta = |key: &str| -> Result<Option<String>, QueueError> {
        Ok(conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    };
    let Some(source) = meta("bindings_source")? else {
        return Ok(None);
    };
    let version = meta("bindings_version")?.unwrap_or_default();
    let mut stmt = conn.prepare("SELECT body FROM binding_cache ORDER BY seq")?;
    let mut out = Vec::new();
    for body in stmt.query_map([], |r| r.get::<_, String>(0))? {
        let b: Binding = serde_json::from_str(&body?)
            .map_err(|e| QueueError::Invalid(format!("binding cache: {e}")))?;
        out.push(b);
    }
    Ok(Some((out, source, version)))
}

pub fn stats(conn: &Connection, path: &Path) -> Result<QueueStats, QueueError> {
    let (points, bytes, oldest): (i64, Option<i64>, Option<i64>) = conn.query_row(
        "SELECT count(*), sum(length(line) + 1), min(enqueued_ns) FROM points",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let file = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    Ok(QueueStats {
        points: points as u64,
        bytes: bytes.unwrap_or(0) as u64,
        oldest_enqueued_ns: oldest,
        db_file_bytes: file(path.to_path_buf()) + file(PathBuf::from(wal)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QueueHandle;

    fn dest(b: &str) -> Destination {
        Destination {
            org: "o".into(),
            bucket: b.into(),
        }
    }

    fn point(dest_id: i64, n: usize) -> NewPoint {
        NewPoint {
            dest_id,
            line: format!("m v={n}i {n}"),
            enqueued_ns: n as i64,
        }
    }

    #[tokio::test]
    async fn points_survive_reopen_and_leave_only_when_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (q, join) = QueueHandle::open(dir.path(), Synchronous::Full).expect("open");
        let a = q.destination_id(dest("a")).await.expect("dest");
        let b = q.destination_id(dest("b")).await.expect("dest");
        assert_eq!(q.destination_id(dest("a")).await.expect("same"), a);
        q.append(
            (0..10)
                .map(|n| point(a, n))
                .chain((0..3).map(|n| point(b, n)))
                .collect(),
        )
        .await
        .expect("append");
        let batch = q.lease(a, 4, usize::MAX).await.expect("lease");
        assert_eq!(
            batch.iter().map(|l| l.line.as_str()).collect::<Vec<_>>()[0],
            "m v=0i 0"
        );
        assert_eq!(batch.len(), 4);
        // Not deleted yet: leasing again yields the same batch (a failed send retries it).
        assert_eq!(q.lease(a, 4, usize::MAX).await.expect("again"), batch);
        assert_eq!(
            q.delete(a, batch[0].id, batch[3].id).await.expect("delete"),
            4
        );
        q.close().await.expect("close");
        join.join().expect("thread");

        let (q, _join) = QueueHandle::open(dir.path(), Synchronous::Full).expect("reopen");
        let rest = q.lease(a, 100, usize::MAX).await.expect("lease");
        assert_eq!(rest.len(), 6);
        assert_eq!(rest[0].line, "m v=4i 4");
        let d = q.destinations().await.expect("dests");
        assert_eq!(d.iter().map(|(_, _, n)| *n).collect::<Vec<_>>(), [6, 3]);
        assert_eq!(q.stats().await.expect("stats").points, 9);
    }

    #[tokio::test]
    async fn lease_respects_bytes_but_always_yields_one_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (q, _join) = QueueHandle::open(dir.path(), Synchronous::Normal).expect("open");
        let a = q.destination_id(dest("a")).await.expect("dest");
        q.append((0..5).map(|n| point(a, n)).collect())
            .await
            .expect("append");
        assert_eq!(q.lease(a, 100, 1).await.expect("lease").len(), 1);
        assert_eq!(q.lease(a, 100, 20).await.expect("lease").len(), 2);
    }

    #[tokio::test]
    async fn concurrent_appends_are_all_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (q, _join) = QueueHandle::open(dir.path(), Synchronous::Full).expect("open");
        let a = q.destination_id(dest("a")).await.expect("dest");
        let tasks: Vec<_> = (0..20)
            .map(|t| {
                let q = q.clone();
                tokio::spawn(async move {
                    q.append((0..50).map(|n| point(a, t * 50 + n)).collect())
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("join").expect("append");
        }
        assert_eq!(q.stats().await.expect("stats").points, 1000);
    }
}

#[cfg(test)]
mod model {
    //! Model-based test: random appends, leases, acks and restarts against the real store and
    //! a `VecDeque` per destination. No loss, no phantom rows, order kept.
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;
    use crate::queue::QueueHandle;

    #[derive(Debug, Clone)]
    enum Op {
        Append {
            dest: usize,
            n: usize,
        },
        /// Lease up to `n` and acknowledge them (a delivered batch).
        Deliver {
            dest: usize,
            n: usize,
        },
        /// Lease and do not acknowledge (a failed send): nothing may change.
        Fail {
            dest: usize,
            n: usize,
        },
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..2usize, 1..20usize).prop_map(|(dest, n)| Op::Append { dest, n }),
            3 => (0..2usize, 1..15usize).prop_map(|(dest, n)| Op::Deliver { dest, n }),
            1 => (0..2usize, 1..15usize).prop_map(|(dest, n)| Op::Fail { dest, n }),
            1 => Just(Op::Restart),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn store_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
            rt.block_on(async move {
                let dir = tempfile::tempdir().expect("tempdir");
                let (mut q, _j) = QueueHandle::open(dir.path(), Synchronous::Normal).expect("open");
                let mut ids = Vec::new();
                for b in ["a", "b"] {
                    ids.push(q.destination_id(Destination { org: String::new(), bucket: b.into() }).await.expect("dest"));
                }
                let mut model: Vec<VecDeque<String>> = vec![VecDeque::new(), VecDeque::new()];
                let mut seq = 0u64;
                for op in ops {
                    match op {
                        Op::Append { dest, n } => {
                            let lines: Vec<String> = (0..n).map(|_| { seq += 1; format!("m v={seq}i {seq}") }).collect();
                            model[dest].extend(lines.iter().cloned());
                            q.append(lines.into_iter().map(|line| NewPoint { dest_id: ids[dest], line, enqueued_ns: 0 }).collect()).await.expect("append");
                        }
                        Op::Deliver { dest, n } | Op::Fail { dest, n } => {
                            let got = q.lease(ids[dest], n, usize::MAX).await.expect("lease");
                            let want: Vec<String> = model[dest].iter().take(n).cloned().collect();
                            assert_eq!(got.iter().map(|l| l.line.clone()).collect::<Vec<_>>(), want);
                            if matches!(op, Op::Deliver { .. }) && !got.is_empty() {
                                let k = q.delete(ids[dest], got[0].id, got[got.len() - 1].id).await.expect("delete");
                                assert_eq!(k as usize, got.len());
                                model[dest].drain(..got.len());
                            }
                        }
                        Op::Restart => {
                            q.close().await.expect("close");
                            q = QueueHandle::open(dir.path(), Synchronous::Normal).expect("reopen").0;
                        }
                    }
                }
                let total: usize = model.iter().map(VecDeque::len).sum();
                assert_eq!(q.stats().await.expect("stats").points as usize, total);
            });
        }
    }
}
