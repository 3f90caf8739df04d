//! What the sink does to the queue, one transaction each: `lease` the oldest points of a
//! destination, `delete` a range InfluxDB stored, `dead_letter` the points it refused
//! for good.
//!
//! A segment that cannot be read is found on the way and set aside whole into the dead
//! letters (`quarantine`, reason `damaged`, its raw bytes as the line), so the rest of its
//! destination is still delivered. Left in place, it would either wedge its destination or
//! be taken as delivered by the delete of the range around it.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, params};

use super::QueueError;
use super::activity::record_delivered;
use super::dead_letters::{self, DeadLetterReason, dead_letter_size};
use super::limits::evict_over_caps;
use super::points::{SEGMENT_COLUMNS, SegmentRow, blob, delete_segment, rewrite};
use super::segment::{self, Record};
use super::state::State;

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
/// reading it again (see `delete`).
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

/// The oldest points of a destination after `after_id`, whole segments as far as the
/// limits allow. A segment that cannot be read goes to the dead letters on the way.
pub(super) fn lease(
    st: &mut State,
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
            let mut stmt = st.conn.prepare_cached(&format!(
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
        let tx = st.conn.transaction()?;
        let mut kept = st.kept;
        kept.dead_letters += quarantine(&tx, dest_id, &seg, &body, &why)?;
        let evicted = evict_over_caps(&tx, &st.limits, kept)?;
        tx.commit()?;
        st.kept_changed(kept, evicted);
        st.bytes = st.bytes.saturating_sub(seg.bytes);
        st.count(dest_id, -(seg.points as i64));
        if !out.is_empty() {
            return Ok(out);
        }
    }
}

/// The segments a delete of ids `first..=last` touches.
#[derive(Default)]
struct Range {
    /// Wholly inside the range: deleted as they are.
    whole: Vec<SegmentRow>,
    /// Points leaving partly deleted segments; all leaving points once the whole segments
    /// had to be read too.
    gone: Vec<Record>,
    /// Segments the range ends inside, with the points they keep.
    partial: Vec<(SegmentRow, Vec<Record>)>,
    /// Segments that cannot be read, with their raw content.
    damaged: Vec<(SegmentRow, Vec<u8>, segment::Damaged)>,
}

impl Range {
    /// Reads the segments of `dest_id` that hold ids of `first..=last`.
    fn read(tx: &rusqlite::Transaction<'_>, dest_id: i64, first: i64, last: i64) -> Result<Self, QueueError> {
        let mut range = Range::default();
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
                range.whole.push(seg);
                continue;
            }
            let body = blob(row, 5)?;
            match segment::decode(body, seg.first_id, seg.enqueued_ns) {
                Ok(records) => {
                    let (out, keep): (Vec<Record>, Vec<Record>) =
                        records.into_iter().partition(|r| (first..=last).contains(&r.id));
                    range.gone.extend(out);
                    range.partial.push((seg, keep));
                }
                Err(why) => range.damaged.push((seg, body.to_vec(), why)),
            }
        }
        Ok(range)
    }

    /// The points and line bytes leaving (damaged segments apart).
    fn leaving(&self) -> (u64, u64) {
        let points = self.whole.iter().map(|s| s.points).sum::<u64>() + self.gone.len() as u64;
        let bytes = self.whole.iter().map(|s| s.bytes).sum::<u64>()
            + self.gone.iter().map(|r| r.line.len() as u64 + 1).sum::<u64>();
        (points, bytes)
    }

    /// (stream key, points, latest time) per stream of the points leaving. What the sink
    /// read (`seen`) is still the range's content unless points left it since (dropped to
    /// make room, dead-lettered): then the counts differ, and the whole segments are read
    /// for their streams.
    fn streams(
        &mut self,
        tx: &rusqlite::Transaction<'_>,
        seen: Option<Delivered>,
        points: u64,
    ) -> Result<Vec<(i64, u64, i64)>, QueueError> {
        if let Some(d) = seen
            && d.points == points
        {
            return Ok(d.streams);
        }
        let mut read = tx.prepare_cached("SELECT first_id, enqueued_ns, body FROM segments WHERE last_id = ?1")?;
        for seg in &self.whole {
            let mut rows = read.query([seg.last_id])?;
            if let Some(row) = rows.next()?
                && let Ok(records) = segment::decode(blob(row, 2)?, row.get(0)?, row.get(1)?)
            {
                self.gone.extend(records);
            }
        }
        Ok(Delivered::streams_of(self.gone.iter().map(|r| (r.stream_key, r.ts_ns))))
    }
}

/// Deletes points `first..=last` of a destination once delivered, and counts them as
/// delivered. Segments wholly inside the range go as they are; one the range ends inside
/// (a lease limit smaller than a segment) keeps its other points. `seen`: what the sink
/// read of the range, if it read it whole.
pub(super) fn delete(
    st: &mut State,
    dest_id: i64,
    first: i64,
    last: i64,
    seen: Option<Delivered>,
) -> Result<u64, QueueError> {
    let tx = st.conn.transaction()?;
    let mut range = Range::read(&tx, dest_id, first, last)?;
    let (points, bytes) = range.leaving();
    let streams = range.streams(&tx, seen, points)?;
    for seg in &range.whole {
        delete_segment(&tx, seg.last_id)?;
    }
    for (seg, keep) in &range.partial {
        rewrite(&tx, seg.last_id, seg.first_id, keep, &mut st.buf)?;
    }
    let mut kept = st.kept;
    for (seg, body, why) in &range.damaged {
        kept.dead_letters += quarantine(&tx, dest_id, seg, body, why)?;
    }
    let evicted = evict_over_caps(&tx, &st.limits, kept)?;
    record_delivered(&tx, &streams)?;
    tx.commit()?;
    st.kept_changed(kept, evicted);
    let (lost_points, lost_bytes) =
        range.damaged.iter().fold((0, 0), |(p, b), (seg, ..)| (p + seg.points, b + seg.bytes));
    st.bytes = st.bytes.saturating_sub(bytes + lost_bytes);
    st.count(dest_id, -((points + lost_points) as i64));
    Ok(points)
}

/// Moves points InfluxDB refused for good (`ids`, of `dest_id`) to the dead letters with
/// the reason; returns how many were still queued.
pub(super) fn dead_letter(
    st: &mut State,
    dest_id: i64,
    ids: &[i64],
    reason: DeadLetterReason,
    status: Option<u16>,
    detail: &str,
) -> Result<u64, QueueError> {
    let now = crate::now_ns();
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let tx = st.conn.transaction()?;
    let (mut moved, mut bytes) = (0u64, 0u64);
    // Points and bytes of unreadable segments moved to the dead letters whole.
    let mut lost = (0u64, 0u64);
    let mut kept = st.kept;
    {
        let mut find = tx.prepare_cached(&format!(
            "SELECT {SEGMENT_COLUMNS} FROM segments WHERE dest_id = ?1 AND last_id >= ?2 ORDER BY last_id LIMIT 1"
        ))?;
        let mut ins = tx.prepare_cached(dead_letters::INSERT)?;
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
            rewrite(&tx, seg.last_id, seg.first_id, &keep, &mut st.buf)?;
        }
    }
    let evicted = evict_over_caps(&tx, &st.limits, kept)?;
    tx.commit()?;
    st.kept_changed(kept, evicted);
    st.bytes = st.bytes.saturating_sub(bytes + lost.1);
    st.count(dest_id, -((moved + lost.0) as i64));
    Ok(moved)
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
    tx.prepare_cached(dead_letters::INSERT)?.execute(params![
        dest_id,
        line,
        DeadLetterReason::Damaged,
        None::<u16>,
        detail,
        seg.enqueued_ns,
        crate::now_ns()
    ])?;
    delete_segment(tx, seg.last_id)?;
    Ok(dead_letter_size(&line, &detail))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::dead_letters::{self, DeadLetterFilter};
    use crate::queue::handle::QueueHandle;
    use crate::queue::points::NewPoint;
    use crate::queue::schema::open_read_write;
    use crate::queue::test_support::{dead_in_table, dest, point};
    use crate::queue::{Limits, Synchronous};

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
        assert_eq!(
            q.dead_letter(a, vec![batch[1].id], DeadLetterReason::Rejected, Some(400), "x".into()).await.expect("dead"),
            0
        );
        assert_eq!(q.delete_delivered(a, batch[0].id, batch[4].id, Delivered::of(&batch)).await.expect("delete"), 0);
        let dead = dead_letters::list(&conn, &DeadLetterFilter::default(), 10).expect("dead letters");
        assert_eq!(dead.iter().map(|d| d.reason.as_str()).collect::<Vec<_>>(), ["damaged"]);
        let g = q.gauges().await.expect("gauges");
        assert_eq!((g.points, g.bytes), (0, 0));
        assert_eq!(g.dead_letter_bytes, dead_in_table(&conn).0);
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
        let dead = dead_letters::list(&conn, &DeadLetterFilter::default(), 10).expect("dead letters");
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].reason, DeadLetterReason::Damaged);
        assert!(dead[0].detail.contains("5 points") && dead[0].detail.contains("line cut short"), "{}", dead[0].detail);
        let g = q.gauges().await.expect("gauges");
        assert_eq!((g.points, g.bytes), (10, q.stats().await.expect("stats").bytes));
        assert_eq!(g.dead_letter_bytes, dead_in_table(&conn).0, "the running figure counts the damaged segment");
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
        q.dead_letter(a, vec![third[0].id, third[1].id], DeadLetterReason::Rejected, Some(400), "x".into())
            .await
            .expect("dead");
        let n = q.delete_delivered(a, third[0].id, third[9].id, Delivered::of(&third)).await.expect("delete");
        assert_eq!(n, 8);
        let (act, running, counted) = figures(q.clone()).await;
        assert_eq!((running, counted), (0, 0));
        assert_eq!(act, [("s1".to_owned(), 9, Some(1027)), ("s2".to_owned(), 10, Some(1028))]);
    }
}
