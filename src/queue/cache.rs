//! What the gateway keeps of its configuration between runs: the destinations (InfluxDB org
//! and bucket, or database and retention policy) with the stable ids points refer to, and the
//! bindings last in force, so that it starts working offline.

use rusqlite::{Connection, OptionalExtension, params};

use super::QueueError;
use crate::model::{Binding, Destination};

/// The bindings last in force, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedBindings {
    pub bindings: Vec<Binding>,
    /// Where they came from, as the bindings module wrote it (`file …`, `postgres …`, …).
    pub source: String,
    pub version: String,
}

/// The stable id of a destination, registered on first use.
pub(super) fn destination_id(conn: &Connection, d: &Destination) -> Result<i64, QueueError> {
    conn.prepare_cached("INSERT INTO destinations (org, bucket) VALUES (?1, ?2) ON CONFLICT DO NOTHING")?
        .execute(params![d.org, d.bucket])?;
    Ok(conn
        .prepare_cached("SELECT id FROM destinations WHERE org = ?1 AND bucket = ?2")?
        .query_row(params![d.org, d.bucket], |r| r.get(0))?)
}

/// Every known destination with its number of waiting points.
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

/// Replaces the cached bindings in one transaction.
pub(super) fn replace_bindings(
    conn: &mut Connection,
    bindings: &[Binding],
    source: &str,
    version: &str,
) -> Result<(), QueueError> {
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM binding_cache", [])?;
    {
        let mut stmt = tx.prepare("INSERT INTO binding_cache (body) VALUES (?1)")?;
        for b in bindings {
            let body = serde_json::to_string(b).map_err(QueueError::EncodeBinding)?;
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

/// The cached bindings, if a copy was ever stored.
pub fn load_bindings(conn: &Connection) -> Result<Option<CachedBindings>, QueueError> {
    let meta = |key: &str| -> Result<Option<String>, QueueError> {
        Ok(conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    };
    let Some(source) = meta("bindings_source")? else {
        return Ok(None);
    };
    let version = meta("bindings_version")?.unwrap_or_default();
    let mut stmt = conn.prepare("SELECT body FROM binding_cache ORDER BY seq")?;
    let mut bindings = Vec::new();
    for body in stmt.query_map([], |r| r.get::<_, String>(0))? {
        bindings.push(serde_json::from_str(&body?).map_err(QueueError::BindingCache)?);
    }
    Ok(Some(CachedBindings { bindings, source, version }))
}

/// When the cached bindings were stored (ns since the epoch), if ever.
pub fn bindings_stored_at(conn: &Connection) -> Result<Option<i64>, QueueError> {
    let at: Option<String> =
        conn.query_row("SELECT value FROM meta WHERE key = 'bindings_stored_at'", [], |r| r.get(0)).optional()?;
    Ok(at.and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok()).and_then(|t| t.timestamp_nanos_opt()))
}
