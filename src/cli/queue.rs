//! `queue stats`: what waits in the durable queue, read-only.

use std::path::PathBuf;

use clap::Subcommand;

use super::Error;
use crate::config::Config;
use crate::queue::{cache, inspect, schema};

#[derive(Subcommand)]
pub enum QueueCmd {
    /// Points waiting, per destination, and the oldest one's age.
    Stats {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

pub fn command(cmd: QueueCmd) -> Result<(), Error> {
    match cmd {
        QueueCmd::Stats { config } => stats(&super::load(config.as_deref())?),
    }
}

fn stats(cfg: &Config) -> Result<(), Error> {
    let conn = schema::open_read_only(&cfg.gateway.data_dir)?;
    let s = inspect::stats(&conn, &cfg.gateway.data_dir.join(schema::DB_FILE))?;
    println!("points waiting: {}", s.points);
    println!("parked readings: {}", s.parked);
    println!("dead letters: {}", s.dead_letters);
    println!("bytes waiting:  {}", s.bytes);
    println!("bytes parked:   {}", s.parked_bytes);
    println!("bytes of dead letters: {}", s.dead_letter_bytes);
    println!("database size:  {} bytes (with WAL)", s.db_file_bytes);
    if let Some(oldest) = s.oldest_enqueued_ns {
        let age = (crate::now_ns() - oldest).max(0) / 1_000_000_000;
        println!("oldest point:   queued {age} s ago");
    }
    for (id, dest, n) in cache::destinations(&conn)? {
        println!("destination {id} {dest}: {n} waiting");
    }
    Ok(())
}
