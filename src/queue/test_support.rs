//! Helpers the queue's unit tests share.

use std::path::Path;

use rusqlite::Connection;

use super::handle::QueueHandle;
use super::parked::{NewParked, ParkReason};
use super::points::NewPoint;
use super::schema::DB_FILE;
use super::{Limits, Synchronous};
use crate::model::Destination;

pub(super) fn dest(b: &str) -> Destination {
    Destination { org: "o".into(), bucket: b.into() }
}

pub(super) fn point(dest_id: i64, n: usize) -> NewPoint {
    NewPoint { dest_id, line: format!("m v={n}i {n}"), enqueued_ns: n as i64, ..Default::default() }
}

/// A closed queue in `dir` holding `commits` commits of five points each.
pub(super) async fn closed_queue(dir: &Path, commits: usize) {
    let (q, join) = QueueHandle::open(dir, Synchronous::Normal, Limits::default()).expect("open");
    let a = q.destination_id(dest("a")).await.expect("dest");
    for c in 0..commits {
        q.append((c * 5..c * 5 + 5).map(|n| point(a, n)).collect()).await.expect("append");
    }
    q.close().await.expect("close");
    join.join().expect("thread");
}

/// Files in `dir` that a recovery moved aside.
pub(super) fn moved_aside(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{DB_FILE}.damaged-")))
        .collect()
}

/// A reading of device `serial` parked for `reason`, about 60 bytes.
pub(super) fn parked(serial: &str, reason: ParkReason, n: usize) -> NewParked {
    NewParked {
        serial: serial.into(),
        ts_ns: n as i64,
        reason,
        body: format!(r#"{{"serial":"{serial}","ts_ns":{n},"fields":{{"spo2":97}}}}"#),
        parked_ns: n as i64,
    }
}

/// (bytes, rows) of the parked readings with `reason`, summed from the table.
pub(super) fn parked_in_table(conn: &Connection, reason: ParkReason) -> (u64, u64) {
    conn.query_row(
        "SELECT coalesce(sum(length(CAST(serial AS BLOB)) + length(CAST(body AS BLOB))), 0), count(*)
         FROM parked WHERE reason = ?1",
        [reason],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )
    .expect("parked")
}

/// (bytes, rows) of the dead letters, summed from the table.
pub(super) fn dead_in_table(conn: &Connection) -> (u64, u64) {
    conn.query_row(
        "SELECT coalesce(sum(length(CAST(line AS BLOB)) + length(CAST(detail AS BLOB))), 0), count(*) FROM dead_letters",
        [],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )
    .expect("dead letters")
}
