//! The command line: the daemon and the operator's tools in one binary. `main` parses with
//! [`Cli`], installs the TLS provider and calls [`dispatch`]; each command family has a file:
//!
//! | command | file |
//! |---|---|
//! | `run`, `demo`, `simulate` (until a signal) | [`run`] |
//! | `check-config`, `default-config` | [`config`] |
//! | `status` | [`status`] |
//! | `queue stats` | [`queue`] |
//! | `bindings list`, `show`; `keygen`, `export`, `sign`, `publish` | [`bindings`], [`snapshots`] |
//! | `dead-letters list`, `export`, `replay`, `purge` | [`dead_letters`] |
//! | `activity` | [`activity`] |
//!
//! The inspecting commands open the queue's database read-only, so they are safe beside a
//! running daemon. Errors are typed ([`Error`]); what an operator reads and the exit code
//! (sysexits: 78 for a configuration to fix, 1 for any other failure; clap's usage errors
//! are 64) are part of the interface and checked by `tests/cli*.rs`.

pub mod activity;
pub mod bindings;
pub mod config;
pub mod dead_letters;
pub mod queue;
pub mod run;
pub mod snapshots;
pub mod status;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::queue::QueueError;

#[derive(Parser)]
#[command(
    name = "heartguard-gateway",
    version,
    about = "Bedside readings → HeartGuard streams → durable queue → InfluxDB"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon. Without --config it runs on its embedded defaults.
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log format, over `log.format`: `text` or `json` (one object per line).
        #[arg(long, value_enum)]
        log_format: Option<crate::telemetry::logging::LogFormat>,
    },
    /// Validate a configuration file and its bindings file; print every problem; start nothing.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the embedded default configuration (a valid starting point).
    DefaultConfig,
    /// One screen for an operator: sources and serial ports, queue, destinations, bindings,
    /// devices seen in the last minute, warnings. Asks the running daemon (http.listen);
    /// without it, reads its status file or the database, read-only.
    Status {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Read this data directory instead of the configuration's.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The daemon's HTTP endpoint, e.g. http://127.0.0.1:9187 (default: from http.listen).
        #[arg(long)]
        url: Option<String>,
        /// Print the daemon's status document (JSON) instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Inspect the durable queue (safe while the daemon runs).
    Queue {
        #[command(subcommand)]
        what: queue::QueueCmd,
    },
    /// Inspect the cached bindings (safe while the daemon runs).
    Bindings {
        #[command(subcommand)]
        what: bindings::BindingsCmd,
    },
    /// Per-stream activity: readings, deliveries, last times, open data gaps (safe while the
    /// daemon runs).
    Activity {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// A one-command demo: the daemon with simulated devices on pseudo-terminals and HL7 over
    /// loopback; no broker or database server needed (delivers to InfluxDB if reachable).
    Demo(crate::demo::DemoArgs),
    /// Play a simulated bedside device (serial port or pseudo-terminal, HL7/MLLP, MQTT JSON).
    Simulate(crate::simulate::SimArgs),
    /// Points InfluxDB refused for good: list, export, replay after the cause is fixed, purge.
    DeadLetters {
        #[command(subcommand)]
        what: dead_letters::DeadCmd,
    },
}

/// Runs one command to its end.
pub fn dispatch(command: Command) -> Result<(), Error> {
    match command {
        Command::Run { config, log_format } => run::run(config.as_deref(), log_format),
        Command::Simulate(args) => run::simulate(args),
        Command::Demo(args) => run::demo(args),
        Command::CheckConfig { config } => config::check(&config),
        Command::DefaultConfig => {
            config::print_default();
            Ok(())
        }
        Command::Status { config, data_dir, url, json } => {
            let mut cfg = load(config.as_deref())?;
            if let Some(d) = data_dir {
                cfg.gateway.data_dir = d;
            }
            status::command(&cfg, url.as_deref(), json)
        }
        Command::Queue { what } => queue::command(what),
        Command::Bindings { what } => bindings::command(what),
        Command::DeadLetters { what } => dead_letters::command(what),
        Command::Activity { config } => activity::command(&load(config.as_deref())?),
    }
}

/// The configuration at `path`, or the embedded defaults without one.
pub fn load(path: Option<&Path>) -> Result<Config, Error> {
    let Some(path) = path else {
        return Ok(Config::default());
    };
    Config::load(path).map_err(|problems| Error::Invalid {
        path: path.to_owned(),
        problems: problems.iter().map(ToString::to_string).collect(),
    })
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration or bindings file to fix; every problem is listed.
    #[error("{}: {} problem(s)", path.display(), problems.len())]
    Invalid { path: PathBuf, problems: Vec<String> },
    /// The daemon did not start or failed; [`run::run`] logged it already, in the daemon's
    /// log format and while its runtime still stood.
    #[error(transparent)]
    Daemon(#[from] run::DaemonError),
    /// A command that needs one could not build its async runtime.
    #[error("cannot start the async runtime")]
    NoRuntime(#[source] std::io::Error),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("no binding for serial {serial:?} (source: {cached_from})")]
    NoBinding { serial: String, cached_from: String },
    #[error("refusing to purge every dead letter without --all")]
    PurgeNeedsAll,
    #[error(transparent)]
    Snapshot(#[from] snapshots::SnapshotError),
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
    #[error(transparent)]
    Simulate(#[from] crate::simulate::SimError),
}

impl Error {
    /// A configuration (or bindings file) to fix, rather than a failure: exit code 78.
    pub fn is_configuration(&self) -> bool {
        matches!(self, Self::Invalid { .. }) || matches!(self, Self::Daemon(d) if d.is_configuration())
    }

    /// Tells the operator on stderr: every problem of a file to fix, one per line, or
    /// `error: …`. Daemon errors were logged where they happened.
    pub fn report(&self) {
        match self {
            Self::Invalid { problems, .. } => {
                eprintln!("{self}:");
                for p in problems {
                    eprintln!("  {p}");
                }
            }
            Self::Daemon(_) => {}
            e => eprintln!("error: {e}"),
        }
    }
}
