//! `dead-letters`: points InfluxDB refused for good. List and export read the database
//! read-only; replay (after the cause is fixed) and purge write to it, beside a running daemon
//! as well (SQLite serialises the writers).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::Error;
use crate::queue::dead_letters::{self, DeadLetterFilter};
use crate::queue::schema;

#[derive(Args)]
pub struct DeadSel {
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Only dead letters with this reason (`rejected`, `too_large`, …).
    #[arg(long)]
    reason: Option<String>,
    /// Only these dead-letter ids.
    #[arg(long = "id")]
    ids: Vec<i64>,
}

#[derive(Subcommand)]
pub enum DeadCmd {
    /// One line per dead letter (id, time, destination, reason, status, detail), and counts per reason.
    List {
        #[command(flatten)]
        sel: DeadSel,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Every selected dead letter as one JSON object per line (the line itself included).
    Export {
        #[command(flatten)]
        sel: DeadSel,
    },
    /// Move the selected dead letters back into the queue (after fixing the cause).
    Replay {
        #[command(flatten)]
        sel: DeadSel,
    },
    /// Delete the selected dead letters for good. Without --reason or --id, --all is required.
    Purge {
        #[command(flatten)]
        sel: DeadSel,
        #[arg(long)]
        all: bool,
    },
}

/// What to do with the selected dead letters.
enum Action {
    List { limit: usize },
    Export,
    Replay,
    Purge { all: bool },
}

pub fn command(cmd: DeadCmd) -> Result<(), Error> {
    let (sel, action) = match cmd {
        DeadCmd::List { sel, limit } => (sel, Action::List { limit }),
        DeadCmd::Export { sel } => (sel, Action::Export),
        DeadCmd::Replay { sel } => (sel, Action::Replay),
        DeadCmd::Purge { sel, all } => (sel, Action::Purge { all }),
    };
    let filter = DeadLetterFilter { reason: sel.reason, ids: sel.ids };
    let cfg = super::load(sel.config.as_deref())?;
    let dir = &cfg.gateway.data_dir;
    match action {
        Action::List { limit } => list(dir, &filter, limit),
        Action::Export => export(dir, &filter),
        Action::Replay => {
            let mut conn = schema::open_read_write(dir)?;
            let n = dead_letters::replay(&mut conn, &filter)?;
            println!("{n} dead letter(s) moved back into the queue.");
            Ok(())
        }
        Action::Purge { all } => {
            if !all && filter.reason.is_none() && filter.ids.is_empty() {
                return Err(Error::PurgeNeedsAll);
            }
            let mut conn = schema::open_read_write(dir)?;
            let n = dead_letters::purge(&mut conn, &filter)?;
            println!("{n} dead letter(s) deleted.");
            Ok(())
        }
    }
}

/// Counts per reason, then one line per dead letter, oldest first.
fn list(dir: &Path, filter: &DeadLetterFilter, limit: usize) -> Result<(), Error> {
    let conn = schema::open_read_only(dir)?;
    for (reason, n) in dead_letters::counts(&conn)? {
        println!("# {reason}: {n}");
    }
    for d in dead_letters::list(&conn, filter, limit)? {
        let when =
            chrono::DateTime::from_timestamp_nanos(d.failed_ns).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let status = d.status.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
        println!("{}\t{when}\t{}\t{}\t{status}\t{}", d.id, d.destination, d.reason, d.detail.replace('\n', " "));
    }
    Ok(())
}

/// Every selected dead letter as a JSON object per line.
fn export(dir: &Path, filter: &DeadLetterFilter) -> Result<(), Error> {
    let conn = schema::open_read_only(dir)?;
    for d in dead_letters::list(&conn, filter, usize::MAX)? {
        println!("{}", serde_json::to_string(&d)?);
    }
    Ok(())
}
