//! The parked table: readings that are durable and acknowledged but wait for their binding
//! (`ingest::parking` resolves them). The reason is stored as its text ([`ParkReason`]).
//!
//! Functions here work inside the caller's transaction and keep no figures; the operations
//! in [`super::intake`] keep the store's bytes of parked readings in step with what they
//! report.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, params};

use super::QueueError;

/// Why a reading is parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParkReason {
    /// Waiting for a binding copy known to be current as of the reading's time.
    Fresh,
    /// No binding covers it yet.
    Unbound,
}

impl ParkReason {
    pub const ALL: [ParkReason; 2] = [ParkReason::Fresh, ParkReason::Unbound];

    /// As stored, and as metrics label it.
    pub const fn as_str(self) -> &'static str {
        match self {
            ParkReason::Fresh => "fresh",
            ParkReason::Unbound => "unbound",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for ParkReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ToSql for ParkReason {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(self.as_str().as_bytes())))
    }
}

impl FromSql for ParkReason {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        Self::parse(text).ok_or_else(|| FromSqlError::Other(format!("unknown park reason {text:?}").into()))
    }
}

/// A reading to park: durable, acknowledged, waiting for its binding.
#[derive(Debug, Clone)]
pub struct NewParked {
    pub serial: String,
    pub ts_ns: i64,
    /// [`ParkReason::Fresh`] (waiting for a binding copy current as of `ts_ns`) or
    /// [`ParkReason::Unbound`] (no binding covers it yet).
    pub reason: ParkReason,
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

/// A parked reading's size: its stored reading and serial. (`octet_length` reads only the
/// record header, not the text.)
pub(super) const PARKED_SIZE: &str = "octet_length(serial) + octet_length(body)";

/// [`PARKED_SIZE`] of a reading not stored yet.
pub(super) fn parked_size(p: &NewParked) -> u64 {
    (p.serial.len() + p.body.len()) as u64
}

/// Parks `parked`.
pub(super) fn insert<'a>(
    tx: &rusqlite::Transaction<'_>,
    parked: impl Iterator<Item = &'a NewParked>,
) -> Result<(), QueueError> {
    let mut park =
        tx.prepare_cached("INSERT INTO parked (serial, ts_ns, reason, body, parked_ns) VALUES (?1, ?2, ?3, ?4, ?5)")?;
    for p in parked {
        park.execute(params![p.serial, p.ts_ns, p.reason, p.body, p.parked_ns])?;
    }
    Ok(())
}

/// Readings parked for `reason`, taken at or before `max_ts`, after id `after_id`, in id order.
pub(super) fn scan(
    conn: &Connection,
    reason: ParkReason,
    max_ts: i64,
    after_id: i64,
    limit: usize,
) -> Result<Vec<Parked>, QueueError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, ts_ns, body, parked_ns FROM parked WHERE reason = ?1 AND ts_ns <= ?2 AND id > ?3 ORDER BY id LIMIT ?4",
    )?;
    let rows = stmt.query_map(params![reason, max_ts, after_id, limit as i64], |r| {
        Ok(Parked { id: r.get(0)?, ts_ns: r.get(1)?, body: r.get(2)?, parked_ns: r.get(3)? })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Deletes the parked readings `ids`; `gone` learns the reason and size of each one found.
pub(super) fn remove(
    tx: &rusqlite::Transaction<'_>,
    ids: &[i64],
    mut gone: impl FnMut(ParkReason, u64),
) -> Result<(), QueueError> {
    let mut del = tx.prepare_cached(&format!("DELETE FROM parked WHERE id = ?1 RETURNING reason, {PARKED_SIZE}"))?;
    for id in ids {
        if let Some((reason, size)) =
            del.query_row([id], |r| Ok((r.get::<_, ParkReason>(0)?, r.get::<_, i64>(1)? as u64))).optional()?
        {
            gone(reason, size);
        }
    }
    Ok(())
}

/// Parks readings again for another reason; `moved` learns the reason each one found had
/// before, and its size.
pub(super) fn repark(
    tx: &rusqlite::Transaction<'_>,
    repark: &[(i64, ParkReason)],
    mut moved: impl FnMut(ParkReason, ParkReason, u64),
) -> Result<(), QueueError> {
    let mut was = tx.prepare_cached(&format!("SELECT reason, {PARKED_SIZE} FROM parked WHERE id = ?1"))?;
    let mut upd = tx.prepare_cached("UPDATE parked SET reason = ?2 WHERE id = ?1")?;
    for (id, reason) in repark {
        let Some((before, size)) =
            was.query_row([id], |r| Ok((r.get::<_, ParkReason>(0)?, r.get::<_, i64>(1)? as u64))).optional()?
        else {
            continue;
        };
        upd.execute(params![id, reason])?;
        moved(before, *reason, size);
    }
    Ok(())
}

/// What expires at `cutoff_ns`: the readings parked before it, their bytes and those of the
/// ones parked `unbound`.
pub(super) fn expiring(tx: &rusqlite::Transaction<'_>, cutoff_ns: i64) -> Result<(u64, u64, u64), QueueError> {
    let (n, bytes, unbound): (i64, i64, i64) = tx.query_row(
        &format!(
            "SELECT count(*), coalesce(sum({PARKED_SIZE}), 0),
                    coalesce(sum(CASE WHEN reason = ?2 THEN {PARKED_SIZE} END), 0)
             FROM parked WHERE parked_ns < ?1"
        ),
        params![cutoff_ns, ParkReason::Unbound],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok((n as u64, bytes as u64, unbound as u64))
}

/// Deletes the readings parked before `cutoff_ns`; returns how many.
pub(super) fn delete_expired(tx: &rusqlite::Transaction<'_>, cutoff_ns: i64) -> Result<u64, QueueError> {
    Ok(tx.execute("DELETE FROM parked WHERE parked_ns < ?1", [cutoff_ns])? as u64)
}
