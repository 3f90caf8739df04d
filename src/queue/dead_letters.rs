//! The dead-letters table: points that will not be delivered as they are, each with its
//! reason ([`DeadLetterReason`], stored as its text), and the operator's commands on them
//! (`dead-letters list`, `export`, `replay`, `purge`), which run on a connection of their
//! own beside the daemon.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, params};

use super::QueueError;
use super::points::{self, NewPoint};
use super::segment;
use crate::model::Destination;

/// Why a point is a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    /// InfluxDB refused the point for good: it named the line, or refused it alone.
    Rejected,
    /// Its line alone is larger than InfluxDB takes (413 for a batch of one).
    TooLarge,
    /// A parked reading no binding covered within `gateway.max_park_age_ms`.
    Unbound,
    /// A queue segment that could not be read; its raw content is the line.
    Damaged,
}

impl DeadLetterReason {
    pub const ALL: [DeadLetterReason; 4] =
        [DeadLetterReason::Rejected, DeadLetterReason::TooLarge, DeadLetterReason::Unbound, DeadLetterReason::Damaged];

    /// As stored, as metrics label it, and as `dead-letters list --reason` takes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::TooLarge => "too_large",
            DeadLetterReason::Unbound => "unbound",
            DeadLetterReason::Damaged => "damaged",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ToSql for DeadLetterReason {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(self.as_str().as_bytes())))
    }
}

impl FromSql for DeadLetterReason {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        Self::parse(text).ok_or_else(|| FromSqlError::Other(format!("unknown dead-letter reason {text:?}").into()))
    }
}

/// A point that InfluxDB refused for good, kept with the reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub destination: String,
    pub line: String,
    pub reason: DeadLetterReason,
    pub status: Option<u16>,
    pub detail: String,
    pub enqueued_ns: i64,
    pub failed_ns: i64,
}

/// Which dead letters an operator command acts on.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// As the operator wrote it: a reason no dead letter has matches none.
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

/// A dead letter's size: its line and detail.
pub(super) const DEAD_LETTER_SIZE: &str = "octet_length(line) + octet_length(detail)";

/// [`DEAD_LETTER_SIZE`] of a dead letter not stored yet.
pub(super) fn dead_letter_size(line: &str, detail: &str) -> u64 {
    (line.len() + detail.len()) as u64
}

/// Adds one dead letter: `dest_id, line, reason, status, detail, enqueued_ns, failed_ns`.
pub(super) const INSERT: &str =
    "INSERT INTO dead_letters (dest_id, line, reason, status, detail, enqueued_ns, failed_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// Moves the readings parked before `cutoff_ns` into the dead letters (reason `unbound`,
/// the stored reading as the line), in id order; the caller deletes them from the parked
/// table. Returns the bytes they take as dead letters.
pub(super) fn take_expired_parked(tx: &rusqlite::Transaction<'_>, cutoff_ns: i64, now: i64) -> Result<u64, QueueError> {
    // New dead letters get ids above every existing one.
    let after: i64 = tx.query_row("SELECT coalesce(max(id), 0) FROM dead_letters", [], |r| r.get(0))?;
    tx.execute(
        "INSERT INTO dead_letters (dest_id, line, reason, status, detail, enqueued_ns, failed_ns)
         SELECT NULL, body, ?3, NULL, 'device ' || serial || ': no binding covered the reading within gateway max_park_age_ms', parked_ns, ?2
         FROM parked WHERE parked_ns < ?1 ORDER BY id",
        params![cutoff_ns, now, DeadLetterReason::Unbound],
    )?;
    let added: i64 = tx.query_row(
        &format!("SELECT coalesce(sum({DEAD_LETTER_SIZE}), 0) FROM dead_letters WHERE id > ?1"),
        [after],
        |r| r.get(0),
    )?;
    Ok(added as u64)
}

/// Dead letters, oldest first (operator command).
pub fn list(conn: &Connection, filter: &DeadLetterFilter, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
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

/// Dead letters per reason, in the order of the reasons' text (operator command, metrics).
pub fn counts(conn: &Connection) -> Result<Vec<(DeadLetterReason, u64)>, QueueError> {
    let mut stmt = conn.prepare("SELECT reason, count(*) FROM dead_letters GROUP BY reason ORDER BY reason")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Moves dead letters back into the queue, after their cause was fixed. Returns how many.
pub fn replay(conn: &mut Connection, filter: &DeadLetterFilter) -> Result<u64, QueueError> {
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
    let mut next_id = points::first_free_id(&tx)?;
    points::insert_points(&tx, &mut next_id, points.iter(), segment::MAX_POINTS, &mut Vec::new())?;
    let n = tx.execute(
        &format!("DELETE FROM dead_letters{clause} AND dest_id IS NOT NULL"),
        rusqlite::params_from_iter(args),
    )?;
    tx.commit()?;
    Ok(n as u64)
}

/// Deletes dead letters for good. Returns how many.
pub fn purge(conn: &mut Connection, filter: &DeadLetterFilter) -> Result<u64, QueueError> {
    let (clause, args) = filter.clause();
    Ok(conn.execute(&format!("DELETE FROM dead_letters{clause}"), rusqlite::params_from_iter(args))? as u64)
}
