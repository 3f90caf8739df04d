//! Opening the daemon's database at start: a bounded integrity check first, then the
//! settings and the schema ([`super::schema`]).
//!
//! Only a database that is definitely damaged is moved aside (with its WAL) and a fresh one
//! started: `quick_check` reported a problem, or SQLite said corrupt or not a database. Any
//! other failure (locked by another process, I/O, out of memory or disk space) is retried a
//! few times and then refuses the start, leaving the file as it is: its points were
//! acknowledged, and a restart (systemd) tries again.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::schema::{DB_FILE, configure, connect, open};
use super::{QueueError, Synchronous};

/// How the database is checked when the queue opens (see [`open_or_recover`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartupCheck {
    /// Longest the integrity check may run. A large backlog on slow storage takes longer than
    /// systemd waits for the start (`TimeoutStartSec=90` in the unit), so the check is cut short
    /// after this and the queue opens anyway: a damaged segment is still found when it is read.
    pub budget: std::time::Duration,
    /// Attempts at opening and checking the database when an attempt fails for a reason other
    /// than damage (locked by another process, an I/O error, out of memory or disk space).
    pub attempts: u32,
    /// Pause between those attempts.
    pub retry_pause: std::time::Duration,
}

impl Default for StartupCheck {
    fn default() -> Self {
        Self { budget: std::time::Duration::from_secs(30), attempts: 3, retry_pause: std::time::Duration::from_secs(1) }
    }
}

/// What the start-up check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    Passed,
    /// The budget ran out first; the database opened unchecked.
    CutShort,
    /// The database was damaged and moved to this path; a fresh one was started.
    MovedAside(PathBuf),
}

/// Virtual machine steps between two looks at the check's clock: a few microseconds each.
const CHECK_CLOCK_EVERY: i32 = 100;

/// Why an attempt at opening the database failed.
enum OpenFailure {
    /// Definitely damaged: `quick_check` reported a problem, or SQLite said corrupt or not a
    /// database.
    Damaged(String),
    /// Anything else (busy or locked, I/O, out of memory, full disk, cannot open): nothing
    /// says the file is damaged, so it is never moved aside for it.
    Other(QueueError),
}

impl From<rusqlite::Error> for OpenFailure {
    fn from(e: rusqlite::Error) -> Self {
        if is_corruption(&e) { Self::Damaged(e.to_string()) } else { Self::Other(e.into()) }
    }
}

impl From<QueueError> for OpenFailure {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Sqlite(e) => e.into(),
            e => Self::Other(e),
        }
    }
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase))
}

/// Opens the database after checking it. Only a database that is definitely damaged is moved
/// aside (with its WAL) and a fresh one started; any other failure is retried
/// (`check.attempts`) and then refused, leaving the file as it is: its points were
/// acknowledged, and a restart (systemd) tries again.
pub fn open_or_recover(
    path: &Path,
    sync: Synchronous,
    check: StartupCheck,
) -> Result<(Connection, Checked), QueueError> {
    let mut attempt = 1;
    let problem = loop {
        let e = match open_checked(path, sync, check.budget) {
            Ok(opened) => return Ok(opened),
            Err(OpenFailure::Damaged(problem)) => break problem,
            // Not transient (a newer schema, WAL refused): retrying cannot help.
            Err(OpenFailure::Other(e @ (QueueError::SchemaNewer { .. } | QueueError::WalRefused { .. }))) => {
                return Err(e);
            }
            Err(OpenFailure::Other(e)) => e,
        };
        if attempt >= check.attempts {
            return Err(QueueError::Unopened { path: path.to_path_buf(), attempts: attempt, last: Box::new(e) });
        }
        tracing::warn!(
            database = %path.display(),
            attempt,
            error = %e,
            "Could not open and check the queue database; retrying, the file is left as it is."
        );
        attempt += 1;
        std::thread::sleep(check.retry_pause);
    };
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let aside = path.with_file_name(format!("{DB_FILE}.damaged-{stamp}"));
    tracing::error!(
        database = %path.display(),
        moved_to = %aside.display(),
        problem = %crate::model::loggable(&problem),
        "The queue database is damaged: moved aside and starting a fresh one. Points in the damaged file are not delivered; keep it for recovery."
    );
    std::fs::rename(path, &aside)?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let mut moved = aside.as_os_str().to_owned();
        moved.push(suffix);
        let _ = std::fs::rename(&side, &moved);
    }
    Ok((open(path, sync)?, Checked::MovedAside(aside)))
}

/// One attempt: the check first, before anything is written to the file, then the pragmas
/// and the schema.
fn open_checked(
    path: &Path,
    sync: Synchronous,
    budget: std::time::Duration,
) -> Result<(Connection, Checked), OpenFailure> {
    let mut conn = connect(path)?;
    let started = std::time::Instant::now();
    conn.progress_handler(CHECK_CLOCK_EVERY, Some(move || started.elapsed() >= budget))?;
    let report = conn.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0));
    conn.progress_handler(0, None::<fn() -> bool>)?;
    let checked = match report {
        Ok(ok) if ok == "ok" => Checked::Passed,
        Ok(report) => return Err(OpenFailure::Damaged(report)),
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted) => {
            tracing::warn!(
                database = %path.display(),
                budget_ms = budget.as_millis() as u64,
                "The start-up check of the queue database was cut short after its time budget; starting anyway (a damaged segment is still found when it is read)."
            );
            Checked::CutShort
        }
        Err(e) => return Err(e.into()),
    };
    Ok((configure(conn, sync)?, checked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Limits;
    use crate::queue::handle::QueueHandle;
    use crate::queue::inspect::stats;
    use crate::queue::test_support::{closed_queue, moved_aside, point};

    #[tokio::test]
    async fn a_database_locked_during_the_start_up_check_is_left_as_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        closed_queue(dir.path(), 40).await;
        let path = dir.path().join(DB_FILE);
        // Another process keeps the database to itself (a second gateway, an operator command).
        let holder = Connection::open(&path).expect("holder");
        holder.execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;").expect("lock");
        let check =
            StartupCheck { attempts: 2, retry_pause: std::time::Duration::from_millis(10), ..StartupCheck::default() };
        let e = open_or_recover(&path, Synchronous::Normal, check).expect_err("refused while locked");
        assert!(e.to_string().contains("left as it is") && e.to_string().contains("locked"), "{e}");
        assert_eq!(moved_aside(dir.path()), Vec::<String>::new());
        drop(holder);
        let (q, _join) = QueueHandle::open(dir.path(), Synchronous::Normal, Limits::default()).expect("open");
        let all = q.lease(1, usize::MAX, usize::MAX).await.expect("lease");
        assert_eq!(
            all.iter().map(|l| l.line.clone()).collect::<Vec<_>>(),
            (0..200).map(|n| point(1, n).line).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn a_damaged_database_is_still_moved_aside() {
        for damage in ["not a database", "damaged pages"] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join(DB_FILE);
            match damage {
                "not a database" => std::fs::write(&path, vec![0x5a; 64 * 1024]).expect("garbage"),
                _ => {
                    closed_queue(dir.path(), 40).await;
                    // Every page but the first (the schema) overwritten.
                    let len = std::fs::metadata(&path).expect("db").len() as usize;
                    let mut bytes = std::fs::read(&path).expect("read");
                    assert!(len > 3 * 4096, "{len}");
                    bytes[4096..].fill(0x5a);
                    std::fs::write(&path, bytes).expect("damage");
                }
            }
            let (conn, checked) =
                open_or_recover(&path, Synchronous::Normal, StartupCheck::default()).expect("a fresh database");
            assert!(matches!(checked, Checked::MovedAside(_)), "{damage}: {checked:?}");
            assert_eq!(moved_aside(dir.path()).len(), 1, "{damage}");
            assert_eq!(stats(&conn, &path).expect("stats").points, 0, "{damage}");
        }
    }

    #[tokio::test]
    async fn a_start_up_check_over_its_budget_is_cut_short_and_the_queue_opens() {
        let dir = tempfile::tempdir().expect("tempdir");
        closed_queue(dir.path(), 300).await;
        let path = dir.path().join(DB_FILE);
        let tiny = StartupCheck { budget: std::time::Duration::ZERO, ..StartupCheck::default() };
        let (conn, checked) = open_or_recover(&path, Synchronous::Normal, tiny).expect("opens");
        assert_eq!(checked, Checked::CutShort);
        assert_eq!(moved_aside(dir.path()), Vec::<String>::new());
        assert_eq!(stats(&conn, &path).expect("stats").points, 1500);
        drop(conn);
        let (_conn, checked) = open_or_recover(&path, Synchronous::Normal, StartupCheck::default()).expect("opens");
        assert_eq!(checked, Checked::Passed, "with time enough the check runs to its end");
    }
}
