//! The segments table: waiting points, a segment (see [`super::segment`]) per commit and
//! destination, keyed by its last point id.
//!
//! Ids never repeat: `first_free_id` takes them from SQLite's sequence of the table, which
//! remembers the highest key ever given, whichever connection gave it. A batch still on its
//! way to InfluxDB is deleted by its id range once written, and that range must then hold no
//! newer point.
//!
//! Functions here work inside the caller's transaction and keep no figures; the operations
//! that change the queue ([`super::intake`], [`super::delivery`]) keep the store's running
//! figures in step.

use std::collections::HashMap;

use rusqlite::{Connection, params};

use super::QueueError;
use super::segment::{self, Encoder, Record};

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

/// A segment's figures (its body apart).
#[derive(Debug, Clone, Copy)]
pub(super) struct SegmentRow {
    pub(super) last_id: i64,
    pub(super) first_id: i64,
    pub(super) points: u64,
    pub(super) bytes: u64,
    pub(super) enqueued_ns: i64,
}

impl SegmentRow {
    /// From columns `last_id, first_id, points, bytes, enqueued_ns` at `at..`.
    pub(super) fn read(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Self> {
        Ok(Self {
            last_id: row.get(at)?,
            first_id: row.get(at + 1)?,
            points: row.get::<_, i64>(at + 2)? as u64,
            bytes: row.get::<_, i64>(at + 3)? as u64,
            enqueued_ns: row.get(at + 4)?,
        })
    }
}

/// The columns [`SegmentRow::read`] reads, then the body.
pub(super) const SEGMENT_COLUMNS: &str = "last_id, first_id, points, bytes, enqueued_ns, body";

const INSERT_SEGMENT: &str = "INSERT INTO segments (last_id, first_id, dest_id, points, bytes, enqueued_ns, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// A blob column, borrowed.
pub(super) fn blob<'r>(row: &'r rusqlite::Row<'_>, i: usize) -> rusqlite::Result<&'r [u8]> {
    row.get_ref(i)?
        .as_blob()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, Box::new(e)))
}

/// The id for the next point: above every id ever given, by any connection. `sqlite_sequence`
/// keeps the highest segment key ever inserted (a segment's key is its last id), in the same
/// transaction as the segments, so nothing else needs to remember it. Ids must never repeat: a
/// batch still on its way to InfluxDB is deleted by its id range once written, and that range
/// must then not hold a newer point, even after drop_oldest emptied the queue meanwhile.
pub(super) fn first_free_id(tx: &rusqlite::Transaction<'_>) -> Result<i64, QueueError> {
    Ok(tx
        .prepare_cached("SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'segments'), 0) + 1")?
        .query_row([], |r| r.get(0))?)
}

/// Inserts `records` (ids rising, at least one) as one segment of `dest_id`.
pub(super) fn put_segment(
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

/// Deletes the segment keyed `last_id`, whatever it holds.
pub(super) fn delete_segment(tx: &rusqlite::Transaction<'_>, last_id: i64) -> Result<(), QueueError> {
    tx.prepare_cached("DELETE FROM segments WHERE last_id = ?1")?.execute([last_id])?;
    Ok(())
}

/// Replaces a segment's points with `keep` (a subset, ids unchanged), deleting it if none
/// is left. Its id bounds stay: they still enclose every id it holds.
pub(super) fn rewrite(
    tx: &rusqlite::Transaction<'_>,
    last_id: i64,
    first_id: i64,
    keep: &[Record],
    buf: &mut Vec<u8>,
) -> Result<(), QueueError> {
    if keep.is_empty() {
        return delete_segment(tx, last_id);
    }
    let enqueued_ns = segment::encode(keep, first_id, buf);
    let bytes: usize = keep.iter().map(|r| r.line.len() + 1).sum();
    tx.prepare_cached("UPDATE segments SET points = ?2, bytes = ?3, enqueued_ns = ?4, body = ?5 WHERE last_id = ?1")?
        .execute(params![last_id, keep.len() as i64, bytes as i64, enqueued_ns, &buf[..]])?;
    Ok(())
}

/// Queues `points` as segments with ids from `next_id` on: per destination in their order,
/// at most `max_points` points and `segment::MAX_BYTES` line bytes each.
pub(super) fn insert_points<'a>(
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

/// Line bytes waiting, summed over the segments.
pub(super) fn waiting_bytes(conn: &Connection) -> Result<u64, QueueError> {
    Ok(conn.query_row("SELECT coalesce(sum(bytes), 0) FROM segments", [], |r| r.get::<_, i64>(0))? as u64)
}

/// Waiting points per destination id, counted (reads the destination index).
pub(super) fn count_waiting(conn: &Connection) -> Result<HashMap<i64, u64>, QueueError> {
    let mut stmt = conn.prepare_cached("SELECT dest_id, sum(points) FROM segments GROUP BY dest_id")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every waiting line of every destination, in queue order (benchmarks and tests compare
/// what is queued with what was sent).
pub fn waiting_lines(conn: &Connection) -> Result<Vec<String>, QueueError> {
    let mut stmt = conn.prepare(&format!("SELECT {SEGMENT_COLUMNS} FROM segments ORDER BY last_id"))?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let seg = SegmentRow::read(row, 0)?;
        let records = segment::decode(blob(row, 5)?, seg.first_id, seg.enqueued_ns)?;
        out.extend(records.into_iter().map(|r| r.line));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::queue::handle::QueueHandle;
    use crate::queue::schema::open_read_only;
    use crate::queue::test_support::{dest, point};
    use crate::queue::{FullPolicy, Limits, Synchronous};

    use super::*;
    use crate::queue::delivery::Delivered;

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
}
