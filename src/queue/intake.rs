//! What comes into the queue, one transaction each: a group commit of intake (points to
//! deliver and readings to park, `commit`), the points of parked readings that found their
//! binding (`promote`), and parked readings that found none in time, into the dead letters
//! (`expire_parked`).
//!
//! A commit first makes room. What parked readings and dead letters will take is set aside
//! (readings parked `unbound` over their cap are deleted in the same transaction, so they
//! take their cap at most); waiting points get the rest of `max_bytes`. Over it, the policy
//! decides: `backpressure` refuses the commit (intake holds its readings unacknowledged),
//! `drop_oldest` deletes the oldest waiting points of any destination (`drop_oldest`). Less
//! free disk than `min_free_bytes` refuses it whatever the policy.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rusqlite::Connection;

use super::activity::record_readings;
use super::dead_letters::take_expired_parked;
use super::limits::{Kept, evict_over_caps};
use super::parked::{self, NewParked, ParkReason, parked_size};
use super::points::{self, NewPoint, SEGMENT_COLUMNS, SegmentRow, blob, delete_segment, first_free_id, insert_points};
use super::segment;
use super::state::State;
use super::{Full, FullPolicy, QueueError};

/// What one commit holds: points to deliver and readings to park.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub points: Vec<NewPoint>,
    pub parked: Vec<NewParked>,
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

impl AppendReport {
    /// Widens the span of dropped points to the points enqueued `first..=last`.
    fn dropped_through(&mut self, first: i64, last: i64) {
        self.dropped_span = Some(self.dropped_span.map_or((first, last), |(a, _)| (a, last)));
    }
}

/// What a commit of `new_bytes` of points may take once parked readings and dead letters
/// have theirs (`kept`, as the commit leaves them before evictions).
struct Room {
    new_bytes: u64,
    kept: Kept,
    room: u64,
}

/// Commits `batches` (each with whatever its caller waits on, `_`) in one transaction,
/// making room first; returns what had to be dropped for it.
pub(super) fn commit<R>(st: &mut State, batches: &[(Arc<Batch>, R)]) -> Result<AppendReport, QueueError> {
    let points = || batches.iter().flat_map(|(b, _)| b.points.iter());
    let Room { new_bytes, kept, room } = room(st, batches)?;
    let mut report = AppendReport::default();
    let (skip_new, new_bytes) = match st.limits.policy {
        FullPolicy::DropOldest if new_bytes > room => skip_beyond_room(points(), new_bytes, room, &mut report),
        _ => (0, new_bytes),
    };
    let skipped_bytes = report.dropped_bytes;
    let over = (st.bytes + new_bytes).saturating_sub(room);
    let mut dropped_of: HashMap<i64, u64> = HashMap::new();
    let tx = st.conn.transaction()?;
    if over > 0 {
        // Oldest first, whatever the destination: the newest readings matter most.
        let freed = drop_oldest(&tx, over, &mut report, &mut dropped_of, &mut st.buf)?;
        report.dropped_bytes += freed;
    }
    let mut next_id = first_free_id(&tx)?;
    insert_points(&tx, &mut next_id, points().skip(skip_new), st.limits.segment_points, &mut st.buf)?;
    parked::insert(&tx, batches.iter().flat_map(|(b, _)| b.parked.iter()))?;
    let evicted = evict_over_caps(&tx, &st.limits, kept)?;
    let closed = record_readings(&tx, points(), &st.open_gaps)?;
    tx.commit()?;
    st.forget_gaps(closed);
    st.bytes = (st.bytes + new_bytes).saturating_sub(report.dropped_bytes - skipped_bytes);
    st.kept_changed(kept, evicted);
    for (dest, n) in dropped_of {
        st.count(dest, -(n as i64));
    }
    st.count_points(points().skip(skip_new));
    st.has_room();
    Ok(report)
}

/// The room a commit of `batches` has, or its refusal: less free disk than
/// `min_free_bytes`, or (policy `backpressure`) more than `max_bytes` once it is in.
fn room<R>(st: &mut State, batches: &[(Arc<Batch>, R)]) -> Result<Room, QueueError> {
    let new_bytes: u64 = batches.iter().flat_map(|(b, _)| b.points.iter()).map(|p| p.line.len() as u64 + 1).sum();
    let (mut new_parked, mut new_unbound) = (0u64, 0u64);
    for p in batches.iter().flat_map(|(b, _)| b.parked.iter()) {
        new_parked += parked_size(p);
        if p.reason == ParkReason::Unbound {
            new_unbound += parked_size(p);
        }
    }
    if st.limits.min_free_bytes > 0
        && let Some(free) = free_bytes(&st.conn, &st.dir)
        && free < st.limits.min_free_bytes.saturating_add(new_bytes + new_parked)
    {
        return Err(st.full(Full::FreeSpace { min_free_bytes: st.limits.min_free_bytes, free }));
    }
    // What parked readings and dead letters take once this commits: readings parked
    // `unbound` over their cap are deleted in this same transaction, so they take their
    // cap at most. Waiting points get the rest of max_bytes.
    let unbound = st.kept.unbound + new_unbound;
    let kept = Kept { parked: st.kept.parked + new_parked, unbound, dead_letters: st.kept.dead_letters };
    let capped = kept.total() - unbound + unbound.min(st.limits.max_parked_bytes);
    let room = st.limits.max_bytes.saturating_sub(capped);
    let over = (st.bytes + new_bytes).saturating_sub(room);
    // An empty queue always takes the commit, even one larger than the limit: refusing it
    // would wait for room that can never come.
    if over > 0 && st.limits.policy == FullPolicy::Backpressure && st.bytes > 0 {
        return Err(st.full(Full::MaxBytes {
            max_bytes: st.limits.max_bytes,
            waiting: st.bytes,
            parked: st.kept.parked,
            dead_letters: st.kept.dead_letters,
        }));
    }
    Ok(Room { new_bytes, kept, room })
}

/// drop_oldest with a commit larger than the whole room: its own oldest points go too, so
/// the queue never holds more than the limit. Returns how many of its points are skipped
/// and the bytes of the others.
fn skip_beyond_room<'a>(
    points: impl Iterator<Item = &'a NewPoint>,
    mut new_bytes: u64,
    room: u64,
    report: &mut AppendReport,
) -> (usize, u64) {
    let mut skip = 0usize;
    for p in points {
        if new_bytes <= room {
            break;
        }
        new_bytes -= p.line.len() as u64 + 1;
        skip += 1;
        report.dropped += 1;
        report.dropped_bytes += p.line.len() as u64 + 1;
        report.dropped_through(p.enqueued_ns, p.enqueued_ns);
    }
    (skip, new_bytes)
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
                report.dropped_through(records[0].enqueued_ns, records[n - 1].enqueued_ns);
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
            report.dropped_through(first, last);
            freed += seg.bytes;
            report.dropped += seg.points;
            *dropped_of.entry(dest).or_insert(0) += seg.points;
            whole.push(seg.last_id);
        }
    }
    for key in whole {
        delete_segment(tx, key)?;
    }
    if let Some((seg, keep)) = partial {
        points::rewrite(tx, seg.last_id, seg.first_id, &keep, buf)?;
    }
    Ok(freed)
}

/// Queues the points of resolved parked readings, removes those readings and parks others
/// again for another reason, atomically.
pub(super) fn promote(
    st: &mut State,
    points: &[NewPoint],
    remove: &[i64],
    repark: &[(i64, ParkReason)],
) -> Result<(), QueueError> {
    let tx = st.conn.transaction()?;
    let mut next_id = first_free_id(&tx)?;
    insert_points(&tx, &mut next_id, points.iter(), st.limits.segment_points, &mut st.buf)?;
    let mut kept = st.kept;
    parked::remove(&tx, remove, |reason, size| {
        kept.parked = kept.parked.saturating_sub(size);
        if reason == ParkReason::Unbound {
            kept.unbound = kept.unbound.saturating_sub(size);
        }
    })?;
    parked::repark(&tx, repark, |before, after, size| match (before, after) {
        (ParkReason::Fresh, ParkReason::Unbound) => kept.unbound += size,
        (ParkReason::Unbound, ParkReason::Fresh) => kept.unbound = kept.unbound.saturating_sub(size),
        _ => {}
    })?;
    let evicted = evict_over_caps(&tx, &st.limits, kept)?;
    let closed = record_readings(&tx, points.iter(), &st.open_gaps)?;
    tx.commit()?;
    st.forget_gaps(closed);
    st.kept_changed(kept, evicted);
    st.bytes += points.iter().map(|p| p.line.len() as u64 + 1).sum::<u64>();
    st.count_points(points.iter());
    Ok(())
}

/// Moves readings parked before `cutoff_ns` to the dead letters (reason `unbound`); returns
/// how many.
pub(super) fn expire_parked(st: &mut State, cutoff_ns: i64) -> Result<u64, QueueError> {
    let now = crate::now_ns();
    let tx = st.conn.transaction()?;
    let (expiring, gone, gone_unbound) = parked::expiring(&tx, cutoff_ns)?;
    if expiring == 0 {
        return Ok(0);
    }
    let added = take_expired_parked(&tx, cutoff_ns, now)?;
    let n = parked::delete_expired(&tx, cutoff_ns)?;
    let kept = Kept {
        parked: st.kept.parked.saturating_sub(gone),
        unbound: st.kept.unbound.saturating_sub(gone_unbound),
        dead_letters: st.kept.dead_letters + added,
    };
    let evicted = evict_over_caps(&tx, &st.limits, kept)?;
    tx.commit()?;
    st.kept_changed(kept, evicted);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::handle::QueueHandle;
    use crate::queue::test_support::dest;
    use crate::queue::{Limits, Synchronous};

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
}
