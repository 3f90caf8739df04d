//! The bytes kept besides the waiting points, parked readings and dead letters, and their
//! caps ([`Limits::max_parked_bytes`], [`Limits::max_dead_letter_bytes`]).
//!
//! Every transaction that adds to them calls [`evict_over_caps`] before it commits, with what
//! it leaves kept: over a cap, the oldest of that kind are deleted in that same transaction,
//! so the caps hold at every commit. Readings parked `fresh` count towards `max_bytes` but
//! are never deleted for a cap. The deletions are counted and logged at most once a minute
//! ([`Evictions`]).

use rusqlite::Connection;

use super::dead_letters::DEAD_LETTER_SIZE;
use super::parked::{PARKED_SIZE, ParkReason};
use super::{Limits, QueueError};

/// Bytes kept besides the waiting points: they count against `Limits::max_bytes` too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Kept {
    /// Parked readings, every reason.
    pub(super) parked: u64,
    /// Of those, the ones parked `unbound` (capped by `Limits::max_parked_bytes`).
    pub(super) unbound: u64,
    pub(super) dead_letters: u64,
}

impl Kept {
    pub(super) fn total(&self) -> u64 {
        self.parked.saturating_add(self.dead_letters)
    }

    /// What is left once `evicted` is deleted.
    pub(super) fn after(self, evicted: Evicted) -> Kept {
        Kept {
            parked: self.parked.saturating_sub(evicted.parked.1),
            unbound: self.unbound.saturating_sub(evicted.parked.1),
            dead_letters: self.dead_letters.saturating_sub(evicted.dead_letters.1),
        }
    }
}

/// Bytes of parked readings and dead letters, summed over the tables.
pub(super) fn kept_bytes(conn: &Connection) -> Result<Kept, QueueError> {
    let (parked, unbound) = conn.query_row(
        &format!(
            "SELECT coalesce(sum({PARKED_SIZE}), 0), coalesce(sum(CASE WHEN reason = ?1 THEN {PARKED_SIZE} END), 0)
             FROM parked"
        ),
        [ParkReason::Unbound],
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
pub(super) struct Evicted {
    pub(super) parked: (u64, u64),
    pub(super) dead_letters: (u64, u64),
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
pub(super) fn evict_over_caps(
    tx: &rusqlite::Transaction<'_>,
    limits: &Limits,
    kept: Kept,
) -> Result<Evicted, QueueError> {
    let mut e = Evicted::default();
    if kept.unbound > limits.max_parked_bytes {
        // `+reason`: walk the table in id order and stop once enough is freed, rather than
        // sort every unbound reading by id through the reason index.
        let filter = format!("+reason = '{}'", ParkReason::Unbound);
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
pub(super) struct Evictions {
    pub(super) total: Evicted,
    unlogged: Evicted,
    logged_at: Option<std::time::Instant>,
}

impl Evictions {
    pub(super) fn note(&mut self, e: Evicted, limits: &Limits) {
        if e.is_empty() {
            return;
        }
        self.total.add(e);
        self.unlogged.add(e);
        self.log_when_due(limits);
    }

    pub(super) fn log_when_due(&mut self, limits: &Limits) {
        if !self.unlogged.is_empty() && self.logged_at.is_none_or(|t| t.elapsed() >= EVICTIONS_LOGGED_EVERY) {
            self.log(limits);
        }
    }

    /// Logs what is not logged yet, now.
    pub(super) fn log(&mut self, limits: &Limits) {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::queue::dead_letters::{self, DeadLetterFilter, DeadLetterReason};
    use crate::queue::handle::QueueHandle;
    use crate::queue::intake::Batch;
    use crate::queue::parked::{NewParked, ParkReason};
    use crate::queue::points::NewPoint;
    use crate::queue::schema::open_read_only;
    use crate::queue::test_support::{dead_in_table, dest, parked, parked_in_table, point};
    use crate::queue::{FullPolicy, Limits, QueueError, Synchronous};

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
            let junk = (0..20).map(|i| parked(&format!("JUNK-{c:03}-{i:02}"), ParkReason::Unbound, c * 20 + i));
            let batch = Batch { points: vec![point(a, c)], parked: junk.collect() };
            q.append_shared(Arc::new(batch)).await.expect("junk never stops intake");
        }
        let conn = open_read_only(dir.path()).expect("ro");
        let (bytes, rows) = parked_in_table(&conn, ParkReason::Unbound);
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
        let (bytes, rows) = parked_in_table(&conn, ParkReason::Unbound);
        assert!(bytes <= 4 * 1024 && rows > 0, "{bytes}");
        assert_eq!((g.parked_bytes, g.unbound_bytes), (bytes, bytes));
        assert_eq!(g.parked, vec![(ParkReason::Unbound, rows)]);
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
            q.dead_letter(a, ids, DeadLetterReason::Rejected, Some(400), "x".into()).await.expect("dead letter");
        }
        let conn = open_read_only(dir.path()).expect("ro");
        let (bytes, kept) = dead_in_table(&conn);
        assert!(bytes <= 300 && bytes > 250, "{bytes}");
        let dead = dead_letters::list(&conn, &DeadLetterFilter::default(), 100).expect("dead letters");
        assert_eq!(
            dead.iter().map(|d| d.line.clone()).collect::<Vec<_>>(),
            (40 - kept as usize..40).map(|n| point(a, n).line).collect::<Vec<_>>(),
            "the newest are kept"
        );
        let g = q.gauges().await.expect("gauges");
        assert_eq!((g.dead_letter_bytes, g.evicted_dead_letters), (bytes, 40 - kept));

        // Parked readings that expire into the dead letters are held to the same cap.
        let junk = (0..10).map(|n| parked(&format!("JUNK-{n}"), ParkReason::Unbound, n)).collect();
        q.append_shared(Arc::new(Batch { points: Vec::new(), parked: junk })).await.expect("park");
        assert_eq!(q.expire_parked(i64::MAX).await.expect("expire"), 10);
        let (bytes, kept) = dead_in_table(&conn);
        assert!(bytes <= 300 && kept > 0, "{bytes}");
        let dead = dead_letters::list(&conn, &DeadLetterFilter::default(), 100).expect("dead letters");
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
        q.dead_letter(a, rows.iter().map(|r| r.id).collect(), DeadLetterReason::Rejected, Some(400), "x".into())
            .await
            .expect("dead");
        let junk = (0..30).map(|n| parked(&format!("JUNK-{n}"), ParkReason::Unbound, n)).collect();
        q.append_shared(Arc::new(Batch { points: Vec::new(), parked: junk })).await.expect("park");
        // 11-byte lines, 2,200 bytes: more than max_bytes on their own.
        let line = |n: usize| NewPoint { dest_id: a, line: format!("m v={n:03}i 1"), ..Default::default() };
        q.append((0..200).map(line).collect()).await.expect("append");
        let g = q.gauges().await.expect("gauges");
        let conn = open_read_only(dir.path()).expect("ro");
        let (parked_bytes, _) = parked_in_table(&conn, ParkReason::Unbound);
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
        let fresh: Vec<NewParked> = (0..20).map(|n| parked(&format!("ABC-{n}"), ParkReason::Fresh, n)).collect();
        let fresh_bytes: u64 = fresh.iter().map(|p| (p.serial.len() + p.body.len()) as u64).sum();
        assert!(fresh_bytes > 1000, "{fresh_bytes}");
        q.append_shared(Arc::new(Batch { points: Vec::new(), parked: fresh })).await.expect("park fresh");
        let conn = open_read_only(dir.path()).expect("ro");
        assert_eq!(parked_in_table(&conn, ParkReason::Fresh), (fresh_bytes, 20), "all kept, over the cap");
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
}
