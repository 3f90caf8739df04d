//! The store thread: owns the SQLite connection; every statement runs here.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rusqlite::{Connection, OptionalExtension, params};

use super::segment::{self, Encoder, Record};
use super::{Command, QueueError};
use crate::model::{Binding, Destination};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "gateway.db";

/// Most points committed in one group-commit transaction.
const GROUP_COMMIT_MAX_POINTS: usize = 50_000;

/// WAL pages after which a commit checkpoints (see `open`).
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

/// What a commit had to do to fit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendReport {
    /// Oldest points deleted to make room (policy `drop_oldest`).
    pub dropped: u64,
    pub dropped_bytes: u64,
    /// Enqueue times (ns) of the first and last point dropped.
    pub dropped_span: Option<(i64, i64)>,
}

/// A point that InfluxDB refused for good, kept with the reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub destination: String,
    pub line: String,
    pub reason: String,
    pub status: Option<u16>,
    pub detail: String,
    pub enqueued_ns: i64,
    pub failed_ns: i64,
}

/// Which dead letters an operator command acts on.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    pub reason: Option<String>,
    pub ids: Vec<i64>,
}

impl DeadLetterFilter {
    fn clause(&self) -> (String, Vec<rusqlite::types::Value>) {
        let mut sql = String::from(" WHERE 1=1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(r) = &self.reason {
            sql.push_str(" AND reason = ?");
            args.push(r.clone().into());
        }
        if !self.ids.is_empty() {
            sql.push_str(&format!(" AND id IN ({})", vec!["?"; self.ids.len()].join(",")));
            args.extend(self.ids.iter().map(|i| rusqlite::types::Value::from(*i)));
        }
        (sql, args)
    }
}

/// Why a reading is parked.
pub const PARKED_FRESH: &str = "fresh";
pub const PARKED_UNBOUND: &str = "unbound";

/// A reading to park: durable, acknowledged, waiting for its binding.
#[derive(Debug, Clone)]
pub struct NewParked {
    pub serial: String,
    pub ts_ns: i64,
    /// [`PARKED_FRESH`] (waiting for a binding copy current as of `ts_ns`) or
    /// [`PARKED_UNBOUND`] (no binding covers it yet).
    pub reason: &'static str,
    /// The reading, as `Reading::to_stored`.
    pub body: String,
    pub parked_ns: i64,
}

/// A parked reading read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    pub id: i64,
    pub ts_ns: i64,
    pub body: String,
    pub parked_ns: i64,
}

/// What one commit holds: points to deliver and readings to park.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub points: Vec<NewPoint>,
    pub parked: Vec<NewParked>,
}

/// A point to commit.
#[derive(Debug, Clone, Default)]
pub struct NewPoint {
    pub dest_id: i64,
    pub line: String,
    /// When the point was accepted (ns), for the oldest-age figure.
    pub enqueued_ns: i64,
    /// The stream's key (`QueueHandle::stream_key`; 0: none) and the point's time, for
    /// per-stream activity and gaps.
    pub stream_key: i64,
    pub ts_ns: i64,
}

/// One stream's activity, for the reporter and `status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Activity {
    pub stream_key: i64,
    pub stream_id: String,
    pub readings: u64,
    pub delivered: u64,
    pub last_reading_ns: Option<i64>,
    pub last_delivered_ns: Option<i64>,
    pub reported_readings: u64,
    pub reported_delivered: u64,
    pub reported_ns: Option<i64>,
    /// The open gap's start, if the stream is in a gap.
    pub open_gap_ns: Option<i64>,
}

/// A gap to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub id: i64,
    pub stream_id: String,
    pub started_ns: i64,
    pub ended_ns: Option<i64>,
    pub threshold_ns: i64,
}

/// A waiting point handed to a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    pub id: i64,
    pub line: String,
    /// The stream (`streams.id`, 0: none) and time of the point, for per-stream activity.
    pub stream_key: i64,
    pub ts_ns: i64,
}

/// What a delivered range held, as the sink read it: lets the store delete the range without
/// reading it again (see `Store::delete`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivered {
    pub points: u64,
    pub bytes: u64,
    /// (stream key, points, latest time) per stream.
    pub streams: Vec<(i64, u64, i64)>,
}

impl Delivered {
    pub fn of(rows: &[Leased]) -> Self {
        Delivered {
            points: rows.len() as u64,
            bytes: rows.iter().map(|r| r.line.len() as u64 + 1).sum(),
            streams: Self::streams_of(rows.iter().map(|r| (r.stream_key, r.ts_ns))),
        }
    }

    /// (stream key, points, latest time) per stream of (stream key, time) pairs; key 0 (no
    /// stream) is left out.
    fn streams_of(points: impl Iterator<Item = (i64, i64)>) -> Vec<(i64, u64, i64)> {
        let mut per: HashMap<i64, (u64, i64)> = HashMap::new();
        for (key, ts) in points.filter(|(k, _)| *k > 0) {
            let e = per.entry(key).or_insert((0, ts));
            e.0 += 1;
            e.1 = e.1.max(ts);
        }
        per.into_iter().map(|(k, (n, ts))| (k, n, ts)).collect()
    }
}

/// What is waiting, for status and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    pub points: u64,
    pub parked: u64,
    pub dead_letters: u64,
    pub bytes: u64,
    /// Bytes of parked readings (stored reading and serial) and of dead letters (line and
    /// detail): they count against `queue.max_bytes` with `bytes`.
    pub parked_bytes: u64,
    pub dead_letter_bytes: u64,
    pub oldest_enqueued_ns: Option<i64>,
    pub db_file_bytes: u64,
}

pub(crate) fn spawn(
    data_dir: &Path,
    sync: Synchronous,
    limits: Limits,
) -> Result<(mpsc::Sender<Command>, std::thread::JoinHandle<()>), QueueError> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(DB_FILE);
    let (conn, _) = open_or_recover(&path, sync, StartupCheck::default())?;
    let bytes = waiting_bytes(&conn)?;
    let kept = kept_bytes(&conn)?;
    let data_version = data_version(&conn)?;
    let waiting = count_waiting(&conn)?;
    let open_gaps = open_gap_streams(&conn)?;
    let (tx, rx) = mpsc::channel();
    let mut store = Store {
        conn,
        path,
        dir: data_dir.to_path_buf(),
        deferred: VecDeque::new(),
        limits,
        bytes,
        kept,
        evictions: Evictions::default(),
        waiting,
        buf: Vec::new(),
        open_gaps,
        data_version,
        last_maintenance: std::time::Instant::now(),
        full_logged: false,
    };
    // A cap may have been lowered since the last run.
    if let Err(e) = store.trim() {
        tracing::warn!(error = %e, "Could not delete what is over the queue's caps; the next commit tries again.");
    }
    let join = std::thread::Builder::new().name("queue-store".into()).spawn(move || store.run(rx))?;
    Ok((tx, join))
}

/// How the database is checked when the queue opens (see [`open_or_recover`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartupCheck {
    /// Longest the integrity check may run. A large backlog on slow storage takes longer than
    /// systemd waits for the start (`TimeoutStartSec=90` in the unit), so the check is cut short
    /// after this and the queue opens anyway: a damaged segment is still found when it is read.
    pub budget: std::time::Duration,
    /// Attempts at opening and checking the database when an attempt fails for a reason other
    /// than damage (locked by another process, an I/O error, out of memory or disk space).
    pub attempts: u32,
    /// Pause between those attempts.
    pub retry_pause: std::time::Duration,
}

impl Default for StartupCheck {
    fn default() -> Self {
        Self { budget: std::time::Duration::from_secs(30), attempts: 3, retry_pause: std::time::Duration::from_secs(1) }
    }
}

/// What the start-up check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    Passed,
    /// The budget ran out first; the database opened unchecked.
    CutShort,
    /// The database was damaged and moved to this path; a fresh one was started.
    MovedAside(PathBuf),
}

/// Virtual machine steps between two looks at the check's clock: a few microseconds each.
const CHECK_CLOCK_EVERY: i32 = 100;

/// Why an attempt at opening the database failed.
enum OpenFailure {
    /// Definitely damaged: `quick_check` reported a problem, or SQLite said corrupt or not a
    /// database.
    Damaged(String),
    /// Anything else (busy or locked, I/O, out of memory, full disk, cannot open): nothing
    /// says the file is damaged, so it is never moved aside for it.
    Other(QueueError),
}

impl From<rusqlite::Error> for OpenFailure {
    fn from(e: rusqlite::Error) -> Self {
        if is_corruption(&e) { Self::Damaged(e.to_string()) } else { Self::Other(e.into()) }
    }
}

impl From<QueueError> for OpenFailure {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Sqlite(e) => e.into(),
            e => Self::Other(e),
        }
    }
}

/// Opens the database after checking it. Only a database that is definitely damaged is moved
/// aside (with its WAL) and a fresh one started; any other failure is retried
/// (`check.attempts`) and then refused, leaving the file as it is: its points were
/// acknowledged, and a restart (systemd) tries again.
pub fn open_or_recover(
    path: &Path,
    sync: Synchronous,
    check: StartupCheck,
) -> Result<(Connection, Checked), QueueError> {
    let mut attempt = 1;
    let problem = loop {
        let e = match open_checked(path, sync, check.budget) {
            Ok(opened) => return Ok(opened),
            Err(OpenFailure::Damaged(problem)) => break problem,
            // Not transient (a newer schema, WAL refused): retrying cannot help.
            Err(OpenFailure::Other(e @ QueueError::Invalid(_))) => return Err(e),
            Err(OpenFailure::Other(e)) => e,
        };
        if attempt >= check.attempts {
            let e = match e {
                QueueError::Sqlite(e) => e.to_string(),
                e => e.to_string(),
            };
            return Err(QueueError::Invalid(format!(
                "{} could not be opened and checked ({attempt} attempts, last: {e}); it was left as it is. \
                 Another process may hold it (a second gateway on this data_dir, an operator command), or the \
                 storage failed",
                path.display()
            )));
        }
        tracing::warn!(
            database = %path.display(),
            attempt,
            error = %e,
            "Could not open and check the queue database; retrying, the file is left as it is."
        );
        attempt += 1;
        std::thread::sleep(check.retry_pause);
    };
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let aside = path.with_file_name(format!("{DB_FILE}.damaged-{stamp}"));
    tracing::error!(
        database = %path.display(),
        moved_to = %aside.display(),
        problem = %crate::model::loggable(&problem),
        "The queue database is damaged: moved aside and starting a fresh one. Points in the damaged file are not delivered; keep it for recovery."
    );
    std::fs::rename(path, &aside)?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let mut moved = aside.as_os_str().to_owned();
        moved.push(suffix);
        let _ = std::fs::rename(&side, &moved);
    }
    Ok((open(path, sync)?, Checked::MovedAside(aside)))
}

/// One attempt: the check first, before anything is written to the file, then the pragmas
/// and the schema.
fn open_checked(
    path: &Path,
    sync: Synchronous,
    budget: std::time::Duration,
) -> Result<(Connection, Checked), OpenFailure> {
    let mut conn = connect(path)?;
    let started = std::time::Instant::now();
    conn.progress_handler(CHECK_CLOCK_EVERY, Some(move || started.elapsed() >= budget))?;
    let report = conn.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0));
    conn.progress_handler(0, None::<fn() -> bool>)?;
    let checked = match report {
        Ok(ok) if ok == "ok" => Checked::Passed,
        Ok(report) => return Err(OpenFailure::Damaged(report)),
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted) => {
            tracing::warn!(
                database = %path.display(),
                budget_ms = budget.as_millis() as u64,
                "The start-up check of the queue database was cut short after its time budget; starting anyway (a damaged segment is still found when it is read)."
            );
            Checked::CutShort
        }
        Err(e) => return Err(e.into()),
    };
    Ok((configure(conn, sync)?, checked))
}

/// Adds points to their streams' activity and closes an open gap with the first reading
/// after it, in the caller's transaction (so activity is exactly what was accepted).
/// Counts the points' readings in the per-stream activity and closes the open gaps of their
/// streams (`open_gaps`: the streams with one). Returns the streams whose gap it closed; the
/// caller forgets them once the transaction is committed.
fn record_readings<'a>(
    tx: &rusqlite::Transaction<'_>,
    points: impl Iterator<Item = &'a NewPoint>,
    open_gaps: &HashSet<i64>,
) -> Result<Vec<i64>, QueueError> {
    let mut per: std::collections::HashMap<i64, (u64, i64, i64)> = std::collections::HashMap::new();
    for p in points.filter(|p| p.stream_key > 0) {
        let e = per.entry(p.stream_key).or_insert((0, p.ts_ns, p.ts_ns));
        e.0 += 1;
        e.1 = e.1.min(p.ts_ns);
        e.2 = e.2.max(p.ts_ns);
    }
    if per.is_empty() {
        return Ok(Vec::new());
    }
    let mut up = tx.prepare_cached(
        "INSERT INTO activity (stream_key, readings, last_reading_ns) VALUES (?1, ?2, ?3)
         ON CONFLICT (stream_key) DO UPDATE SET readings = readings + excluded.readings,
           last_reading_ns = max(coalesce(last_reading_ns, excluded.last_reading_ns), excluded.last_reading_ns)",
    )?;
    let mut close = tx.prepare_cached(
        "UPDATE gaps SET ended_ns = ?2 WHERE stream_key = ?1 AND ended_ns IS NULL AND started_ns <= ?2",
    )?;
    let mut closed = Vec::new();
    for (key, (n, min_ts, max_ts)) in per {
        up.execute(params![key, n as i64, max_ts])?;
        // Only streams with an open gap: a statement per stream and commit otherwise, which
        // at low rates cost as much as the inserts.
        if open_gaps.contains(&key) && close.execute(params![key, min_ts])? > 0 {
            closed.push(key);
        }
    }
    Ok(closed)
}

/// The id for the next point: above every id ever given, by any connection. `sqlite_sequence`
/// keeps the highest segment key ever inserted (a segment's key is its last id), in the same
/// transaction as the segments, so nothing else needs to remember it. Ids must never repeat: a
/// batch still on its way to InfluxDB is deleted by its id range once written, and that range
/// must then not hold a newer point, even after drop_oldest emptied the queue meanwhile.
fn first_free_id(tx: &rusqlite::Transaction<'_>) -> Result<i64, QueueError> {
    Ok(tx
        .prepare_cached("SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'segments'), 0) + 1")?
        .query_row([], |r| r.get(0))?)
}

/// Line bytes waiting, summed over the segments.
fn waiting_bytes(conn: &Connection) -> Result<u64, QueueError> {
    Ok(conn.query_row("SELECT coalesce(sum(bytes), 0) FROM segments", [], |r| r.get::<_, i64>(0))? as u64)
}

/// A parked reading's size: its stored reading and serial. (`octet_length` reads only the
/// record header, not the text.)
const PARKED_SIZE: &str = "octet_length(serial) + octet_length(body)";
/// A dead letter's size: its line and detail.
const DEAD_LETTER_SIZE: &str = "octet_length(line) + octet_length(detail)";

fn parked_size(p: &NewParked) -> u64 {
    (p.serial.len() + p.body.len()) as u64
}

fn dead_letter_size(line: &str, detail: &str) -> u64 {
    (line.len() + detail.len()) as u64
}

/// Bytes kept besides the waiting points: they count against `Limits::max_bytes` too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Kept {
    /// Parked readings, every reason.
    parked: u64,
    /// Of those, the ones parked `unbound` (capped by `Limits::max_parked_bytes`).
    unbound: u64,
    dead_letters: u64,
}

impl Kept {
    fn total(&self) -> u64 {
        self.parked.saturating_add(self.dead_letters)
    }
}

/// Bytes of parked readings and dead letters, summed over the tables.
fn kept_bytes(conn: &Connection) -> Result<Kept, QueueError> {
    let (parked, unbound) = conn.query_row(
        &format!(
            "SELECT coalesce(sum({PARKED_SIZE}), 0), coalesce(sum(CASE WHEN reason = ?1 THEN {PARKED_SIZE} END), 0)
             FROM parked"
        ),
        [PARKED_UNBOUND],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )?;
    let dead_letters =
        conn.query_row(&format!("SELECT coalesce(sum({DEAD_LETTER_SIZE}), 0) FROM dead_letters"), [], |r| {
            r.get::<_, i64>(0)
        })? as u64;
    Ok(Kept { parked, unbound, dead_letters })
}

/// What the caps made one transaction delete: (rows, bytes) of readings parked `unbound`
/// and of dead letters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Evicted {
    parked: (u64, u64),
    dead_letters: (u64, u64),
}

impl Evicted {
    fn add(&mut self, o: Evicted) {
        self.parked = (self.parked.0 + o.parked.0, self.parked.1 + o.parked.1);
        self.dead_letters = (self.dead_letters.0 + o.dead_letters.0, self.dead_letters.1 + o.dead_letters.1);
    }

    fn is_empty(&self) -> bool {
        self.parked.0 == 0 && self.dead_letters.0 == 0
    }
}

/// Deletes what is over the caps, oldest first, in the caller's transaction; `kept` is what
/// the transaction leaves before that.
fn evict_over_caps(tx: &rusqlite::Transaction<'_>, limits: &Limits, kept: Kept) -> Result<Evicted, QueueError> {
    let mut e = Evicted::default();
    if kept.unbound > limits.max_parked_bytes {
        // `+reason`: walk the table in id order and stop once enough is freed, rather than
        // sort every unbound reading by id through the reason index.
        let filter = format!("+reason = '{PARKED_UNBOUND}'");
        e.parked = evict_oldest(tx, "parked", &filter, PARKED_SIZE, kept.unbound - limits.max_parked_bytes)?;
    }
    if kept.dead_letters > limits.max_dead_letter_bytes {
        let over = kept.dead_letters - limits.max_dead_letter_bytes;
        e.dead_letters = evict_oldest(tx, "dead_letters", "1", DEAD_LETTER_SIZE, over)?;
    }
    Ok(e)
}

/// Deletes the rows of `table` matching `filter` with the lowest ids until at least `over`
/// bytes (by `size`) are freed. Returns (rows, bytes).
fn evict_oldest(
    tx: &rusqlite::Transaction<'_>,
    table: &str,
    filter: &str,
    size: &str,
    over: u64,
) -> Result<(u64, u64), QueueError> {
    let (mut rows, mut freed, mut last) = (0u64, 0u64, None);
    {
        let mut stmt = tx.prepare_cached(&format!("SELECT id, {size} FROM {table} WHERE {filter} ORDER BY id"))?;
        let mut found = stmt.query([])?;
        while freed < over {
            let Some(row) = found.next()? else { break };
            last = Some(row.get::<_, i64>(0)?);
            freed += row.get::<_, i64>(1)?.max(0) as u64;
            rows += 1;
        }
    }
    if let Some(last) = last {
        tx.prepare_cached(&format!("DELETE FROM {table} WHERE {filter} AND id <= ?1"))?.execute([last])?;
    }
    Ok((rows, freed))
}

/// How often deletions over the caps are logged at most: a flood of junk would otherwise
/// log an ERROR with every commit.
const EVICTIONS_LOGGED_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Deletions over the caps: the totals since start (metrics) and what is not logged yet.
#[derive(Debug, Default)]
struct Evictions {
    total: Evicted,
    unlogged: Evicted,
    logged_at: Option<std::time::Instant>,
}

impl Evictions {
    fn note(&mut self, e: Evicted, limits: &Limits) {
        if e.is_empty() {
            return;
        }
        self.total.add(e);
        self.unlogged.add(e);
        self.log_when_due(limits);
    }

    fn log_when_due(&mut self, limits: &Limits) {
        if !self.unlogged.is_empty() && self.logged_at.is_none_or(|t| t.elapsed() >= EVICTIONS_LOGGED_EVERY) {
            self.log(limits);
        }
    }

    /// Logs what is not logged yet, now.
    fn log(&mut self, limits: &Limits) {
        let Evicted { parked, dead_letters } = std::mem::take(&mut self.unlogged);
        if parked.0 > 0 {
            tracing::error!(
                readings = parked.0,
                bytes = parked.1,
                max_parked_bytes = limits.max_parked_bytes,
                "Readings parked unbound are over queue.max_parked_bytes: deleted the oldest (given up by policy; counted, logged at most once a minute)."
            );
        }
        if dead_letters.0 > 0 {
            tracing::error!(
                dead_letters = dead_letters.0,
                bytes = dead_letters.1,
                max_dead_letter_bytes = limits.max_dead_letter_bytes,
                "Dead letters are over queue.max_dead_letter_bytes: deleted the oldest (given up by policy; counted, logged at most once a minute)."
            );
        }
        self.logged_at = Some(std::time::Instant::now());
    }
}

/// A blob column, borrowed.
fn blob<'r>(row: &'r rusqlite::Row<'_>, i: usize) -> rusqlite::Result<&'r [u8]> {
    row.get_ref(i)?
        .as_blob()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, Box::new(e)))
}

/// Deletes the oldest waiting points, whatever their destination, until `over` bytes are
/// freed: whole segments, then the oldest points of the next one. Returns the bytes freed.
fn drop_oldest(
    tx: &rusqlite::Transaction<'_>,
    over: u64,
    report: &mut AppendReport,
    dropped_of: &mut HashMap<i64, u64>,
    buf: &mut Vec<u8>,
) -> Result<u64, QueueError> {
    let mut freed = 0u64;
    let mut whole = Vec::new();
    let mut partial = None;
    let span = |report: &mut AppendReport, first: i64, last: i64| {
        report.dropped_span = Some(report.dropped_span.map_or((first, last), |(a, _)| (a, last)));
    };
    {
        let mut stmt =
            tx.prepare_cached(&format!("SELECT dest_id, {SEGMENT_COLUMNS} FROM segments ORDER BY last_id"))?;
        let mut rows = stmt.query([])?;
        while freed < over {
            let Some(row) = rows.next()? else { break };
            let dest: i64 = row.get(0)?;
            let seg = SegmentRow::read(row, 1)?;
            let body = blob(row, 6)?;
            if seg.bytes > over - freed
                && let Ok(mut records) = segment::decode(body, seg.first_id, seg.enqueued_ns)
                && !records.is_empty()
            {
                // Only its oldest points are needed.
                let mut n = 0;
                while freed < over && n < records.len() {
                    freed += records[n].line.len() as u64 + 1;
                    n += 1;
                }
                span(report, records[0].enqueued_ns, records[n - 1].enqueued_ns);
                report.dropped += n as u64;
                *dropped_of.entry(dest).or_insert(0) += n as u64;
                partial = Some((seg, records.split_off(n)));
                break;
            }
            // Whole (a damaged one too: it was next to go, and cannot be read anyway); only
            // the enqueue times are read, for the log, not the lines.
            let (first, last) = segment::enqueue_span(body, seg.first_id, seg.enqueued_ns)
                .ok()
                .flatten()
                .unwrap_or((seg.enqueued_ns, seg.enqueued_ns));
            span(report, first, last);
            freed += seg.bytes;
            report.dropped += seg.points;
            *dropped_of.entry(dest).or_insert(0) += seg.points;
            whole.push(seg.last_id);
        }
    }
    for key in whole {
        tx.prepare_cached("DELETE FROM segments WHERE last_id = ?1")?.execute([key])?;
    }
    if let Some((seg, keep)) = partial {
        rewrite(tx, seg.last_id, seg.first_id, &keep, buf)?;
    }
    Ok(freed)
}

/// Streams with an open gap.
fn open_gap_streams(conn: &Connection) -> Result<HashSet<i64>, QueueError> {
    let mut stmt = conn.prepare_cached("SELECT DISTINCT stream_key FROM gaps WHERE ended_ns IS NULL")?;
    let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase))
}

fn data_version(conn: &Connection) -> Result<i64, QueueError> {
    Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}

/// Bytes free for the queue: free space of the filesystem plus the database's free pages.
fn free_bytes(conn: &Connection, dir: &Path) -> Option<u64> {
    let fs = rustix::fs::statvfs(dir).ok()?;
    let fs_free = fs.f_bavail.saturating_mul(fs.f_frsize);
    // Cached: this runs on every commit, and parsing the pragmas again each time showed in
    // profiles at low rates.
    let pages: i64 = conn.prepare_cached("PRAGMA freelist_count").ok()?.query_row([], |r| r.get(0)).ok()?;
    let page_size: i64 = conn.prepare_cached("PRAGMA page_size").ok()?.query_row([], |r| r.get(0)).ok()?;
    Some(fs_free.saturating_add((pages.max(0) * page_size.max(0)) as u64))
}

/// Opens the database with the queue's pragmas and schema.
pub fn open(path: &Path, sync: Synchronous) -> Result<Connection, QueueError> {
    configure(connect(path)?, sync)
}

fn connect(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// Sets the queue's pragmas and brings the schema up to date.
fn configure(conn: Connection, sync: Synchronous) -> Result<Connection, QueueError> {
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(QueueError::Invalid(format!("could not enable WAL (journal_mode={mode})")));
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
    // MAINTENANCE_EVERY) copies each of them less often.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(QueueError::Invalid(format!(
            "database schema {version} is newer than this gateway understands ({SCHEMA_VERSION})"
        )));
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

const INSERT_SEGMENT: &str = "INSERT INTO segments (last_id, first_id, dest_id, points, bytes, enqueued_ns, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// Inserts `records` (ids rising, at least one) as one segment of `dest_id`.
fn put_segment(
    tx: &rusqlite::Transaction<'_>,
    dest_id: i64,
    records: &[Record],
    buf: &mut Vec<u8>,
) -> Result<(), QueueError> {
    let (first, last) = (records[0].id, records[records.len() - 1].id);
    let enqueued_ns = segment::encode(records, first, buf);
    let bytes: usize = records.iter().map(|r| r.line.len() + 1).sum();
    tx.prepare_cached(INSERT_SEGMENT)?.execute(params![
        last,
        first,
        dest_id,
        records.len() as i64,
        bytes as i64,
        enqueued_ns,
        &buf[..]
    ])?;
    Ok(())
}

/// Replaces a segment's points with `keep` (a subset, ids unchanged), deleting it if none
/// is left. Its id bounds stay: they still enclose every id it holds.
fn rewrite(
    tx: &rusqlite::Transaction<'_>,
    last_id: i64,
    first_id: i64,
    keep: &[Record],
    buf: &mut Vec<u8>,
) -> Result<(), QueueError> {
    if keep.is_empty() {
        tx.prepare_cached("DELETE FROM segments WHERE last_id = ?1")?.execute([last_id])?;
        return Ok(());
    }
    let enqueued_ns = segment::encode(keep, first_id, buf);
    let bytes: usize = keep.iter().map(|r| r.line.len() + 1).sum();
    tx.prepare_cached("UPDATE segments SET points = ?2, bytes = ?3, enqueued_ns = ?4, body = ?5 WHERE last_id = ?1")?
        .execute(params![last_id, keep.len() as i64, bytes as i64, enqueued_ns, &buf[..]])?;
    Ok(())
}

/// Queues `points` as segments with ids from `next_id` on: per destination in their order,
/// at most `max_points` points and `segment::MAX_BYTES` line bytes each.
fn insert_points<'a>(
    tx: &rusqlite::Transaction<'_>,
    next_id: &mut i64,
    points: impl Iterator<Item = &'a NewPoint>,
    max_points: usize,
    buf: &mut Vec<u8>,
) -> Result<(), QueueError> {
    let max_points = max_points.clamp(1, segment::MAX_POINTS);
    let mut groups: Vec<(i64, Vec<&NewPoint>)> = Vec::new();
    for p in points {
        match groups.iter_mut().find(|(d, _)| *d == p.dest_id) {
            Some((_, v)) => v.push(p),
            None => groups.push((p.dest_id, vec![p])),
        }
    }
    let mut stmt = tx.prepare_cached(INSERT_SEGMENT)?;
    for (dest, pts) in groups {
        let mut rest = &pts[..];
        while !rest.is_empty() {
            let (mut n, mut bytes) = (0, 0);
            while n < rest.len() && segment::takes(n, bytes, rest[n].line.len(), max_points) {
                bytes += rest[n].line.len() + 1;
                n += 1;
            }
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let enqueued_ns = chunk.iter().map(|p| p.enqueued_ns).min().unwrap_or(0);
            let first = *next_id;
            {
                let mut e = Encoder::new(buf, first, enqueued_ns);
                for p in chunk {
                    e.push(*next_id, p.stream_key.max(0), p.ts_ns, p.enqueued_ns, &p.line);
                    *next_id += 1;
                }
            }
            stmt.execute(params![*next_id - 1, first, dest, n as i64, bytes as i64, enqueued_ns, &buf[..]])?;
        }
    }
    Ok(())
}

/// Moves a segment that cannot be read to the dead letters (reason `damaged`, its raw bytes
/// as the line) so the rest of its destination is still delivered. Returns the dead letter's
/// size.
fn quarantine(
    tx: &rusqlite::Transaction<'_>,
    dest_id: i64,
    seg: &SegmentRow,
    body: &[u8],
    why: &segment::Damaged,
) -> Result<u64, QueueError> {
    tracing::error!(
        first_id = seg.first_id,
        last_id = seg.last_id,
        points = seg.points,
        problem = %why,
        "A queue segment could not be read (disk damage?): moved to the dead letters as `damaged`; the rest of the queue is delivered."
    );
    let line = String::from_utf8_lossy(body);
    let detail = format!(
        "queue segment of points {}..={} ({} points) could not be read: {why}; the line is its raw content",
        seg.first_id, seg.last_id, seg.points
    );
    tx.prepare_cached(
        "INSERT INTO dead_letters (dest_id, line, reason, status, detail, enqueued_ns, failed_ns)
         VALUES (?1, ?2, 'damaged', NULL, ?3, ?4, ?5)",
    )?
    .execute(params![dest_id, line, detail, seg.enqueued_ns, crate::now_ns()])?;
    tx.prepare_cached("DELETE FROM segments WHERE last_id = ?1")?.execute([seg.last_id])?;
    Ok(dead_letter_size(&line, &detail))
}

/// A segment's figures (its body apart).
#[derive(Debug, Clone, Copy)]
struct SegmentRow {
    last_id: i64,
    first_id: i64,
    points: u64,
    bytes: u64,
    enqueued_ns: i64,
}

impl SegmentRow {
    /// From columns `last_id, first_id, points, bytes, enqueued_ns` at `at..`.
    fn read(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Self> {
        Ok(Self {
            last_id: row.get(at)?,
            first_id: row.get(at + 1)?,
            points: row.get::<_, i64>(at + 2)? as u64,
            bytes: row.get::<_, i64>(at + 3)? as u64,
            enqueued_ns: row.get(at + 4)?,
        })
    }
}

const SEGMENT_COLUMNS: &str = "last_id, first_id, points, bytes, enqueued_ns, body";

/// Opens an existing database read-only, for operator commands that run beside the daemon.
pub fn open_read_only(data_dir: &Path) -> Result<Connection, QueueError> {
    let path = data_dir.join(DB_FILE);
    if !path.exists() {
        return Err(QueueError::Invalid(format!("{} does not exist", path.display())));
    }
    let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    require_current_schema(&conn)?;
    Ok(conn)
}

/// Operator commands read the current schema only; the daemon upgrades an older one when it
/// starts (a package upgrade restarts it).
fn require_current_schema(conn: &Connection) -> Result<(), QueueError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version != SCHEMA_VERSION {
        return Err(QueueError::Invalid(format!(
            "the queue database has schema {version}, this gateway reads schema {SCHEMA_VERSION}: start the daemon once \
             (systemctl restart heartguard-gateway) and it upgrades the database"
        )));
    }
    Ok(())
}

/// Every waiting line of every destination, in queue order (benchmarks and tests compare
/// what is queued with what was sent).
pub fn waiting_lines(conn: &Connection) -> Result<Vec<String>, QueueError> {
    let mut stmt = conn.prepare(&format!("SELECT {SEGMENT_COLUMNS} FROM segments ORDER BY last_id"))?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let seg = SegmentRow::read(row, 0)?;
        let records = segment::decode(blob(row, 5)?, seg.first_id, seg.enqueued_ns)
            .map_err(|e| QueueError::Invalid(e.to_string()))?;
        out.extend(records.into_iter().map(|r| r.line));
    }
    Ok(out)
}

/// How often the store checkpoints its WAL and re-reads figures other processes changed.
const MAINTENANCE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

struct Store {
    conn: Connection,
    path: PathBuf,
    dir: PathBuf,
    /// Commands read while gathering a group commit, handled right after it.
    deferred: VecDeque<Command>,
    limits: Limits,
    /// Bytes of waiting points, kept current on every insert and delete.
    bytes: u64,
    /// Bytes of parked readings and dead letters, kept current likewise.
    kept: Kept,
    /// Parked readings and dead letters deleted over their caps.
    evictions: Evictions,
    /// Waiting points per destination id, kept current likewise: metrics read it on every
    /// scrape, and counting a backlog of a million points there would stall the queue.
    waiting: HashMap<i64, u64>,
    /// Streams with an open gap: only their readings need the gap-closing update.
    open_gaps: HashSet<i64>,
    /// Reused for encoding segments.
    buf: Vec<u8>,
    /// `PRAGMA data_version` at the last look: it changes when *another* connection (an
    /// operator command) commits, and then `bytes` is recomputed.
    data_version: i64,
    last_maintenance: std::time::Instant,
    /// Whether "queue full" was logged since the queue last had room (log once per episode).
    full_logged: bool,
}

impl Store {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        loop {
            if self.last_maintenance.elapsed() >= MAINTENANCE_EVERY {
                self.maintain();
            }
            let cmd = match self.deferred.pop_front() {
                Some(c) => c,
                None => match rx.recv_timeout(MAINTENANCE_EVERY) {
                    Ok(c) => c,
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    // Every handle dropped: close as on a clean stop.
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        self.evictions.log(&self.limits);
                        let _ = self.checkpoint();
                        return;
                    }
                },
            };
            match cmd {
                Command::Append(points, reply) => self.group_commit(points, reply, &rx),
                Command::Lease { dest_id, after_id, max_lines, max_bytes, reply } => {
                    let _ = reply.send(self.lease(dest_id, after_id, max_lines, max_bytes));
                }
                Command::Delete { dest_id, first, last, seen, reply } => {
                    let _ = reply.send(self.delete(dest_id, first, last, seen));
                }
                Command::DeadLetter { dest_id, ids, reason, status, detail, reply } => {
                    let _ = reply.send(self.dead_letter(dest_id, &ids, reason, status, &detail));
                }
                Command::ScanParked { reason, max_ts, after_id, limit, reply } => {
                    let _ = reply.send(self.scan_parked(reason, max_ts, after_id, limit));
                }
                Command::Promote { points, remove, repark, reply } => {
                    let _ = reply.send(self.promote(&points, &remove, &repark));
                }
                Command::ExpireParked { cutoff_ns, reply } => {
                    let _ = reply.send(self.expire_parked(cutoff_ns));
                }
                Command::StreamKey(stream_id, reply) => {
                    let _ = reply.send(self.stream_key(&stream_id));
                }
                Command::Activity(reply) => {
                    let _ = reply.send(activity(&self.conn));
                }
                Command::OpenGap { stream_key, started_ns, threshold_ns, reply } => {
                    let _ = reply.send(self.open_gap(stream_key, started_ns, threshold_ns));
                }
                Command::UnreportedGaps(reply) => {
                    let _ = reply.send(unreported_gaps(&self.conn));
                }
                Command::MarkReported { activity, gaps, reported_ns, reply } => {
                    let _ = reply.send(self.mark_reported(&activity, &gaps, reported_ns));
                }
                Command::DestinationId(d, reply) => {
                    let _ = reply.send(self.destination_id(&d));
                }
                Command::Destinations(reply) => {
                    let _ = reply.send(destinations(&self.conn));
                }
                Command::ReplaceBindings { bindings, source, version, reply } => {
                    let _ = reply.send(self.replace_bindings(&bindings, &source, &version));
                }
                Command::LoadBindings(reply) => {
                    let _ = reply.send(load_bindings(&self.conn));
                }
                Command::Stats(reply) => {
                    let _ = reply.send(stats(&self.conn, &self.path));
                }
                Command::Gauges(reply) => {
                    // An operator command may have changed the queue since the last look.
                    self.recount_if_changed();
                    let running = Running {
                        bytes: self.bytes,
                        waiting: &self.waiting,
                        parked_bytes: self.kept.parked,
                        unbound_bytes: self.kept.unbound,
                        dead_letter_bytes: self.kept.dead_letters,
                        evicted: (self.evictions.total.parked.0, self.evictions.total.dead_letters.0),
                    };
                    let _ = reply.send(gauges(&self.conn, &self.path, Some(running)));
                }
                Command::Ping(reply) => {
                    let _ = reply.send(Ok(()));
                }
                Command::Close(reply) => {
                    self.evictions.log(&self.limits);
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
        first: std::sync::Arc<Batch>,
        reply: super::Reply<AppendReport>,
        rx: &mpsc::Receiver<Command>,
    ) {
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
        let result = self.insert_all(&batches);
        for (i, (_, reply)) in batches.into_iter().enumerate() {
            // The first caller gets the report (it logs what was dropped); all get the outcome.
            let r = match &result {
                Ok(rep) if i == 0 => Ok(rep.clone()),
                Ok(_) => Ok(AppendReport::default()),
                Err(QueueError::Full(m)) => Err(QueueError::Full(m.clone())),
                Err(e) => Err(QueueError::Invalid(e.to_string())),
            };
            let _ = reply.send(r);
        }
    }

    fn insert_all(
        &mut self,
        batches: &[(std::sync::Arc<Batch>, super::Reply<AppendReport>)],
    ) -> Result<AppendReport, QueueError> {
        let new_bytes: u64 = batches.iter().flat_map(|(b, _)| b.points.iter()).map(|p| p.line.len() as u64 + 1).sum();
        let (mut new_parked, mut new_unbound) = (0u64, 0u64);
        for p in batches.iter().flat_map(|(b, _)| b.parked.iter()) {
            new_parked += parked_size(p);
            if p.reason == PARKED_UNBOUND {
                new_unbound += parked_size(p);
            }
        }
        if self.limits.min_free_bytes > 0
            && let Some(free) = free_bytes(&self.conn, &self.dir)
            && free < self.limits.min_free_bytes.saturating_add(new_bytes + new_parked)
        {
            return Err(self.full(format!(
                "less than queue.min_free_bytes ({}) free on the data directory's filesystem ({free} free)",
                self.limits.min_free_bytes
            )));
        }
        // What parked readings and dead letters take once this commits: readings parked
        // `unbound` over their cap are deleted in this same transaction, so they take their
        // cap at most. Waiting points get the rest of max_bytes.
        let unbound = self.kept.unbound + new_unbound;
        let kept = Kept { parked: self.kept.parked + new_parked, unbound, dead_letters: self.kept.dead_letters };
        let capped = kept.total() - unbound + unbound.min(self.limits.max_parked_bytes);
        let room = self.limits.max_bytes.saturating_sub(capped);
        let over = (self.bytes + new_bytes).saturating_sub(room);
        // An empty queue always takes the commit, even one larger than the limit: refusing it
        // would wait for room that can never come.
        if over > 0 && self.limits.policy == FullPolicy::Backpressure && self.bytes > 0 {
            return Err(self.full(format!(
                "queue.max_bytes ({}) reached: {} bytes of waiting points, {} of parked readings, {} of dead letters",
                self.limits.max_bytes, self.bytes, self.kept.parked, self.kept.dead_letters
            )));
        }
        // drop_oldest with a commit larger than the whole room: its own oldest points go too,
        // so the queue never holds more than the limit.
        let mut skip_new = 0usize;
        let mut report = AppendReport::default();
        let mut new_bytes = new_bytes;
        if self.limits.policy == FullPolicy::DropOldest && new_bytes > room {
            for p in batches.iter().flat_map(|(b, _)| b.points.iter()) {
                if new_bytes <= room {
                    break;
                }
                new_bytes -= p.line.len() as u64 + 1;
                skip_new += 1;
                report.dropped += 1;
                report.dropped_bytes += p.line.len() as u64 + 1;
                report.dropped_span =
                    Some(report.dropped_span.map_or((p.enqueued_ns, p.enqueued_ns), |(a, _)| (a, p.enqueued_ns)));
            }
        }
        let skipped_bytes = report.dropped_bytes;
        let over = (self.bytes + new_bytes).saturating_sub(room);
        let mut dropped_of: HashMap<i64, u64> = HashMap::new();
        let tx = self.conn.transaction()?;
        if over > 0 {
            // Oldest first, whatever the destination: the newest readings matter most.
            let freed = drop_oldest(&tx, over, &mut report, &mut dropped_of, &mut self.buf)?;
            report.dropped_bytes += freed;
        }
        let mut next_id = first_free_id(&tx)?;
        insert_points(
            &tx,
            &mut next_id,
            batches.iter().flat_map(|(b, _)| b.points.iter()).skip(skip_new),
            self.limits.segment_points,
            &mut self.buf,
        )?;
        {
            let mut park = tx.prepare_cached(
                "INSERT INTO parked (serial, ts_ns, reason, body, parked_ns) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for p in batches.iter().flat_map(|(b, _)| b.parked.iter()) {
                park.execute(params![p.serial, p.ts_ns, p.reason, p.body, p.parked_ns])?;
            }
        }
        let evicted = evict_over_caps(&tx, &self.limits, kept)?;
        let closed = record_readings(&tx, batches.iter().flat_map(|(b, _)| b.points.iter()), &self.open_gaps)?;
        tx.commit()?;
        self.forget_gaps(closed);
        self.bytes = (self.bytes + new_bytes).saturating_sub(report.dropped_bytes - skipped_bytes);
        self.kept_changed(kept, evicted);
        for (dest, n) in dropped_of {
            self.count(dest, -(n as i64));
        }
        self.count_points(batches.iter().flat_map(|(b, _)| b.points.iter()).skip(skip_new));
        self.full_logged = false;
        Ok(report)
    }

    /// Takes the bytes a committed transaction left parked and in the dead letters (`kept`,
    /// before evictions) and what the caps made it delete.
    fn kept_changed(&mut self, kept: Kept, evicted: Evicted) {
        self.kept = Kept {
            parked: kept.parked.saturating_sub(evicted.parked.1),
            unbound: kept.unbound.saturating_sub(evicted.parked.1),
            dead_letters: kept.dead_letters.saturating_sub(evicted.dead_letters.1),
        };
        self.evictions.note(evicted, &self.limits);
    }

    /// Deletes what is over the caps, in a transaction of its own.
    fn trim(&mut self) -> Result<(), QueueError> {
        let tx = self.conn.transaction()?;
        let evicted = evict_over_caps(&tx, &self.limits, self.kept)?;
        tx.commit()?;
        self.kept_changed(self.kept, evicted);
        Ok(())
    }

    /// Forgets the open gaps of `closed` streams, once their closing is committed; a stream
    /// with one more open gap (opened twice before a reading) stays.
    fn forget_gaps(&mut self, closed: Vec<i64>) {
        if !closed.is_empty() {
            self.open_gaps = open_gap_streams(&self.conn).unwrap_or_else(|_| {
                let mut all = std::mem::take(&mut self.open_gaps);
                all.extend(closed);
                all
            });
        }
    }

    /// Adds `delta` to the waiting count of `dest_id`.
    fn count(&mut self, dest_id: i64, delta: i64) {
        let n = self.waiting.entry(dest_id).or_insert(0);
        *n = n.saturating_add_signed(delta);
    }

    fn count_points<'a>(&mut self, points: impl Iterator<Item = &'a NewPoint>) {
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

    fn full(&mut self, why: String) -> QueueError {
        if !self.full_logged {
            tracing::warn!(reason = %why, "Queue full: refusing new readings until there is room (sources hold them).");
            self.full_logged = true;
        }
        QueueError::Full(why)
    }

    /// Deletes points `first..=last` of a destination once delivered, and counts them as
    /// delivered. Segments wholly inside the range go as they are; one the range ends inside
    /// (a lease limit smaller than a segment) keeps its other points.
    fn delete(&mut self, dest_id: i64, first: i64, last: i64, seen: Option<Delivered>) -> Result<u64, QueueError> {
        let tx = self.conn.transaction()?;
        let mut whole: Vec<SegmentRow> = Vec::new();
        // Points leaving partly deleted segments; all leaving points when `seen` is not theirs.
        let mut gone: Vec<Record> = Vec::new();
        let mut partial: Vec<(SegmentRow, Vec<Record>)> = Vec::new();
        let mut damaged: Vec<(SegmentRow, Vec<u8>, segment::Damaged)> = Vec::new();
        {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {SEGMENT_COLUMNS} FROM segments WHERE dest_id = ?1 AND last_id >= ?2 ORDER BY last_id"
            ))?;
            let mut rows = stmt.query(params![dest_id, first])?;
            while let Some(row) = rows.next()? {
                let seg = SegmentRow::read(row, 0)?;
                if seg.first_id > last {
                    break;
                }
                if seg.first_id >= first && seg.last_id <= last {
                    whole.push(seg);
                    continue;
                }
                let body = blob(row, 5)?;
                match segment::decode(body, seg.first_id, seg.enqueued_ns) {
                    Ok(records) => {
                        let (out, keep): (Vec<Record>, Vec<Record>) =
                            records.into_iter().partition(|r| (first..=last).contains(&r.id));
                        gone.extend(out);
                        partial.push((seg, keep));
                    }
                    Err(why) => damaged.push((seg, body.to_vec(), why)),
                }
            }
        }
        let points = whole.iter().map(|s| s.points).sum::<u64>() + gone.len() as u64;
        let bytes =
            whole.iter().map(|s| s.bytes).sum::<u64>() + gone.iter().map(|r| r.line.len() as u64 + 1).sum::<u64>();
        // What the sink read is still the range's content unless points left it since (dropped
        // to make room, dead-lettered): then the counts differ, and the whole segments are
        // read for their streams.
        let streams = match seen {
            Some(d) if d.points == points => d.streams,
            _ => {
                let mut read =
                    tx.prepare_cached("SELECT first_id, enqueued_ns, body FROM segments WHERE last_id = ?1")?;
                for seg in &whole {
                    let mut rows = read.query([seg.last_id])?;
                    if let Some(row) = rows.next()?
                        && let Ok(records) = segment::decode(blob(row, 2)?, row.get(0)?, row.get(1)?)
                    {
                        gone.extend(records);
                    }
                }
                Delivered::streams_of(gone.iter().map(|r| (r.stream_key, r.ts_ns)))
            }
        };
        for seg in &whole {
            tx.prepare_cached("DELETE FROM segments WHERE last_id = ?1")?.execute([seg.last_id])?;
        }
        for (seg, keep) in &partial {
            rewrite(&tx, seg.last_id, seg.first_id, keep, &mut self.buf)?;
        }
        let mut kept = self.kept;
        for (seg, body, why) in &damaged {
            kept.dead_letters += quarantine(&tx, dest_id, seg, body, why)?;
        }
        let evicted = evict_over_caps(&tx, &self.limits, kept)?;
        {
            let mut up = tx.prepare_cached(
                "INSERT INTO activity (stream_key, delivered, last_delivered_ns) VALUES (?1, ?2, ?3)
                 ON CONFLICT (stream_key) DO UPDATE SET delivered = delivered + excluded.delivered,
                   last_delivered_ns = max(coalesce(last_delivered_ns, excluded.last_delivered_ns), excluded.last_delivered_ns)",
            )?;
            for (key, n, ts) in &streams {
                up.execute(params![key, *n as i64, ts])?;
            }
        }
        tx.commit()?;
        self.kept_changed(kept, evicted);
        let (lost_points, lost_bytes) =
            damaged.iter().fold((0, 0), |(p, b), (seg, ..)| (p + seg.points, b + seg.bytes));
        self.bytes = self.bytes.saturating_sub(bytes + lost_bytes);
        self.count(dest_id, -((points + lost_points) as i64));
        Ok(points)
    }

    fn dead_letter(
        &mut self,
        dest_id: i64,
        ids: &[i64],
        reason: &str,
        status: Option<u16>,
        detail: &str,
    ) -> Result<u64, QueueError> {
        let now = crate::now_ns();
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let tx = self.conn.transaction()?;
        let (mut moved, mut bytes) = (0u64, 0u64);
        // Points and bytes of unreadable segments moved to the dead letters whole.
        let mut lost = (0u64, 0u64);
        let mut kept = self.kept;
        {
            let mut find = tx.prepare_cached(&format!(
                "SELECT {SEGMENT_COLUMNS} FROM segments WHERE dest_id = ?1 AND last_id >= ?2 ORDER BY last_id LIMIT 1"
            ))?;
            let mut ins = tx.prepare_cached(
                "INSERT INTO dead_letters (dest_id, line, reason, status, detail, enqueued_ns, failed_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut rest = &ids[..];
            while let Some(&id) = rest.first() {
                let Some((seg, body)) = find
                    .query_row(params![dest_id, id], |row| Ok((SegmentRow::read(row, 0)?, blob(row, 5)?.to_vec())))
                    .optional()?
                else {
                    break;
                };
                // Every id up to this segment's last is in it, or in no segment (gone already).
                let n = rest.iter().position(|&i| i > seg.last_id).unwrap_or(rest.len());
                let (wanted, tail) = rest.split_at(n);
                rest = tail;
                // Unreadable: to the dead letters whole, now. Left in place, the sink's delete of
                // its batch would take it as delivered, refused points and all.
                let records = match segment::decode(&body, seg.first_id, seg.enqueued_ns) {
                    Ok(records) => records,
                    Err(why) => {
                        kept.dead_letters += quarantine(&tx, dest_id, &seg, &body, &why)?;
                        lost.0 += seg.points;
                        lost.1 += seg.bytes;
                        continue;
                    }
                };
                let (out, keep): (Vec<Record>, Vec<Record>) =
                    records.into_iter().partition(|r| wanted.binary_search(&r.id).is_ok());
                if out.is_empty() {
                    continue;
                }
                for r in &out {
                    ins.execute(params![dest_id, r.line, reason, status, detail, r.enqueued_ns, now])?;
                    bytes += r.line.len() as u64 + 1;
                    kept.dead_letters += dead_letter_size(&r.line, detail);
                }
                moved += out.len() as u64;
                rewrite(&tx, seg.last_id, seg.first_id, &keep, &mut self.buf)?;
            }
        }
        let evicted = evict_over_caps(&tx, &self.limits, kept)?;
        tx.commit()?;
        self.kept_changed(kept, evicted);
        self.bytes = self.bytes.saturating_sub(bytes + lost.1);
        self.count(dest_id, -((moved + lost.0) as i64));
        Ok(moved)
    }

    fn stream_key(&mut self, stream_id: &str) -> Result<i64, QueueError> {
        self.conn
            .prepare_cached("INSERT INTO streams (stream_id) VALUES (?1) ON CONFLICT DO NOTHING")?
            .execute([stream_id])?;
        Ok(self
            .conn
            .prepare_cached("SELECT id FROM streams WHERE stream_id = ?1")?
            .query_row([stream_id], |r| r.get(0))?)
    }

    /// Opens a gap for a stream that has none open; returns whether one was opened.
    fn open_gap(&mut self, stream_key: i64, started_ns: i64, threshold_ns: i64) -> Result<bool, QueueError> {
        let n = self
            .conn
            .prepare_cached(
                "INSERT INTO gaps (stream_key, started_ns, threshold_ns)
             SELECT ?1, ?2, ?3 WHERE NOT EXISTS (SELECT 1 FROM gaps WHERE stream_key = ?1 AND ended_ns IS NULL)
               AND NOT EXISTS (SELECT 1 FROM gaps WHERE stream_key = ?1 AND started_ns = ?2)",
            )?
            .execute(params![stream_key, started_ns, threshold_ns])?;
        if n > 0 {
            self.open_gaps.insert(stream_key);
        }
        Ok(n > 0)
    }

    /// Records what the reporter has sent: activity totals as of the snapshot and the gaps
    /// in the state they were sent in.
    fn mark_reported(
        &mut self,
        activity: &[(i64, u64, u64)],
        gaps: &[(i64, bool)],
        reported_ns: i64,
    ) -> Result<(), QueueError> {
        let tx = self.conn.transaction()?;
        {
            let mut a = tx.prepare_cached(
                "UPDATE activity SET reported_readings = ?2, reported_delivered = ?3, reported_ns = ?4 WHERE stream_key = ?1",
            )?;
            for (key, readings, delivered) in activity {
                a.execute(params![key, *readings as i64, *delivered as i64, reported_ns])?;
            }
            let mut g = tx.prepare_cached("UPDATE gaps SET reported = max(reported, ?2) WHERE id = ?1")?;
            for (id, closed) in gaps {
                g.execute(params![id, if *closed { 2 } else { 1 }])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn scan_parked(
        &mut self,
        reason: &str,
        max_ts: i64,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<Parked>, QueueError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, ts_ns, body, parked_ns FROM parked WHERE reason = ?1 AND ts_ns <= ?2 AND id > ?3 ORDER BY id LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![reason, max_ts, after_id, limit as i64], |r| {
            Ok(Parked { id: r.get(0)?, ts_ns: r.get(1)?, body: r.get(2)?, parked_ns: r.get(3)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Queues the points of resolved parked readings and removes those readings, atomically.
    fn promote(
        &mut self,
        points: &[NewPoint],
        remove: &[i64],
        repark: &[(i64, &'static str)],
    ) -> Result<(), QueueError> {
        let tx = self.conn.transaction()?;
        let mut next_id = first_free_id(&tx)?;
        insert_points(&tx, &mut next_id, points.iter(), self.limits.segment_points, &mut self.buf)?;
        let mut kept = self.kept;
        {
            let mut del =
                tx.prepare_cached(&format!("DELETE FROM parked WHERE id = ?1 RETURNING reason, {PARKED_SIZE}"))?;
            for id in remove {
                if let Some((reason, size)) =
                    del.query_row([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))).optional()?
                {
                    kept.parked = kept.parked.saturating_sub(size);
                    if reason == PARKED_UNBOUND {
                        kept.unbound = kept.unbound.saturating_sub(size);
                    }
                }
            }
            let mut was = tx.prepare_cached(&format!("SELECT reason, {PARKED_SIZE} FROM parked WHERE id = ?1"))?;
            let mut upd = tx.prepare_cached("UPDATE parked SET reason = ?2 WHERE id = ?1")?;
            for (id, reason) in repark {
                let Some((before, size)) =
                    was.query_row([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))).optional()?
                else {
                    continue;
                };
                upd.execute(params![id, reason])?;
                match (before == PARKED_UNBOUND, *reason == PARKED_UNBOUND) {
                    (false, true) => kept.unbound += size,
                    (true, false) => kept.unbound = kept.unbound.saturating_sub(size),
                    _ => {}
                }
            }
        }
        let evicted = evict_over_caps(&tx, &self.limits, kept)?;
        let closed = record_readings(&tx, points.iter(), &self.open_gaps)?;
        tx.commit()?;
        self.forget_gaps(closed);
        self.kept_changed(kept, evicted);
        self.bytes += points.iter().map(|p| p.line.len() as u64 + 1).sum::<u64>();
        self.count_points(points.iter());
        Ok(())
    }

    /// Moves readings parked before `cutoff_ns` to the dead letters (reason `unbound`).
    fn expire_parked(&mut self, cutoff_ns: i64) -> Result<u64, QueueError> {
        let now = crate::now_ns();
        let tx = self.conn.transaction()?;
        let (expiring, gone, gone_unbound): (i64, i64, i64) = tx.query_row(
            &format!(
                "SELECT count(*), coalesce(sum({PARKED_SIZE}), 0),
                        coalesce(sum(CASE WHEN reason = ?2 THEN {PARKED_SIZE} END), 0)
                 FROM parked WHERE parked_ns < ?1"
            ),
            params![cutoff_ns, PARKED_UNBOUND],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        if expiring == 0 {
            return Ok(0);
        }
        // New dead letters get ids above every existing one.
        let after: i64 = tx.query_row("SELECT coalesce(max(id), 0) FROM dead_letters", [], |r| r.get(0))?;
        tx.execute(
            "INSERT INTO dead_letters (dest_id, line, reason, status, detail, enqueued_ns, failed_ns)
             SELECT NULL, body, 'unbound', NULL, 'device ' || serial || ': no binding covered the reading within gateway max_park_age_ms', parked_ns, ?2
             FROM parked WHERE parked_ns < ?1 ORDER BY id",
            params![cutoff_ns, now],
        )?;
        let added: i64 = tx.query_row(
            &format!("SELECT coalesce(sum({DEAD_LETTER_SIZE}), 0) FROM dead_letters WHERE id > ?1"),
            [after],
            |r| r.get(0),
        )?;
        let n = tx.execute("DELETE FROM parked WHERE parked_ns < ?1", [cutoff_ns])?;
        let kept = Kept {
            parked: self.kept.parked.saturating_sub(gone as u64),
            unbound: self.kept.unbound.saturating_sub(gone_unbound as u64),
            dead_letters: self.kept.dead_letters + added as u64,
        };
        let evicted = evict_over_caps(&tx, &self.limits, kept)?;
        tx.commit()?;
        self.kept_changed(kept, evicted);
        Ok(n as u64)
    }

    /// Explicit WAL checkpoint (a long backlog must not grow the WAL without bound) and a
    /// recount when another process (an operator command) changed the database.
    fn maintain(&mut self) {
        self.last_maintenance = std::time::Instant::now();
        if let Err(e) = self.checkpoint() {
            tracing::warn!(error = %e, "WAL checkpoint failed; retrying later.");
        }
        self.recount_if_changed();
        self.evictions.log_when_due(&self.limits);
    }

    /// Recomputes the running figures when another connection (an operator command) has
    /// committed since the last look.
    fn recount_if_changed(&mut self) {
        if let Ok(v) = data_version(&self.conn)
            && v != self.data_version
        {
            self.data_version = v;
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
    }

    /// The oldest points of a destination after `after_id`, whole segments as far as the
    /// limits allow. A segment that cannot be read goes to the dead letters on the way.
    fn lease(
        &mut self,
        dest_id: i64,
        after_id: i64,
        max_lines: usize,
        max_bytes: usize,
    ) -> Result<Vec<Leased>, QueueError> {
        loop {
            let mut out = Vec::new();
            let mut bytes = 0usize;
            let mut damaged = None;
            {
                let mut stmt = self.conn.prepare_cached(&format!(
                    "SELECT {SEGMENT_COLUMNS} FROM segments WHERE dest_id = ?1 AND last_id > ?2 ORDER BY last_id"
                ))?;
                let mut rows = stmt.query(params![dest_id, after_id])?;
                'segments: while out.len() < max_lines {
                    let Some(row) = rows.next()? else { break };
                    let seg = SegmentRow::read(row, 0)?;
                    let body = blob(row, 5)?;
                    let mut d = segment::Decoder::new(body, seg.first_id, seg.enqueued_ns);
                    let before = out.len();
                    loop {
                        let r = match d.next_after(after_id) {
                            Ok(Some(r)) => r,
                            Ok(None) => break,
                            Err(why) => {
                                out.truncate(before);
                                damaged = Some((seg, body.to_vec(), why));
                                break 'segments;
                            }
                        };
                        // Always hand out at least one line, however long, so a big line
                        // cannot wedge its destination.
                        if !out.is_empty() && bytes + r.line.len() + 1 > max_bytes {
                            break 'segments;
                        }
                        bytes += r.line.len() + 1;
                        out.push(Leased { id: r.id, line: r.line, stream_key: r.stream_key, ts_ns: r.ts_ns });
                        if out.len() >= max_lines {
                            break 'segments;
                        }
                    }
                }
            }
            let Some((seg, body, why)) = damaged else { return Ok(out) };
            let tx = self.conn.transaction()?;
            let mut kept = self.kept;
            kept.dead_letters += quarantine(&tx, dest_id, &seg, &body, &why)?;
            let evicted = evict_over_caps(&tx, &self.limits, kept)?;
            tx.commit()?;
            self.kept_changed(kept, evicted);
            self.bytes = self.bytes.saturating_sub(seg.bytes);
            self.count(dest_id, -(seg.points as i64));
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    fn destination_id(&mut self, d: &Destination) -> Result<i64, QueueError> {
        self.conn
            .prepare_cached("INSERT INTO destinations (org, bucket) VALUES (?1, ?2) ON CONFLICT DO NOTHING")?
            .execute(params![d.org, d.bucket])?;
        Ok(self
            .conn
            .prepare_cached("SELECT id FROM destinations WHERE org = ?1 AND bucket = ?2")?
            .query_row(params![d.org, d.bucket], |r| r.get(0))?)
    }

    fn replace_bindings(&mut self, bindings: &[Binding], source: &str, version: &str) -> Result<(), QueueError> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM binding_cache", [])?;
        {
            let mut stmt = tx.prepare("INSERT INTO binding_cache (body) VALUES (?1)")?;
            for b in bindings {
                let body = serde_json::to_string(b).map_err(|e| QueueError::Invalid(e.to_string()))?;
                stmt.execute([body])?;
            }
            let mut meta = tx.prepare("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?;
            meta.execute(["bindings_source", source])?;
            meta.execute(["bindings_version", version])?;
            meta.execute(["bindings_stored_at", &chrono::Utc::now().to_rfc3339()])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn checkpoint(&self) -> Result<(), QueueError> {
        self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

pub fn destinations(conn: &Connection) -> Result<Vec<(i64, Destination, u64)>, QueueError> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.id, d.org, d.bucket, (SELECT coalesce(sum(points), 0) FROM segments s WHERE s.dest_id = d.id)
         FROM destinations d ORDER BY d.id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get(0)?, Destination { org: r.get(1)?, bucket: r.get(2)? }, r.get::<_, i64>(3)? as u64))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn load_bindings(conn: &Connection) -> Result<Option<(Vec<Binding>, String, String)>, QueueError> {
    let meta = |key: &str| -> Result<Option<String>, QueueError> {
        Ok(conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    };
    let Some(source) = meta("bindings_source")? else {
        return Ok(None);
    };
    let version = meta("bindings_version")?.unwrap_or_default();
    let mut stmt = conn.prepare("SELECT body FROM binding_cache ORDER BY seq")?;
    let mut out = Vec::new();
    for body in stmt.query_map([], |r| r.get::<_, String>(0))? {
        let b: Binding =
            serde_json::from_str(&body?).map_err(|e| QueueError::Invalid(format!("binding cache: {e}")))?;
        out.push(b);
    }
    Ok(Some((out, source, version)))
}

/// Every stream's activity.
pub fn activity(conn: &Connection) -> Result<Vec<Activity>, QueueError> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.stream_key, s.stream_id, a.readings, a.delivered, a.last_reading_ns, a.last_delivered_ns,
                a.reported_readings, a.reported_delivered, a.reported_ns,
                (SELECT started_ns FROM gaps g WHERE g.stream_key = a.stream_key AND g.ended_ns IS NULL)
         FROM activity a JOIN streams s ON s.id = a.stream_key ORDER BY s.stream_id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Activity {
            stream_key: r.get(0)?,
            stream_id: r.get(1)?,
            readings: r.get::<_, i64>(2)? as u64,
            delivered: r.get::<_, i64>(3)? as u64,
            last_reading_ns: r.get(4)?,
            last_delivered_ns: r.get(5)?,
            reported_readings: r.get::<_, i64>(6)? as u64,
            reported_delivered: r.get::<_, i64>(7)? as u64,
            reported_ns: r.get(8)?,
            open_gap_ns: r.get(9)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Gaps whose current state was not reported yet.
pub fn unreported_gaps(conn: &Connection) -> Result<Vec<Gap>, QueueError> {
    let mut stmt = conn.prepare_cached(
        "SELECT g.id, s.stream_id, g.started_ns, g.ended_ns, g.threshold_ns FROM gaps g JOIN streams s ON s.id = g.stream_key
         WHERE g.reported = 0 OR (g.reported = 1 AND g.ended_ns IS NOT NULL) ORDER BY g.id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Gap {
            id: r.get(0)?,
            stream_id: r.get(1)?,
            started_ns: r.get(2)?,
            ended_ns: r.get(3)?,
            threshold_ns: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// When the cached bindings were stored (ns since the epoch), if ever.
pub fn bindings_stored_at(conn: &Connection) -> Result<Option<i64>, QueueError> {
    let at: Option<String> =
        conn.query_row("SELECT value FROM meta WHERE key = 'bindings_stored_at'", [], |r| r.get(0)).optional()?;
    Ok(at.and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok()).and_then(|t| t.timestamp_nanos_opt()))
}

/// Dead letters, oldest first (operator command).
pub fn dead_letters(conn: &Connection, filter: &DeadLetterFilter, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
    let (clause, mut args) = filter.clause();
    let sql = format!(
        "SELECT x.id, d.org, d.bucket, x.line, x.reason, x.status, x.detail, x.enqueued_ns, x.failed_ns
         FROM (SELECT * FROM dead_letters{clause}) x LEFT JOIN destinations d ON d.id = x.dest_id ORDER BY x.id LIMIT ?"
    );
    args.push((limit.min(i64::MAX as usize) as i64).into());
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
        Ok(DeadLetter {
            id: r.get(0)?,
            destination: match (r.get::<_, Option<String>>(1)?, r.get::<_, Option<String>>(2)?) {
                (Some(org), Some(bucket)) => Destination { org, bucket }.to_string(),
                _ => "-".into(),
            },
            line: r.get(3)?,
            reason: r.get(4)?,
            status: r.get::<_, Option<i64>>(5)?.map(|s| s as u16),
            detail: r.get(6)?,
            enqueued_ns: r.get(7)?,
            failed_ns: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Dead letters per reason (operator command, metrics).
pub fn dead_letter_counts(conn: &Connection) -> Result<Vec<(String, u64)>, QueueError> {
    let mut stmt = conn.prepare("SELECT reason, count(*) FROM dead_letters GROUP BY reason ORDER BY reason")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Moves dead letters back into the queue, after their cause was fixed. Returns how many.
pub fn replay_dead_letters(conn: &mut Connection, filter: &DeadLetterFilter) -> Result<u64, QueueError> {
    let (clause, args) = filter.clause();
    let tx = conn.transaction()?;
    let points: Vec<NewPoint> = {
        let mut stmt = tx.prepare(&format!(
            "SELECT dest_id, line, enqueued_ns FROM dead_letters{clause} AND dest_id IS NOT NULL ORDER BY id"
        ))?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.clone()), |r| {
            Ok(NewPoint { dest_id: r.get(0)?, line: r.get(1)?, enqueued_ns: r.get(2)?, ..Default::default() })
        })?;
        rows.collect::<Result<_, _>>()?
    };
    // Ids from the shared sequence: the daemon, committing beside this, takes its next ids
    // from there too.
    let mut next_id = first_free_id(&tx)?;
    insert_points(&tx, &mut next_id, points.iter(), segment::MAX_POINTS, &mut Vec::new())?;
    let n = tx.execute(
        &format!("DELETE FROM dead_letters{clause} AND dest_id IS NOT NULL"),
        rusqlite::params_from_iter(args),
    )?;
    tx.commit()?;
    Ok(n as u64)
}

/// Deletes dead letters for good. Returns how many.
pub fn purge_dead_letters(conn: &mut Connection, filter: &DeadLetterFilter) -> Result<u64, QueueError> {
    let (clause, args) = filter.clause();
    Ok(conn.execute(&format!("DELETE FROM dead_letters{clause}"), rusqlite::params_from_iter(args))? as u64)
}

/// Opens an existing database for an operator command that changes it (dead-letter replay
/// and purge). Safe beside the running daemon: SQLite serializes the writers.
pub fn open_read_write(data_dir: &Path) -> Result<Connection, QueueError> {
    let path = data_dir.join(DB_FILE);
    if !path.exists() {
        return Err(QueueError::Invalid(format!("{} does not exist", path.display())));
    }
    let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    require_current_schema(&conn)?;
    Ok(conn)
}

pub fn stats(conn: &Connection, path: &Path) -> Result<QueueStats, QueueError> {
    let (points, bytes, oldest): (i64, Option<i64>, Option<i64>) =
        conn.query_row("SELECT coalesce(sum(points), 0), sum(bytes), min(enqueued_ns) FROM segments", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    let file = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let dead: i64 = conn.query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))?;
    let parked: i64 = conn.query_row("SELECT count(*) FROM parked", [], |r| r.get(0))?;
    let kept = kept_bytes(conn)?;
    Ok(QueueStats {
        points: points as u64,
        parked: parked as u64,
        dead_letters: dead as u64,
        bytes: bytes.unwrap_or(0) as u64,
        parked_bytes: kept.parked,
        dead_letter_bytes: kept.dead_letters,
        oldest_enqueued_ns: oldest,
        db_file_bytes: file(path.to_path_buf()) + file(PathBuf::from(wal)),
    })
}

/// Figures for metrics and `status`, cheap enough for every scrape: one pass over the
/// destination index (no line is read), one over the dead letters' reason index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueGauges {
    pub points: u64,
    pub bytes: u64,
    /// Enqueue time of the oldest waiting point (by queue order), ns since the epoch.
    pub oldest_enqueued_ns: Option<i64>,
    /// The database with its WAL, in bytes.
    pub db_file_bytes: u64,
    /// Every known destination with its waiting points and their oldest enqueue time.
    pub destinations: Vec<(Destination, u64, Option<i64>)>,
    /// Dead letters per reason.
    pub dead_letters: Vec<(String, u64)>,
    /// Parked readings per reason.
    pub parked: Vec<(String, u64)>,
    /// Bytes of parked readings (stored reading and serial), and of those parked `unbound`.
    pub parked_bytes: u64,
    pub unbound_bytes: u64,
    /// Bytes of dead letters (line and detail).
    pub dead_letter_bytes: u64,
    /// Readings parked `unbound` and dead letters deleted over their caps since the daemon
    /// started (0 when read beside it).
    pub evicted_parked: u64,
    pub evicted_dead_letters: u64,
}

/// The store's running figures: bytes waiting, points waiting per destination id, bytes
/// parked and of dead letters, and deletions over the caps since start (parked, dead letters).
pub struct Running<'a> {
    pub bytes: u64,
    pub waiting: &'a HashMap<i64, u64>,
    pub parked_bytes: u64,
    pub unbound_bytes: u64,
    pub dead_letter_bytes: u64,
    pub evicted: (u64, u64),
}

/// Waiting points per destination id, counted (reads the destination index).
fn count_waiting(conn: &Connection) -> Result<HashMap<i64, u64>, QueueError> {
    let mut stmt = conn.prepare_cached("SELECT dest_id, sum(points) FROM segments GROUP BY dest_id")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Computes [`QueueGauges`] from the store's running figures; without them (an operator
/// command beside the daemon) the points are counted and their lines summed, which reads the
/// whole queue.
pub fn gauges(conn: &Connection, path: &Path, running: Option<Running<'_>>) -> Result<QueueGauges, QueueError> {
    let counted;
    let waiting = match &running {
        Some(r) => r.waiting,
        None => {
            counted = count_waiting(conn)?;
            &counted
        }
    };
    let mut oldest_of =
        conn.prepare_cached("SELECT enqueued_ns FROM segments WHERE dest_id = ?1 ORDER BY last_id LIMIT 1")?;
    let mut destinations = Vec::new();
    {
        let mut stmt = conn.prepare_cached("SELECT id, org, bucket FROM destinations ORDER BY id")?;
        let rows =
            stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, Destination { org: r.get(1)?, bucket: r.get(2)? })))?;
        for row in rows {
            let (id, d) = row?;
            let n = waiting.get(&id).copied().unwrap_or(0);
            let oldest = if n > 0 { oldest_of.query_row([id], |r| r.get(0)).optional()? } else { None };
            destinations.push((d, n, oldest));
        }
    }
    let (bytes, kept, evicted) = match running {
        Some(r) => (
            r.bytes,
            Kept { parked: r.parked_bytes, unbound: r.unbound_bytes, dead_letters: r.dead_letter_bytes },
            r.evicted,
        ),
        None => (waiting_bytes(conn)?, kept_bytes(conn)?, (0, 0)),
    };
    let file = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    Ok(QueueGauges {
        points: destinations.iter().map(|(_, n, _)| n).sum(),
        bytes,
        oldest_enqueued_ns: destinations.iter().filter_map(|(_, _, o)| *o).min(),
        db_file_bytes: file(path.to_path_buf()) + file(PathBuf::from(wal)),
        destinations,
        dead_letters: dead_letter_counts(conn)?,
        parked: {
            let mut stmt =
                conn.prepare_cached("SELECT reason, count(*) FROM parked GROUP BY reason ORDER BY reason")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
            rows.collect::<Result<_, _>>()?
        },
        parked_bytes: kept.parked,
        unbound_bytes: kept.unbound,
        dead_letter_bytes: kept.dead_letters,
        evicted_parked: evicted.0,
        evicted_dead_letters: evicted.1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QueueHandle;

    fn dest(b: &str) -> Destination {
        Destination { org: "o".into(), bucket: b.into() }
    }

    fn point(dest_id: i64, n: usize) -> NewPoint {
        NewPoint { dest_id, line: format!("m v={n}i {n}"), enqueued_ns: n as i64, ..Default::default() }
    }

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

    #[tokio::test]
    async fn gauges_count_per_destination_without_reading_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (q, _join) = QueueHandle::open(dir.path(), Synchronous::Full, Limits::default()).expect("open");
        let a = q.destination_id(dest("a")).await.expect("dest");
        let b = q.destination_id(dest("b")).await.expect("dest");
        q.append((3..8).map(|n| point(a, n)).collect()).await.expect("append");
        q.append((1..3).map(|n| point(b, n)).collect()).await.expect("append");
        let rows = q.lease(a, 1, usize::MAX).await.expect("lease");
        q.dead_letter(a, vec![rows[0].id], "rejected", Some(400), "x".into()).await.expect("dead");
        q.ping().await.expect("ping");
        let g = q.gauges().await.expect("gauges");
        assert_eq!((g.points, g.oldest_enqueued_ns), (6, Some(1)));
        assert_eq!(g.bytes, q.stats().await.expect("stats").bytes);
        assert_eq!(g.destinations, vec![(dest("a"), 4, Some(4)), (dest("b"), 2, Some(1))]);
        assert_eq!(g.dead_letters, vec![("rejected".to_owned(), 1)]);
        let conn = open_read_only(dir.path()).expect("ro");
        assert_eq!(gauges(&conn, &dir.path().join(DB_FILE), None).expect("ro gauges").bytes, g.bytes);
    }

    #[tokio::test]
    async fn lease_respects_bytes_but_always_yields_one_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (q, _join) = QueueHandle::open(dir.path(), Synchronous::Normal, Limits::default()).expect("open");
        let a = q.destination_id(dest("a")).await.expect("dest");
        q.append((0..5).map(|n| point(a, n)).collect()).await.expect("append");
        assert_eq!(q.lease(a, 100, 1).await.expect("lease").len(), 1);
        assert_eq!(q.lease(a, 100, 20).await.expect("lease").len(), 2);
    }

    #[tokio::test]
    async fn drop_oldest_never_holds_more_than_the_limit_and_keeps_the_newest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = Limits { max_bytes: 100, policy: FullPolicy::DropOldest, ..Limits::default() };
        let (q, _join) = QueueHandle::open(dir.path(), Synchronous::Normal, limits).expect("open");
        let a = q.destination_id(dest("a")).await.expect("dest");
        // 10-byte lines + newline: 11 bytes each.
        let line = |n: usize| NewPoint {
            dest_id: a,
            line: format!("m v={n:03}i 1"),
            enqueued_ns: n as i64,
            ..Default::default()
        };
        q.append((0..5).map(line).collect()).await.expect("append");
        let r = q.append((5..20).map(line).collect()).await.expect("append");
        assert_eq!(r.dropped, 11, "{r:?}");
        let s = q.stats().await.expect("stats");
        assert!(s.bytes <= 100, "{s:?}");
        let kept = q.lease(a, 100, usize::MAX).await.expect("lease");
        assert_eq!(kept.first().map(|l| l.line.as_str()), Some("m v=011i 1"));
        assert_eq!(kept.last().map(|l| l.line.as_str()), Some("m v=019i 1"));
        assert_eq!(q.gauges().await.expect("gauges").points, 9, "dropped points leave the running count");
        // Room for two more: the two oldest points of the segment holding 11..=19 go, the
        // rest of it stays, ids and order kept.
        let r = q.append((20..22).map(line).collect()).await.expect("append");
        assert_eq!((r.dropped, r.dropped_bytes, r.dropped_span), (2, 22, Some((11, 12))));
        let kept = q.lease(a, 100, usize::MAX).await.expect("lease");
        let lines: Vec<&str> = kept.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(lines, (13..22).map(|n| format!("m v={n:03}i 1")).collect::<Vec<_>>());
        assert!(kept.windows(2).all(|w| w[0].id < w[1].id), "{kept:?}");
        let g = q.gauges().await.expect("gauges");
        assert_eq!((g.points, g.bytes), (9, 99));
        assert_eq!(g.oldest_enqueued_ns, Some(13), "the segment's enqueue time follows its oldest point");
    }

    #[tokio::test]
    async fn segments_no_larger_than_a_batch_are_leased_and_deleted_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = Limits { segment_points: 10, ..Limits::default() };
        let (q, _join) = QueueHandle::open(dir.path(), Synchronous::Normal, limits).expect("open");
        let a = q.destination_id(dest("a")).await.expect("dest");
        q.append((0..25).map(|n| point(a, n)).collect()).await.expect("append");
        let conn = open_read_only(dir.path()).expect("ro");
        let sizes = || -> Vec<i64> {
            let mut stmt = conn.prepare("SELECT points FROM segments ORDER BY last_id").expect("prepare");
            stmt.query_map([], |r| r.get(0)).expect("query").map(|r| r.expect("row")).collect()
        };
        assert_eq!(sizes(), [10, 10, 5]);
        let batch = q.lease(a, 10, usize::MAX).await.expect("lease");
        assert_eq!(
            batch.iter().map(|l| l.line.clone()).collect::<Vec<_>>(),
            (0..10).map(|n| point(a, n).line).collect::<Vec<_>>()
        );
        q.delete_delivered(a, batch[0].id, batch[9].id, Delivered::of(&batch)).await.expect("delete");
        assert_eq!(sizes(), [10, 5], "the first segment went whole, nothing was rewritten");
    }

    #[tokio::test]
    async fn a_segment_damaged_under_a_leased_batch_keeps_its_points_as_dead_letters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (q, _join) = QueueHandle::open(dir.path(), Synchronous::Normal, Limits::default()).expect("open");
        let a = q.destination_id(dest("a")).await.expect("dest");
        q.append((0..5).map(|n| point(a, n)).collect()).await.expect("append");
        let batch = q.lease(a, 10, usize::MAX).await.expect("lease");
        // Damaged while the batch is on its way; InfluxDB then refuses one of its points.
        let conn = open_read_write(dir.path()).expect("rw");
        conn.execute("UPDATE segments SET body = x'0000000040ff'", []).expect("damage");
        // The store takes in the change (as it does every few seconds): from here its running
        // figures alone must follow.
        q.gauges().await.expect("gauges");
        assert_eq!(q.dead_letter(a, vec![batch[1].id], "rejected", Some(400), "x".into()).await.expect("dead"), 0);
        assert_eq!(q.delete_delivered(a, batch[0].id, batch[4].id, Delivered::of(&batch)).await.expect("delete"), 0);
        let dead = dead_letters(&conn, &DeadLetterFilter::default(), 10).expect("dead letters");
        assert_eq!(dead.iter().map(|d| d.reason.as_str()).collect::<Vec<_>>(), ["damaged"]);
        let g = q.gauges().await.expect("gauges");
        assert_eq!((g.points, g.bytes), (0, 0));
        assert_eq!(g.dead_letter_bytes, dead_in_table(&conn).0);
    }

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

    #[tokio::test]
    async fn a_damaged_segment_goes_to_the_dead_letters_and_the_rest_is_delivered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (q, _join) = QueueHandle::open(dir.path(), Synchronous::Normal, Limits::default()).expect("open");
        let a = q.destination_id(dest("a")).await.expect("dest");
        for c in 0..3 {
            q.append((c * 5..c * 5 + 5).map(|n| point(a, n)).collect()).await.expect("append");
        }
        // The second commit's segment: a line length running past the end.
        let conn = open_read_write(dir.path()).expect("rw");
        conn.execute(
            "UPDATE segments SET body = x'0000000040ff' WHERE last_id = (SELECT last_id FROM segments ORDER BY last_id LIMIT 1 OFFSET 1)",
            [],
        )
        .expect("damage");
        q.gauges().await.expect("gauges");
        let first = q.lease(a, 100, usize::MAX).await.expect("lease");
        assert_eq!(
            first.iter().map(|l| l.line.clone()).collect::<Vec<_>>(),
            (0..5).map(|n| point(a, n).line).collect::<Vec<_>>()
        );
        let rest = q.lease_after(a, first[4].id, 100, usize::MAX).await.expect("lease after");
        assert_eq!(
            rest.iter().map(|l| l.line.clone()).collect::<Vec<_>>(),
            (10..15).map(|n| point(a, n).line).collect::<Vec<_>>()
        );
        let dead = dead_letters(&conn, &DeadLetterFilter::default(), 10).expect("dead letters");
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].reason, "damaged");
        assert!(dead[0].detail.contains("5 points") && dead[0].detail.contains("line cut short"), "{}", dead[0].detail);
        let g = q.gauges().await.expect("gauges");
        assert_eq!((g.points, g.bytes), (10, q.stats().await.expect("stats").bytes));
        assert_eq!(g.dead_letter_bytes, dead_in_table(&conn).0, "the running figure counts the damaged segment");
    }

    #[tokio::test]
    async fn a_reading_closes_its_streams_open_gap_also_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (q, join) = QueueHandle::open(dir.path(), Synchronous::Normal, Limits::default()).expect("open");
        let a = q.destination_id(dest("a")).await.expect("dest");
        let (s1, s2) = (q.stream_key("s1".into()).await.expect("s1"), q.stream_key("s2".into()).await.expect("s2"));
        let reading = |stream_key: i64, ts_ns: i64| NewPoint { stream_key, ts_ns, ..point(a, ts_ns as usize) };
        assert!(q.open_gap(s1, 100, 10).await.expect("gap s1"));
        assert!(q.open_gap(s2, 100, 10).await.expect("gap s2"));
        q.append(vec![reading(s1, 150)]).await.expect("append");
        let ended = |gaps: Vec<Gap>, s: &str| gaps.into_iter().find(|g| g.stream_id == s).expect(s).ended_ns;
        assert_eq!(ended(q.unreported_gaps().await.expect("gaps"), "s1"), Some(150));
        assert_eq!(ended(q.unreported_gaps().await.expect("gaps"), "s2"), None);
        q.close().await.expect("close");
        join.join().expect("thread");

        let (q, _join) = QueueHandle::open(dir.path(), Synchronous::Normal, Limits::default()).expect("reopen");
        q.append(vec![reading(s2, 170)]).await.expect("append");
        assert_eq!(ended(q.unreported_gaps().await.expect("gaps"), "s2"), Some(170), "known open after the restart");
        // A new gap of a stream whose gap was closed is closed again by its next reading.
        assert!(q.open_gap(s1, 300, 10).await.expect("second gap s1"));
        q.append(vec![reading(s1, 320)]).await.expect("append");
        let gaps = q.unreported_gaps().await.expect("gaps");
        assert!(gaps.iter().filter(|g| g.stream_id == "s1").all(|g| g.ended_ns.is_some()), "{gaps:?}");
    }

    #[tokio::test]
    async fn a_batch_on_its_way_never_shares_ids_with_newer_points() {
        // drop_oldest can empty the table; SQLite would then number new points from 1 again,
        // into the id range of a batch still being written, whose delete would take them.
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = Limits { max_bytes: 100, policy: FullPolicy::DropOldest, ..Limits::default() };
        let (q, _join) = QueueHandle::open(dir.path(), Synchronous::Normal, limits).expect("open");
        let a = q.destination_id(dest("a")).await.expect("dest");
        let line = |n: usize| NewPoint { dest_id: a, line: format!("m v={n:03}i 1"), ..Default::default() };
        q.append((0..5).map(line).collect()).await.expect("append");
        let on_its_way = q.lease(a, 100, usize::MAX).await.expect("lease");
        // Nine 11-byte lines fill the 100 bytes: every older point is dropped.
        let r = q.append((5..14).map(line).collect()).await.expect("append");
        assert_eq!(r.dropped, 5, "{r:?}");
        let (first, last) = (on_its_way[0].id, on_its_way[4].id);
        assert_eq!(q.delete(a, first, last).await.expect("delete"), 0, "the newer points are not in the range");
        assert_eq!(q.lease(a, 100, usize::MAX).await.expect("lease").len(), 9);
    }

    #[tokio::test]
    async fn a_delete_of_what_the_sink_read_counts_like_one_that_reads_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (q, _join) = QueueHandle::open(dir.path(), Synchronous::Normal, Limits::default()).expect("open");
        let a = q.destination_id(dest("a")).await.expect("dest");
        let (s1, s2) = (q.stream_key("s1".into()).await.expect("s1"), q.stream_key("s2".into()).await.expect("s2"));
        let reading = |n: usize| NewPoint { stream_key: [s1, s2, 0][n % 3], ts_ns: 1000 + n as i64, ..point(a, n) };
        q.append((0..30).map(reading).collect()).await.expect("append");
        let figures = |q: QueueHandle| async move {
            let mut act: Vec<_> = q
                .activity()
                .await
                .expect("activity")
                .into_iter()
                .map(|a| (a.stream_id, a.delivered, a.last_delivered_ns))
                .collect();
            act.sort();
            (act, q.gauges().await.expect("gauges").bytes, q.stats().await.expect("stats").bytes)
        };
        // Ten by reading again, ten from what the lease saw.
        let first = q.lease(a, 10, usize::MAX).await.expect("lease");
        q.delete(a, first[0].id, first[9].id).await.expect("delete");
        let second = q.lease(a, 10, usize::MAX).await.expect("lease");
        let n = q.delete_delivered(a, second[0].id, second[9].id, Delivered::of(&second)).await.expect("delete");
        assert_eq!(n, 10);
        let (act, running, counted) = figures(q.clone()).await;
        assert_eq!(running, counted, "running bytes");
        assert_eq!(act, [("s1".to_owned(), 7, Some(1018)), ("s2".to_owned(), 7, Some(1019))]);
        // A range that lost points since its lease (dead-lettered) is read again.
        let third = q.lease(a, 10, usize::MAX).await.expect("lease");
        q.dead_letter(a, vec![third[0].id, third[1].id], "rejected", Some(400), "x".into()).await.expect("dead");
        let n = q.delete_delivered(a, third[0].id, third[9].id, Delivered::of(&third)).await.expect("delete");
        assert_eq!(n, 8);
        let (act, running, counted) = figures(q.clone()).await;
        assert_eq!((running, counted), (0, 0));
        assert_eq!(act, [("s1".to_owned(), 9, Some(1027)), ("s2".to_owned(), 10, Some(1028))]);
    }

    #[tokio::test]
    async fn gauges_follow_an_operator_command_beside_the_daemon() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (q, _join) = QueueHandle::open(dir.path(), Synchronous::Normal, Limits::default()).expect("open");
        let a = q.destination_id(dest("a")).await.expect("dest");
        q.append((0..10).map(|n| point(a, n)).collect()).await.expect("append");
        assert_eq!(q.gauges().await.expect("gauges").points, 10);
        let rows = q.lease(a, 4, usize::MAX).await.expect("lease");
        q.dead_letter(a, rows.iter().map(|r| r.id).collect(), "rejected", Some(400), "x".into()).await.expect("dead");
        let g = q.gauges().await.expect("gauges");
        assert_eq!((g.points, g.destinations[0].1), (6, 6));
        // `dead-letters replay` writes through a connection of its own.
        let mut conn = open_read_write(dir.path()).expect("rw");
        assert_eq!(replay_dead_letters(&mut conn, &DeadLetterFilter::default()).expect("replay"), 4);
        let g = q.gauges().await.expect("gauges");
        assert_eq!((g.points, g.destinations[0].1), (10, 10));
        assert_eq!(g.bytes, q.stats().await.expect("stats").bytes);
        assert_eq!(g.bytes, (0..10).map(|n| point(a, n).line.len() as u64 + 1).sum::<u64>());
    }

    /// A closed queue in `dir` holding `commits` commits of five points each.
    async fn closed_queue(dir: &Path, commits: usize) {
        let (q, join) = QueueHandle::open(dir, Synchronous::Normal, Limits::default()).expect("open");
        let a = q.destination_id(dest("a")).await.expect("dest");
        for c in 0..commits {
            q.append((c * 5..c * 5 + 5).map(|n| point(a, n)).collect()).await.expect("append");
        }
        q.close().await.expect("close");
        join.join().expect("thread");
    }

    /// Files in `dir` that a recovery moved aside.
    fn moved_aside(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("{DB_FILE}.damaged-")))
            .collect()
    }

    #[tokio::test]
    async fn a_database_locked_during_the_start_up_check_is_left_as_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        closed_queue(dir.path(), 40).await;
        let path = dir.path().join(DB_FILE);
        // Another process keeps the database to itself (a second gateway, an operator command).
        let holder = Connection::open(&path).expect("holder");
        holder.execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;").expect("lock");
        let check =
            StartupCheck { attempts: 2, retry_pause: std::time::Duration::from_millis(10), ..StartupCheck::default() };
        let e = open_or_recover(&path, Synchronous::Normal, check).expect_err("refused while locked");
        assert!(e.to_string().contains("left as it is") && e.to_string().contains("locked"), "{e}");
        assert_eq!(moved_aside(dir.path()), Vec::<String>::new());
        drop(holder);
        let (q, _join) = QueueHandle::open(dir.path(), Synchronous::Normal, Limits::default()).expect("open");
        let all = q.lease(1, usize::MAX, usize::MAX).await.expect("lease");
        assert_eq!(
            all.iter().map(|l| l.line.clone()).collect::<Vec<_>>(),
            (0..200).map(|n| point(1, n).line).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn a_damaged_database_is_still_moved_aside() {
        for damage in ["not a database", "damaged pages"] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join(DB_FILE);
            match damage {
                "not a database" => std::fs::write(&path, vec![0x5a; 64 * 1024]).expect("garbage"),
                _ => {
                    closed_queue(dir.path(), 40).await;
                    // Every page but the first (the schema) overwritten.
                    let len = std::fs::metadata(&path).expect("db").len() as usize;
                    let mut bytes = std::fs::read(&path).expect("read");
                    assert!(len > 3 * 4096, "{len}");
                    bytes[4096..].fill(0x5a);
                    std::fs::write(&path, bytes).expect("damage");
                }
            }
            let (conn, checked) =
                open_or_recover(&path, Synchronous::Normal, StartupCheck::default()).expect("a fresh database");
            assert!(matches!(checked, Checked::MovedAside(_)), "{damage}: {checked:?}");
            assert_eq!(moved_aside(dir.path()).len(), 1, "{damage}");
            assert_eq!(stats(&conn, &path).expect("stats").points, 0, "{damage}");
        }
    }

    #[tokio::test]
    async fn a_start_up_check_over_its_budget_is_cut_short_and_the_queue_opens() {
        let dir = tempfile::tempdir().expect("tempdir");
        closed_queue(dir.path(), 300).await;
        let path = dir.path().join(DB_FILE);
        let tiny = StartupCheck { budget: std::time::Duration::ZERO, ..StartupCheck::default() };
        let (conn, checked) = open_or_recover(&path, Synchronous::Normal, tiny).expect("opens");
        assert_eq!(checked, Checked::CutShort);
        assert_eq!(moved_aside(dir.path()), Vec::<String>::new());
        assert_eq!(stats(&conn, &path).expect("stats").points, 1500);
        drop(conn);
        let (_conn, checked) = open_or_recover(&path, Synchronous::Normal, StartupCheck::default()).expect("opens");
        assert_eq!(checked, Checked::Passed, "with time enough the check runs to its end");
    }

    /// A reading of device `serial` parked for `reason`, about 60 bytes.
    fn parked(serial: &str, reason: &'static str, n: usize) -> NewParked {
        NewParked {
            serial: serial.into(),
            ts_ns: n as i64,
            reason,
            body: format!(r#"{{"serial":"{serial}","ts_ns":{n},"fields":{{"spo2":97}}}}"#),
            parked_ns: n as i64,
        }
    }

    /// (bytes, rows) of the parked readings with `reason`, summed from the table.
    fn parked_in_table(conn: &Connection, reason: &str) -> (u64, u64) {
        conn.query_row(
            "SELECT coalesce(sum(length(CAST(serial AS BLOB)) + length(CAST(body AS BLOB))), 0), count(*)
             FROM parked WHERE reason = ?1",
            [reason],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .expect("parked")
    }

    /// (bytes, rows) of the dead letters, summed from the table.
    fn dead_in_table(conn: &Connection) -> (u64, u64) {
        conn.query_row(
            "SELECT coalesce(sum(length(CAST(line AS BLOB)) + length(CAST(detail AS BLOB))), 0), count(*) FROM dead_letters",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .expect("dead letters")
    }

    #[tokio::test]
    async fn a_flood_of_unbound_readings_stays_within_its_cap_and_bound_points_are_still_taken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = Limits {
            max_bytes: 64 * 1024,
            policy: FullPolicy::Backpressure,
            max_parked_bytes: 16 * 1024,
            max_dead_letter_bytes: 8 * 1024,
            ..Limits::default()
        };
        let (q, join) = QueueHandle::open(dir.path(), Synchronous::Normal, limits).expect("open");
        let a = q.destination_id(dest("a")).await.expect("dest");
        // Each commit: a bound device's point and twenty readings of random serials, in all
        // about four times max_bytes of junk.
        for c in 0..200 {
            let junk = (0..20).map(|i| parked(&format!("JUNK-{c:03}-{i:02}"), PARKED_UNBOUND, c * 20 + i));
            let batch = Batch { points: vec![point(a, c)], parked: junk.collect() };
            q.append_shared(std::sync::Arc::new(batch)).await.expect("junk never stops intake");
        }
        let conn = open_read_only(dir.path()).expect("ro");
        let (bytes, rows) = parked_in_table(&conn, PARKED_UNBOUND);
        assert!(bytes <= 16 * 1024 && bytes > 15 * 1024, "{bytes}");
        let serials: Vec<String> = conn
            .prepare("SELECT serial FROM parked ORDER BY id")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect();
        assert_eq!(serials.last().map(String::as_str), Some("JUNK-199-19"), "the newest are kept");
        let first_kept = 4000 - rows as usize;
        assert_eq!(serials[0], format!("JUNK-{:03}-{:02}", first_kept / 20, first_kept % 20), "the oldest went");
        let kept = q.lease(a, usize::MAX, usize::MAX).await.expect("lease");
        assert_eq!(kept.len(), 200, "every bound point was taken");
        let g = q.gauges().await.expect("gauges");
        assert_eq!((g.parked_bytes, g.unbound_bytes, g.evicted_parked), (bytes, bytes, 4000 - rows));
        q.close().await.expect("close");
        join.join().expect("thread");

        // A smaller cap applies from the next start on, and the running figures are the table's.
        let limits = Limits { max_parked_bytes: 4 * 1024, ..limits };
        let (q, _join) = QueueHandle::open(dir.path(), Synchronous::Normal, limits).expect("reopen");
        let g = q.gauges().await.expect("gauges");
        let (bytes, rows) = parked_in_table(&conn, PARKED_UNBOUND);
        assert!(bytes <= 4 * 1024 && rows > 0, "{bytes}");
        assert_eq!((g.parked_bytes, g.unbound_bytes), (bytes, bytes));
        assert_eq!(g.parked, vec![(PARKED_UNBOUND.to_owned(), rows)]);
    }

    #[tokio::test]
    async fn dead_letters_over_their_cap_lose_the_oldest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = Limits { max_dead_letter_bytes: 300, ..Limits::default() };
        let (q, _join) = QueueHandle::open(dir.path(), Synchronous::Normal, limits).expect("open");
        let a = q.destination_id(dest("a")).await.expect("dest");
        q.append((0..40).map(|n| point(a, n)).collect()).await.expect("append");
        let rows = q.lease(a, usize::MAX, usize::MAX).await.expect("lease");
        for chunk in rows.chunks(10) {
            let ids = chunk.iter().map(|r| r.id).collect();
            q.dead_letter(a, ids, "rejected", Some(400), "x".into()).await.expect("dead letter");
        }
        let conn = open_read_only(dir.path()).expect("ro");
        let (bytes, kept) = dead_in_table(&conn);
        assert!(bytes <= 300 && bytes > 250, "{bytes}");
        let dead = dead_letters(&conn, &DeadLetterFilter::default(), 100).expect("dead letters");
        assert_eq!(
            dead.iter().map(|d| d.line.clone()).collect::<Vec<_>>(),
            (40 - kept as usize..40).map(|n| point(a, n).line).collect::<Vec<_>>(),
            "the newest are kept"
        );
        let g = q.gauges().await.expect("gauges");
        assert_eq!((g.dead_letter_bytes, g.evicted_dead_letters), (bytes, 40 - kept));

        // Parked readings that expire into the dead letters are held to the same cap.
        let junk = (0..10).map(|n| parked(&format!("JUNK-{n}"), PARKED_UNBOUND, n)).collect();
        q.append_shared(std::sync::Arc::new(Batch { points: Vec::new(), parked: junk })).await.expect("park");
        assert_eq!(q.expire_parked(i64::MAX).await.expect("expire"), 10);
        let (bytes, kept) = dead_in_table(&conn);
        assert!(bytes <= 300 && kept > 0, "{bytes}");
        let dead = dead_letters(&conn, &DeadLetterFilter::default(), 100).expect("dead letters");
        assert!(dead.last().expect("newest").line.contains("JUNK-9"), "{dead:?}");
        let g = q.gauges().await.expect("gauges");
        assert_eq!((g.dead_letter_bytes, g.parked_bytes), (bytes, 0));
        assert_eq!(g.evicted_dead_letters, 50 - kept);
    }

    #[tokio::test]
    async fn parked_readings_and_dead_letters_count_against_max_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = Limits {
            max_bytes: 2000,
            policy: FullPolicy::DropOldest,
            max_parked_bytes: 600,
            max_dead_letter_bytes: 600,
            ..Limits::default()
        };
        let (q, join) = QueueHandle::open(dir.path(), Synchronous::Normal, limits).expect("open");
        let a = q.destination_id(dest("a")).await.expect("dest");
        q.append((0..100).map(|n| point(a, n)).collect()).await.expect("append");
        let rows = q.lease(a, 60, usize::MAX).await.expect("lease");
        q.dead_letter(a, rows.iter().map(|r| r.id).collect(), "rejected", Some(400), "x".into()).await.expect("dead");
        let junk = (0..30).map(|n| parked(&format!("JUNK-{n}"), PARKED_UNBOUND, n)).collect();
        q.append_shared(std::sync::Arc::new(Batch { points: Vec::new(), parked: junk })).await.expect("park");
        // 11-byte lines, 2,200 bytes: more than max_bytes on their own.
        let line = |n: usize| NewPoint { dest_id: a, line: format!("m v={n:03}i 1"), ..Default::default() };
        q.append((0..200).map(line).collect()).await.expect("append");
        let g = q.gauges().await.expect("gauges");
        let conn = open_read_only(dir.path()).expect("ro");
        let (parked_bytes, _) = parked_in_table(&conn, PARKED_UNBOUND);
        let (dead_bytes, _) = dead_in_table(&conn);
        assert!(parked_bytes > 500 && dead_bytes > 500, "{parked_bytes} {dead_bytes}");
        let total = g.bytes + parked_bytes + dead_bytes;
        assert!(total <= 2000, "waiting {} + parked {parked_bytes} + dead letters {dead_bytes}", g.bytes);
        let kept = q.lease(a, usize::MAX, usize::MAX).await.expect("lease");
        assert_eq!(kept.last().map(|l| l.line.as_str()), Some("m v=199i 1"), "the newest points are kept");
        q.close().await.expect("close");
        join.join().expect("thread");
    }

    #[tokio::test]
    async fn readings_parked_fresh_are_never_deleted_for_the_cap_but_take_room() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = Limits {
            max_bytes: 2000,
            policy: FullPolicy::Backpressure,
            max_parked_bytes: 300,
            max_dead_letter_bytes: 300,
            ..Limits::default()
        };
        let (q, _join) = QueueHandle::open(dir.path(), Synchronous::Normal, limits).expect("open");
        let a = q.destination_id(dest("a")).await.expect("dest");
        let fresh: Vec<NewParked> = (0..20).map(|n| parked(&format!("ABC-{n}"), PARKED_FRESH, n)).collect();
        let fresh_bytes: u64 = fresh.iter().map(|p| (p.serial.len() + p.body.len()) as u64).sum();
        assert!(fresh_bytes > 1000, "{fresh_bytes}");
        q.append_shared(std::sync::Arc::new(Batch { points: Vec::new(), parked: fresh })).await.expect("park fresh");
        let conn = open_read_only(dir.path()).expect("ro");
        assert_eq!(parked_in_table(&conn, PARKED_FRESH), (fresh_bytes, 20), "all kept, over the cap");
        // What is left of max_bytes, in two points: the second no longer fits.
        let room = 2000 - fresh_bytes;
        let sized = |len: u64| NewPoint { dest_id: a, line: "m".repeat(len as usize - 1), ..Default::default() };
        q.append(vec![sized(room / 2)]).await.expect("fits");
        let e = q.append(vec![sized(room - room / 2 + 1)]).await;
        assert!(matches!(e, Err(QueueError::Full(_))), "{e:?}");
        q.append(vec![sized(room - room / 2)]).await.expect("fits exactly");
        let g = q.gauges().await.expect("gauges");
        assert_eq!((g.parked_bytes, g.unbound_bytes, g.evicted_parked), (fresh_bytes, 0, 0));
    }

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
}

#[cfg(test)]
mod model {
    //! Model-based test: random appends, leases, acks, dead letters and restarts against the
    //! real store and a `VecDeque` per destination. No loss, no phantom rows, order kept, also
    //! where batches and dead letters cut segments apart. Parked readings come and go beside
    //! them, and with caps on parked readings and dead letters the store's running byte
    //! figures stay those of its tables and within the caps.
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;
    use crate::queue::QueueHandle;

    #[derive(Debug, Clone)]
    enum Op {
        /// One commit; each point to destination 0 or 1.
        Append {
            dests: Vec<usize>,
        },
        /// One commit of more points than a segment holds.
        AppendMany {
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
        /// Lease up to `n`, dead-letter the picked ones, acknowledge the rest.
        DeadLetter {
            dest: usize,
            n: usize,
            pick: Vec<bool>,
        },
        /// Lease `n`, read `m` more behind them, acknowledge both (as the sink pipelines).
        ReadAhead {
            dest: usize,
            n: usize,
            m: usize,
        },
        /// Park `n` readings in one commit, `fresh` or `unbound`.
        Park {
            n: usize,
            fresh: bool,
        },
        /// Look at up to `n` readings parked `fresh`: the picked ones are resolved (removed),
        /// the others re-parked `unbound`.
        Resolve {
            n: usize,
            pick: Vec<bool>,
        },
        /// Move every reading parked before the `before`-th one to the dead letters.
        Expire {
            before: u64,
        },
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => proptest::collection::vec(0..2usize, 1..30).prop_map(|dests| Op::Append { dests }),
            1 => (0..2usize, 500..1200usize).prop_map(|(dest, n)| Op::AppendMany { dest, n }),
            3 => (0..2usize, prop_oneof![1..15usize, 400..700usize]).prop_map(|(dest, n)| Op::Deliver { dest, n }),
            1 => (0..2usize, 1..30usize, proptest::collection::vec(any::<bool>(), 30))
                .prop_map(|(dest, n, pick)| Op::DeadLetter { dest, n, pick }),
            1 => (0..2usize, 1..600usize, 1..600usize).prop_map(|(dest, n, m)| Op::ReadAhead { dest, n, m }),
            1 => (0..2usize, 1..15usize).prop_map(|(dest, n)| Op::Fail { dest, n }),
            1 => (1..40usize, any::<bool>()).prop_map(|(n, fresh)| Op::Park { n, fresh }),
            1 => (1..40usize, proptest::collection::vec(any::<bool>(), 40)).prop_map(|(n, pick)| Op::Resolve { n, pick }),
            1 => (0..400u64).prop_map(|before| Op::Expire { before }),
            1 => Just(Op::Restart),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn store_matches_the_model(
            ops in proptest::collection::vec(op(), 1..40),
            segment_points in prop_oneof![Just(segment::MAX_POINTS), 1..20usize],
            caps in prop_oneof![Just((u64::MAX, u64::MAX)), (0..3000u64, 0..3000u64)],
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
            rt.block_on(async move {
                let dir = tempfile::tempdir().expect("tempdir");
                let limits = Limits {
                    segment_points,
                    max_parked_bytes: caps.0,
                    max_dead_letter_bytes: caps.1,
                    ..Limits::default()
                };
                let (mut q, _j) = QueueHandle::open(dir.path(), Synchronous::Normal, limits).expect("open");
                let mut ids = Vec::new();
                for b in ["a", "b"] {
                    ids.push(q.destination_id(Destination { org: String::new(), bucket: b.into() }).await.expect("dest"));
                }
                let mut model: Vec<VecDeque<String>> = vec![VecDeque::new(), VecDeque::new()];
                let mut seq = 0u64;
                let mut dead = 0u64;
                // Parked readings so far, and dead letters deleted over the cap (by earlier runs
                // of the store: its count starts again with each).
                let mut parked_seq = 0u64;
                let mut evicted_before = 0u64;
                for op in ops {
                    match op {
                        Op::Append { dests } => {
                            let points: Vec<NewPoint> = dests.iter().map(|&dest| {
                                seq += 1;
                                let line = format!("m v={seq}i {seq}");
                                model[dest].push_back(line.clone());
                                NewPoint { dest_id: ids[dest], line, enqueued_ns: seq as i64, ..Default::default() }
                            }).collect();
                            q.append(points).await.expect("append");
                        }
                        Op::AppendMany { dest, n } => {
                            let lines: Vec<String> = (0..n).map(|_| { seq += 1; format!("m v={seq}i {seq}") }).collect();
                            model[dest].extend(lines.iter().cloned());
                            q.append(lines.into_iter().map(|line| NewPoint { dest_id: ids[dest], line, ..Default::default() }).collect()).await.expect("append");
                        }
                        Op::DeadLetter { dest, n, pick } => {
                            let got = q.lease(ids[dest], n, usize::MAX).await.expect("lease");
                            let chosen: Vec<i64> = got.iter().zip(&pick).filter(|(_, p)| **p).map(|(l, _)| l.id).collect();
                            let moved = q.dead_letter(ids[dest], chosen.clone(), "rejected", Some(400), "x".into()).await.expect("dead");
                            assert_eq!(moved as usize, chosen.len());
                            dead += moved;
                            if let (Some(first), Some(last)) = (got.first(), got.last()) {
                                let k = q.delete_delivered(ids[dest], first.id, last.id, Delivered::of(&got)).await.expect("delete");
                                assert_eq!(k as usize, got.len() - chosen.len());
                            }
                            model[dest].drain(..got.len());
                        }
                        Op::ReadAhead { dest, n, m } => {
                            let got = q.lease(ids[dest], n, usize::MAX).await.expect("lease");
                            let after = got.last().map_or(0, |l| l.id);
                            let next = q.lease_after(ids[dest], after, m, usize::MAX).await.expect("lease after");
                            let want: Vec<String> = model[dest].iter().skip(got.len()).take(m).cloned().collect();
                            assert_eq!(next.iter().map(|l| l.line.clone()).collect::<Vec<_>>(), want);
                            for batch in [&got, &next] {
                                if let (Some(first), Some(last)) = (batch.first(), batch.last()) {
                                    let k = q.delete_delivered(ids[dest], first.id, last.id, Delivered::of(batch)).await.expect("delete");
                                    assert_eq!(k as usize, batch.len());
                                }
                            }
                            model[dest].drain(..got.len() + next.len());
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
                        Op::Park { n, fresh } => {
                            let parked = (0..n).map(|_| {
                                parked_seq += 1;
                                NewParked {
                                    serial: format!("S-{parked_seq}"),
                                    ts_ns: parked_seq as i64,
                                    reason: if fresh { PARKED_FRESH } else { PARKED_UNBOUND },
                                    body: format!("reading {parked_seq}"),
                                    parked_ns: parked_seq as i64,
                                }
                            }).collect();
                            q.append_shared(std::sync::Arc::new(Batch { points: Vec::new(), parked })).await.expect("park");
                        }
                        Op::Resolve { n, pick } => {
                            let rows = q.scan_parked(PARKED_FRESH, i64::MAX, 0, n).await.expect("scan");
                            let (remove, repark): (Vec<_>, Vec<_>) = rows.iter().zip(&pick).partition(|(_, p)| **p);
                            let remove = remove.into_iter().map(|(r, _)| r.id).collect();
                            let repark = repark.into_iter().map(|(r, _)| (r.id, PARKED_UNBOUND)).collect();
                            q.promote(Vec::new(), remove, repark).await.expect("promote");
                        }
                        Op::Expire { before } => {
                            let conn = open_read_only(dir.path()).expect("ro");
                            let expiring: i64 = conn
                                .query_row("SELECT count(*) FROM parked WHERE parked_ns < ?1", [before as i64], |r| r.get(0))
                                .expect("count");
                            assert_eq!(q.expire_parked(before as i64).await.expect("expire"), expiring as u64);
                            dead += expiring as u64;
                        }
                        Op::Restart => {
                            evicted_before += q.gauges().await.expect("gauges").evicted_dead_letters;
                            q.close().await.expect("close");
                            q = QueueHandle::open(dir.path(), Synchronous::Normal, limits).expect("reopen").0;
                        }
                    }
                    // The running counts behind the metrics follow every change.
                    let g = q.gauges().await.expect("gauges");
                    let counts: Vec<u64> = g.destinations.iter().map(|(_, n, _)| *n).collect();
                    assert_eq!(counts, model.iter().map(|m| m.len() as u64).collect::<Vec<_>>());
                    let bytes: u64 = model.iter().flatten().map(|l| l.len() as u64 + 1).sum();
                    assert_eq!(g.bytes, bytes);
                    let conn = open_read_only(dir.path()).expect("ro");
                    let counted = gauges(&conn, &dir.path().join(DB_FILE), None).expect("counted");
                    assert_eq!(
                        (g.parked_bytes, g.unbound_bytes, g.dead_letter_bytes),
                        (counted.parked_bytes, counted.unbound_bytes, counted.dead_letter_bytes)
                    );
                    assert!(g.unbound_bytes <= caps.0 && g.dead_letter_bytes <= caps.1, "{g:?}");
                }
                let total: usize = model.iter().map(VecDeque::len).sum();
                let stats = q.stats().await.expect("stats");
                let evicted = evicted_before + q.gauges().await.expect("gauges").evicted_dead_letters;
                assert_eq!((stats.points as usize, stats.dead_letters + evicted), (total, dead));
                // Everything left reads back in order, across segment boundaries.
                for (dest, want) in model.iter().enumerate() {
                    let got = q.lease(ids[dest], usize::MAX, usize::MAX).await.expect("lease");
                    assert_eq!(got.iter().map(|l| &l.line).collect::<Vec<_>>(), want.iter().collect::<Vec<_>>());
                }
            });
        }
    }
}
