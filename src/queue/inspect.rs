//! Read-only figures of the queue: [`stats`] for `queue stats` and the log at start, and
//! [`gauges`] for metrics and `status`, cheap enough for every scrape when the store thread
//! gives its running figures, and complete (if slower) for an operator command beside it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension};

use super::QueueError;
use super::dead_letters::{self, DeadLetterReason};
use super::limits::{Kept, kept_bytes};
use super::parked::ParkReason;
use super::points::{count_waiting, waiting_bytes};
use crate::model::Destination;

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
    pub dead_letters: Vec<(DeadLetterReason, u64)>,
    /// Parked readings per reason.
    pub parked: Vec<(ParkReason, u64)>,
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

/// The database file at `path` with its WAL, in bytes.
fn db_file_bytes(path: &Path) -> u64 {
    let file = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    file(path.to_path_buf()) + file(PathBuf::from(wal))
}

/// Counts everything waiting and kept, reading the whole queue (operator command, start).
pub fn stats(conn: &Connection, path: &Path) -> Result<QueueStats, QueueError> {
    let (points, bytes, oldest): (i64, Option<i64>, Option<i64>) =
        conn.query_row("SELECT coalesce(sum(points), 0), sum(bytes), min(enqueued_ns) FROM segments", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
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
        db_file_bytes: db_file_bytes(path),
    })
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
    let destinations = destinations_waiting(conn, waiting)?;
    let (bytes, kept, evicted) = match running {
        Some(r) => (
            r.bytes,
            Kept { parked: r.parked_bytes, unbound: r.unbound_bytes, dead_letters: r.dead_letter_bytes },
            r.evicted,
        ),
        None => (waiting_bytes(conn)?, kept_bytes(conn)?, (0, 0)),
    };
    Ok(QueueGauges {
        points: destinations.iter().map(|(_, n, _)| n).sum(),
        bytes,
        oldest_enqueued_ns: destinations.iter().filter_map(|(_, _, o)| *o).min(),
        db_file_bytes: db_file_bytes(path),
        destinations,
        dead_letters: dead_letters::counts(conn)?,
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

/// Every known destination with its waiting points (from `waiting`) and the enqueue time of
/// its oldest one.
fn destinations_waiting(
    conn: &Connection,
    waiting: &HashMap<i64, u64>,
) -> Result<Vec<(Destination, u64, Option<i64>)>, QueueError> {
    let mut oldest_of =
        conn.prepare_cached("SELECT enqueued_ns FROM segments WHERE dest_id = ?1 ORDER BY last_id LIMIT 1")?;
    let mut destinations = Vec::new();
    let mut stmt = conn.prepare_cached("SELECT id, org, bucket FROM destinations ORDER BY id")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, Destination { org: r.get(1)?, bucket: r.get(2)? })))?;
    for row in rows {
        let (id, d) = row?;
        let n = waiting.get(&id).copied().unwrap_or(0);
        let oldest = if n > 0 { oldest_of.query_row([id], |r| r.get(0)).optional()? } else { None };
        destinations.push((d, n, oldest));
    }
    Ok(destinations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::handle::QueueHandle;
    use crate::queue::schema::{DB_FILE, open_read_only};
    use crate::queue::test_support::{dest, point};
    use crate::queue::{Limits, Synchronous};

    #[tokio::test]
    async fn gauges_count_per_destination_without_reading_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (q, _join) = QueueHandle::open(dir.path(), Synchronous::Full, Limits::default()).expect("open");
        let a = q.destination_id(dest("a")).await.expect("dest");
        let b = q.destination_id(dest("b")).await.expect("dest");
        q.append((3..8).map(|n| point(a, n)).collect()).await.expect("append");
        q.append((1..3).map(|n| point(b, n)).collect()).await.expect("append");
        let rows = q.lease(a, 1, usize::MAX).await.expect("lease");
        q.dead_letter(a, vec![rows[0].id], DeadLetterReason::Rejected, Some(400), "x".into()).await.expect("dead");
        q.ping().await.expect("ping");
        let g = q.gauges().await.expect("gauges");
        assert_eq!((g.points, g.oldest_enqueued_ns), (6, Some(1)));
        assert_eq!(g.bytes, q.stats().await.expect("stats").bytes);
        assert_eq!(g.destinations, vec![(dest("a"), 4, Some(4)), (dest("b"), 2, Some(1))]);
        assert_eq!(g.dead_letters, vec![(DeadLetterReason::Rejected, 1)]);
        let conn = open_read_only(dir.path()).expect("ro");
        assert_eq!(gauges(&conn, &dir.path().join(DB_FILE), None).expect("ro gauges").bytes, g.bytes);
    }
}
