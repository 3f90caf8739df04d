//! The database: its tables, the migrations that bring an older file up to date, and the
//! settings of every connection to it (WAL, `synchronous`). The daemon opens it through
//! [`super::startup::open_or_recover`]; operator commands open it beside the daemon
//! ([`open_read_only`], [`open_read_write`]) and read the current schema only.
//!
//! Schema history (`PRAGMA user_version`): 1 kept a row per point (`points`); 2 keeps
//! segments ([`super::segment`]) and moves the rows of 1 into them when it opens.

use std::path::Path;

use rusqlite::Connection;

use super::points::put_segment;
use super::segment::{self, Record};
use super::{QueueError, Synchronous};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "gateway.db";

/// WAL pages after which a commit checkpoints (see `configure`).
const WAL_AUTOCHECKPOINT_PAGES: i64 = 4096;

/// Current schema version (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS destinations (
    id     INTEGER PRIMARY KEY,
    org    TEXT NOT NULL,
    bucket TEXT NOT NULL,
    UNIQUE (org, bucket)
);
-- Waiting points, a segment (see `segment`) per commit and destination. The key is the
-- segment's last point id: AUTOINCREMENT keeps it (and so every point id) from ever being
-- given twice, even once the table was empty or another connection (dead-letter replay)
-- queued points.
CREATE TABLE IF NOT EXISTS segments (
    last_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    first_id    INTEGER NOT NULL,
    dest_id     INTEGER NOT NULL REFERENCES destinations(id),
    points      INTEGER NOT NULL,
    -- Line bytes of its points, one newline each included.
    bytes       INTEGER NOT NULL,
    -- The earliest enqueue time of its points.
    enqueued_ns INTEGER NOT NULL,
    body        BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS segments_by_dest ON segments (dest_id, last_id);
CREATE TABLE IF NOT EXISTS streams (
    id        INTEGER PRIMARY KEY,
    stream_id TEXT NOT NULL UNIQUE
);
-- Per-stream activity: totals since the gateway first saw the stream, and how much of it
-- was already reported to PostgreSQL.
CREATE TABLE IF NOT EXISTS activity (
    stream_key         INTEGER PRIMARY KEY REFERENCES streams(id),
    readings           INTEGER NOT NULL DEFAULT 0,
    delivered          INTEGER NOT NULL DEFAULT 0,
    last_reading_ns    INTEGER,
    last_delivered_ns  INTEGER,
    reported_readings  INTEGER NOT NULL DEFAULT 0,
    reported_delivered INTEGER NOT NULL DEFAULT 0,
    reported_ns        INTEGER
);
-- Data gaps: opened when a stream's readings stop for longer than its threshold, closed by
-- the next reading. reported: 0 not yet, 1 sent open, 2 sent closed.
CREATE TABLE IF NOT EXISTS gaps (
    id           INTEGER PRIMARY KEY,
    stream_key   INTEGER NOT NULL REFERENCES streams(id),
    started_ns   INTEGER NOT NULL,
    ended_ns     INTEGER,
    threshold_ns INTEGER NOT NULL,
    reported     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS gaps_open ON gaps (stream_key) WHERE ended_ns IS NULL;
CREATE TABLE IF NOT EXISTS parked (
    id        INTEGER PRIMARY KEY,
    serial    TEXT NOT NULL,
    ts_ns     INTEGER NOT NULL,
    reason    TEXT NOT NULL,
    body      TEXT NOT NULL,
    parked_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS parked_by_reason ON parked (reason, ts_ns);
CREATE INDEX IF NOT EXISTS parked_by_age ON parked (parked_ns);
CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY,
    dest_id     INTEGER REFERENCES destinations(id),
    line        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    status      INTEGER,
    detail      TEXT NOT NULL,
    enqueued_ns INTEGER NOT NULL,
    failed_ns   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_reason ON dead_letters (reason, id);
CREATE TABLE IF NOT EXISTS binding_cache (
    seq  INTEGER PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// Opens the database with the queue's pragmas and schema.
pub fn open(path: &Path, sync: Synchronous) -> Result<Connection, QueueError> {
    configure(connect(path)?, sync)
}

pub(super) fn connect(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// Sets the queue's pragmas and brings the schema up to date.
pub(super) fn configure(conn: Connection, sync: Synchronous) -> Result<Connection, QueueError> {
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(QueueError::WalRefused { mode });
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
    // SQLite checkpoints after every 1,000 WAL pages by default: under load every few
    // commits, copying the same hot pages (the tables' right edges, their index, activity)
    // again each time. 4,096 pages (16 MiB of WAL at most, besides the checkpoint every
    // `store::MAINTENANCE_EVERY`) copies each of them less often.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(QueueError::SchemaNewer { found: version, understood: SCHEMA_VERSION });
    }
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(SCHEMA)?;
    if version == 1 {
        migrate_points(&tx)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(conn)
}

/// Schema 1 kept a row per point (`points`). Moves them into segments, in queue order and
/// with their ids, and drops the table; in the caller's transaction, so a crash midway
/// leaves schema 1 as it was.
fn migrate_points(tx: &rusqlite::Transaction<'_>) -> Result<(), QueueError> {
    let exists: i64 =
        tx.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'points'", [], |r| r.get(0))?;
    if exists == 0 {
        return Ok(());
    }
    let started = std::time::Instant::now();
    // Per destination: the segment being filled and its line bytes.
    let mut open: Vec<(i64, Vec<Record>, usize)> = Vec::new();
    let (mut points, mut segments) = (0u64, 0u64);
    let mut buf = Vec::new();
    {
        let mut stmt = tx.prepare(
            "SELECT id, dest_id, line, enqueued_ns, coalesce(stream_key, 0), coalesce(ts_ns, 0) FROM points ORDER BY id",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let dest: i64 = row.get(1)?;
            let r = Record {
                id: row.get(0)?,
                line: row.get(2)?,
                enqueued_ns: row.get(3)?,
                stream_key: row.get(4)?,
                ts_ns: row.get(5)?,
            };
            let i = match open.iter().position(|(d, ..)| *d == dest) {
                Some(i) => i,
                None => {
                    open.push((dest, Vec::new(), 0));
                    open.len() - 1
                }
            };
            let (_, recs, bytes) = &mut open[i];
            if !segment::takes(recs.len(), *bytes, r.line.len(), segment::MAX_POINTS) {
                put_segment(tx, dest, recs, &mut buf)?;
                segments += 1;
                recs.clear();
                *bytes = 0;
            }
            *bytes += r.line.len() + 1;
            points += 1;
            recs.push(r);
        }
    }
    for (dest, recs, _) in open.iter().filter(|(_, r, _)| !r.is_empty()) {
        put_segment(tx, *dest, recs, &mut buf)?;
        segments += 1;
    }
    tx.execute_batch("DROP TABLE points")?;
    tracing::info!(
        points,
        segments,
        took_ms = started.elapsed().as_millis() as u64,
        "Queue database upgraded to schema 2: waiting points moved into segments."
    );
    Ok(())
}

/// Opens an existing database read-only, for operator commands that run beside the daemon.
pub fn open_read_only(data_dir: &Path) -> Result<Connection, QueueError> {
    let path = data_dir.join(DB_FILE);
    if !path.exists() {
        return Err(QueueError::Missing(path));
    }
    let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    require_current_schema(&conn)?;
    Ok(conn)
}

/// Opens an existing database for an operator command that changes it (dead-letter replay
/// and purge). Safe beside the running daemon: SQLite serializes the writers.
pub fn open_read_write(data_dir: &Path) -> Result<Connection, QueueError> {
    let path = data_dir.join(DB_FILE);
    if !path.exists() {
        return Err(QueueError::Missing(path));
    }
    let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    require_current_schema(&conn)?;
    Ok(conn)
}

/// Operator commands read the current schema only; the daemon upgrades an older one when it
/// starts (a package upgrade restarts it).
fn require_current_schema(conn: &Connection) -> Result<(), QueueError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version != SCHEMA_VERSION {
        return Err(QueueError::SchemaNotCurrent { found: version, reads: SCHEMA_VERSION });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rusqlite::params;

    use super::*;
    use crate::queue::Limits;
    use crate::queue::handle::QueueHandle;
    use crate::queue::test_support::point;

    /// The schema-1 queue: a row per point.
    const SCHEMA_1: &str = "
        CREATE TABLE destinations (id INTEGER PRIMARY KEY, org TEXT NOT NULL, bucket TEXT NOT NULL, UNIQUE (org, bucket));
        CREATE TABLE points (
            id INTEGER PRIMARY KEY, dest_id INTEGER NOT NULL REFERENCES destinations(id), line TEXT NOT NULL,
            enqueued_ns INTEGER NOT NULL, stream_key INTEGER, ts_ns INTEGER);
        CREATE INDEX points_by_dest ON points (dest_id, id);
        CREATE TABLE streams (id INTEGER PRIMARY KEY, stream_id TEXT NOT NULL UNIQUE);
        PRAGMA user_version = 1;";

    #[tokio::test]
    async fn a_schema_1_queue_is_upgraded_in_order_with_its_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let conn = Connection::open(dir.path().join(DB_FILE)).expect("create");
            conn.execute_batch(SCHEMA_1).expect("schema 1");
            conn.execute_batch(
                "INSERT INTO destinations VALUES (1, 'o', 'a'), (2, 'o', 'b'); INSERT INTO streams VALUES (1, 's1');",
            )
            .expect("destinations");
            let mut ins = conn.prepare("INSERT INTO points VALUES (?1, ?2, ?3, ?4, ?5, ?6)").expect("prepare");
            // Interleaved destinations, more points than one segment holds, ids with holes.
            for id in (1..=1300i64).filter(|id| id % 7 != 0) {
                let (dest, key) = if id % 3 == 0 { (2, None) } else { (1, Some(1)) };
                ins.execute(params![id, dest, format!("m v={id}i {id}"), 1000 + id, key, id]).expect("insert");
            }
        }
        // Operator commands leave an old schema to the daemon.
        let e = open_read_only(dir.path()).expect_err("schema 1");
        assert!(e.to_string().contains("schema 1"), "{e}");

        let (q, _join) = QueueHandle::open(dir.path(), Synchronous::Normal, Limits::default()).expect("upgrade");
        let kept = |dest: i64| (1..=1300i64).filter(move |id| id % 7 != 0 && (id % 3 == 0) == (dest == 2));
        let s = q.stats().await.expect("stats");
        assert_eq!(s.points, kept(1).count() as u64 + kept(2).count() as u64);
        assert_eq!(
            s.bytes,
            (1..=1300i64).filter(|id| id % 7 != 0).map(|id| format!("m v={id}i {id}").len() as u64 + 1).sum::<u64>()
        );
        assert_eq!(s.oldest_enqueued_ns, Some(1001));
        for dest in [1, 2] {
            let got = q.lease(dest, usize::MAX, usize::MAX).await.expect("lease");
            assert_eq!(got.iter().map(|l| l.id).collect::<Vec<_>>(), kept(dest).collect::<Vec<_>>());
            assert!(got.iter().all(|l| l.line == format!("m v={}i {}", l.id, l.id) && l.ts_ns == l.id));
            assert!(got.iter().all(|l| l.stream_key == if dest == 1 { 1 } else { 0 }));
        }
        // New points get ids above the old ones.
        q.append(vec![point(1, 9)]).await.expect("append");
        let all = q.lease(1, usize::MAX, usize::MAX).await.expect("lease");
        assert!(all.last().expect("new").id > 1300);
        q.close().await.expect("close");
        let conn = open_read_only(dir.path()).expect("schema 2 now");
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master WHERE name IN ('points', 'points_by_dest')", [], |r| {
                r.get(0)
            })
            .expect("tables");
        assert_eq!(tables, 0, "the old table is gone");
    }
}
