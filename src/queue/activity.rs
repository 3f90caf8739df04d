//! Streams, their activity and their data gaps: what `report` sends to PostgreSQL and
//! `activity` shows.
//!
//! A stream's id gets a small integer key on first use (`stream_key`); points carry it so
//! that activity is counted in the transaction that accepted (`record_readings`) or
//! delivered (`record_delivered`) them, and is exactly what the queue did. A gap opens when
//! a stream's readings stop for longer than its threshold (`open_gap`) and closes with the
//! next reading.

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, params};

use super::QueueError;
use super::points::NewPoint;

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

/// Counts the points' readings in the per-stream activity and closes the open gaps of their
/// streams (`open_gaps`: the streams with one), in the caller's transaction (so activity is
/// exactly what was accepted). Returns the streams whose gap it closed; the caller forgets
/// them once the transaction is committed.
pub(super) fn record_readings<'a>(
    tx: &rusqlite::Transaction<'_>,
    points: impl Iterator<Item = &'a NewPoint>,
    open_gaps: &HashSet<i64>,
) -> Result<Vec<i64>, QueueError> {
    let mut per: HashMap<i64, (u64, i64, i64)> = HashMap::new();
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

/// Counts delivered points in the per-stream activity: (stream key, points, latest time) per
/// stream, in the caller's transaction.
pub(super) fn record_delivered(tx: &rusqlite::Transaction<'_>, streams: &[(i64, u64, i64)]) -> Result<(), QueueError> {
    let mut up = tx.prepare_cached(
        "INSERT INTO activity (stream_key, delivered, last_delivered_ns) VALUES (?1, ?2, ?3)
                 ON CONFLICT (stream_key) DO UPDATE SET delivered = delivered + excluded.delivered,
                   last_delivered_ns = max(coalesce(last_delivered_ns, excluded.last_delivered_ns), excluded.last_delivered_ns)",
    )?;
    for (key, n, ts) in streams {
        up.execute(params![key, *n as i64, ts])?;
    }
    Ok(())
}

/// The key of `stream_id`, registered on first use.
pub(super) fn stream_key(conn: &Connection, stream_id: &str) -> Result<i64, QueueError> {
    conn.prepare_cached("INSERT INTO streams (stream_id) VALUES (?1) ON CONFLICT DO NOTHING")?.execute([stream_id])?;
    Ok(conn.prepare_cached("SELECT id FROM streams WHERE stream_id = ?1")?.query_row([stream_id], |r| r.get(0))?)
}

/// Opens a gap for a stream that has none open; returns whether one was opened.
pub(super) fn open_gap(
    conn: &Connection,
    stream_key: i64,
    started_ns: i64,
    threshold_ns: i64,
) -> Result<bool, QueueError> {
    let n = conn
        .prepare_cached(
            "INSERT INTO gaps (stream_key, started_ns, threshold_ns)
             SELECT ?1, ?2, ?3 WHERE NOT EXISTS (SELECT 1 FROM gaps WHERE stream_key = ?1 AND ended_ns IS NULL)
               AND NOT EXISTS (SELECT 1 FROM gaps WHERE stream_key = ?1 AND started_ns = ?2)",
        )?
        .execute(params![stream_key, started_ns, threshold_ns])?;
    Ok(n > 0)
}

/// Records what the reporter has sent: activity totals as of the snapshot and the gaps
/// in the state they were sent in.
pub(super) fn mark_reported(
    conn: &mut Connection,
    activity: &[(i64, u64, u64)],
    gaps: &[(i64, bool)],
    reported_ns: i64,
) -> Result<(), QueueError> {
    let tx = conn.transaction()?;
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

/// Streams with an open gap.
pub(super) fn open_gap_streams(conn: &Connection) -> Result<HashSet<i64>, QueueError> {
    let mut stmt = conn.prepare_cached("SELECT DISTINCT stream_key FROM gaps WHERE ended_ns IS NULL")?;
    let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every stream's activity.
pub fn list(conn: &Connection) -> Result<Vec<Activity>, QueueError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::handle::QueueHandle;
    use crate::queue::test_support::{dest, point};
    use crate::queue::{Limits, Synchronous};

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
}
