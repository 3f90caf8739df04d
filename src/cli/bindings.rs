//! `bindings`: the cached bindings (`list`, `show`: read-only, ids only, no personal data), and
//! the administrator's signed snapshots ([`super::snapshots`]).

use std::path::PathBuf;

use clap::Subcommand;

use super::Error;
use super::snapshots::{self, Signing, SnapshotSource};
use crate::config::Config;
use crate::queue::{cache, schema};

#[derive(Subcommand)]
pub enum BindingsCmd {
    /// Every cached binding, one line each (no personal data: ids only).
    List {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// The cached bindings of one device serial, in the bindings-file format.
    Show {
        serial: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Administrator: create an Ed25519 key pair for signing binding snapshots. The private
    /// key goes to --out (mode 0600); the public key (for bindings.trusted_keys) is printed.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Administrator: print the bindings of a bindings file, or of PostgreSQL (the config's
    /// [bindings] source and scope), in the bindings-file format.
    // The text is the command's help: `[bindings]` is the TOML section, not a link.
    #[allow(rustdoc::broken_intra_doc_links)]
    Export {
        #[command(flatten)]
        from: SnapshotSource,
    },
    /// Administrator: print a signed snapshot envelope (JSON) for a gateway.
    Sign {
        #[command(flatten)]
        signing: Signing,
    },
    /// Administrator: sign a snapshot and publish it, retained, to
    /// heartguard/gateways/{gateway}/bindings on an MQTT broker.
    Publish {
        #[command(flatten)]
        signing: Signing,
        /// mqtt://host:port of the broker the gateway listens to.
        #[arg(long)]
        broker: String,
        #[arg(long)]
        username: Option<String>,
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
}

pub fn command(cmd: BindingsCmd) -> Result<(), Error> {
    match cmd {
        BindingsCmd::List { config } => list(&super::load(config.as_deref())?),
        BindingsCmd::Show { serial, config } => show(&super::load(config.as_deref())?, &serial),
        BindingsCmd::Keygen { out } => Ok(snapshots::keygen(&out)?),
        BindingsCmd::Export { from } => {
            print!("{}", crate::bindings::file::to_toml(&snapshots::bindings(&from)?));
            Ok(())
        }
        BindingsCmd::Sign { signing } => {
            println!("{}", snapshots::signed(&signing)?);
            Ok(())
        }
        BindingsCmd::Publish { signing, broker, username, password_file } => {
            let envelope = snapshots::signed(&signing)?;
            Ok(snapshots::publish(&broker, &signing.gateway, username, password_file, envelope)?)
        }
    }
}

/// `bindings list`: where the cached copy came from, its age, and one line per binding.
fn list(cfg: &Config) -> Result<(), Error> {
    let conn = schema::open_read_only(&cfg.gateway.data_dir)?;
    let Some(cache::CachedBindings { bindings: list, source, version }) = cache::load_bindings(&conn)? else {
        println!("no bindings cached yet");
        return Ok(());
    };
    let age = cache::bindings_stored_at(&conn)
        .ok()
        .flatten()
        .map(|t| format!("{} s", (crate::now_ns() - t) / 1_000_000_000))
        .unwrap_or_else(|| "unknown".into());
    println!("source: {source}  version: {version}  bindings: {}  stored: {age} ago", list.len());
    for b in &list {
        println!(
            "{}\tstream {}\tpatient {}\t{}\t{}/{}\t{}",
            b.serial,
            b.stream_id,
            b.patient_id,
            b.signal_type,
            b.influx_bucket,
            b.measurement,
            if b.ended_at.is_some() { "ended" } else { "active" }
        );
    }
    Ok(())
}

/// `bindings show SERIAL`: the cached bindings of one serial, in the bindings-file format.
fn show(cfg: &Config, serial: &str) -> Result<(), Error> {
    let conn = schema::open_read_only(&cfg.gateway.data_dir)?;
    let Some(cache::CachedBindings { bindings: list, source, .. }) = cache::load_bindings(&conn)? else {
        println!("no bindings cached yet");
        return Ok(());
    };
    let mine: Vec<_> = list.into_iter().filter(|b| b.serial == serial).collect();
    if mine.is_empty() {
        return Err(Error::NoBinding { serial: serial.to_owned(), cached_from: source });
    }
    print!("{}", crate::bindings::file::to_toml(&mine));
    Ok(())
}
