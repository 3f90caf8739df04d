//! `heartguard-gateway`: the daemon and the operator's tools in one binary.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use heartguard_gateway::{app, config::Config, queue::store};

/// Exit codes (sysexits.h): usage and configuration errors are told apart from failures.
const EX_USAGE: u8 = 64;
const EX_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "heartguard-gateway",
    version,
    about = "Bedside readings → HeartGuard streams → durable queue → InfluxDB"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon. Without --config it runs on its embedded defaults.
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log format, over `log.format`: `text` or `json` (one object per line).
        #[arg(long, value_enum)]
        log_format: Option<heartguard_gateway::telemetry::logging::LogFormat>,
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
        what: QueueCmd,
    },
    /// Inspect the cached bindings (safe while the daemon runs).
    Bindings {
        #[command(subcommand)]
        what: BindingsCmd,
    },
    /// Per-stream activity: readings, deliveries, last times, open data gaps (safe while the
    /// daemon runs).
    Activity {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// A one-command demo: the daemon with simulated devices on pseudo-terminals and HL7 over
    /// loopback; no broker or database server needed (delivers to InfluxDB if reachable).
    Demo(heartguard_gateway::demo::DemoArgs),
    /// Play a simulated bedside device (serial port or pseudo-terminal, HL7/MLLP, MQTT JSON).
    Simulate(heartguard_gateway::simulate::SimArgs),
    /// Points InfluxDB refused for good: list, export, replay after the cause is fixed, purge.
    DeadLetters {
        #[command(subcommand)]
        what: DeadCmd,
    },
}

#[derive(clap::Args)]
struct DeadSel {
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
enum DeadCmd {
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

#[derive(Subcommand)]
enum QueueCmd {
    /// Points waiting, per destination, and the oldest one's age.
    Stats {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BindingsCmd {
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

#[derive(clap::Args)]
struct SnapshotSource {
    /// A bindings file to read the bindings from.
    #[arg(long, conflicts_with = "config")]
    from_file: Option<PathBuf>,
    /// A gateway configuration whose [bindings] PostgreSQL source (and scope) to read.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct Signing {
    #[command(flatten)]
    from: SnapshotSource,
    /// The private key file written by `bindings keygen`.
    #[arg(long)]
    key: PathBuf,
    /// The gateway id the snapshot is for (`*`: every gateway reading the topic).
    #[arg(long)]
    gateway: String,
    /// Snapshot version; must grow with every snapshot. Default: now, in milliseconds.
    #[arg(long)]
    version: Option<u64>,
}

fn main() -> ExitCode {
    // Before anything can build a TLS configuration or an HTTP client.
    heartguard_gateway::tls::install_provider();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(EX_USAGE),
            };
        }
    };
    match cli.command {
        Command::Run { config, log_format } => run(config.as_deref(), log_format),
        Command::Simulate(args) => simulate(args),
        Command::Demo(args) => demo(args),
        Command::CheckConfig { config } => check_config(&config),
        Command::DefaultConfig => {
            print!("{}", toml::to_string_pretty(&Config::default()).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Command::Status { config, data_dir, url, json } => with_config(config.as_deref(), |c| {
            let mut c = c.clone();
            if let Some(d) = data_dir {
                c.gateway.data_dir = d;
            }
            heartguard_gateway::telemetry::status::command(&c, url.as_deref(), json)
        }),
        Command::Queue { what: QueueCmd::Stats { config } } => with_config(config.as_deref(), queue_stats),
        Command::Bindings { what: BindingsCmd::List { config } } => {
            with_config(config.as_deref(), |c| bindings(c, None))
        }
        Command::DeadLetters { what } => dead_letters(what),
        Command::Activity { config } => with_config(config.as_deref(), activity),
        Command::Bindings { what: BindingsCmd::Show { serial, config } } => {
            with_config(config.as_deref(), |c| bindings(c, Some(&serial)))
        }
        Command::Bindings { what: BindingsCmd::Keygen { out } } => report(keygen(&out)),
        Command::Bindings { what: BindingsCmd::Export { from } } => {
            report(snapshot_bindings(&from).map(|b| print!("{}", heartguard_gateway::bindings::file::to_toml(&b))))
        }
        Command::Bindings { what: BindingsCmd::Sign { signing } } => report(signed(&signing).map(|e| println!("{e}"))),
        Command::Bindings { what: BindingsCmd::Publish { signing, broker, username, password_file } } => {
            report(signed(&signing).and_then(|env| publish(&broker, &signing.gateway, username, password_file, env)))
        }
    }
}

fn load(path: Option<&Path>) -> Result<Config, ExitCode> {
    let Some(path) = path else {
        return Ok(Config::default());
    };
    Config::load(path).map_err(|problems| {
        eprintln!("{}: {} problem(s):", path.display(), problems.len());
        for p in problems {
            eprintln!("  {p}");
        }
        ExitCode::from(EX_CONFIG)
    })
}

fn with_config(path: Option<&Path>, f: impl FnOnce(&Config) -> Result<(), String>) -> ExitCode {
    match load(path) {
        Err(code) => code,
        Ok(cfg) => match f(&cfg) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(path: Option<&Path>, log_format: Option<heartguard_gateway::telemetry::logging::LogFormat>) -> ExitCode {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    heartguard_gateway::telemetry::logging::init(&cfg.log.level, log_format.unwrap_or(cfg.log.format));
    if path.is_none() {
        tracing::info!(
            "No --config given: running on the embedded defaults (see `heartguard-gateway default-config`)."
        );
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "Cannot start the async runtime.");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(app::run(cfg, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(app::StartError::Config(e)) => {
            tracing::error!(error = %e, "Configuration refused.");
            ExitCode::from(EX_CONFIG)
        }
        Err(app::StartError::Runtime(e)) => {
            tracing::error!(error = %e, "Gateway failed.");
            ExitCode::FAILURE
        }
    }
}

fn demo(args: heartguard_gateway::demo::DemoArgs) -> ExitCode {
    heartguard_gateway::telemetry::init_logging();
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread().enable_all().build() else {
        eprintln!("error: cannot start the async runtime");
        return ExitCode::FAILURE;
    };
    match rt.block_on(heartguard_gateway::demo::run(args, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn simulate(args: heartguard_gateway::simulate::SimArgs) -> ExitCode {
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() else {
        eprintln!("error: cannot start the async runtime");
        return ExitCode::FAILURE;
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let on_signal = stop.clone();
    let result = rt.block_on(async move {
        tokio::spawn(async move {
            shutdown_signal().await;
            on_signal.cancel();
        });
        heartguard_gateway::simulate::run_cli(args, stop).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (systemd) or SIGINT (a terminal), whichever comes first.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("Cannot install signal handlers; stop with SIGKILL (nothing is lost).");
        return std::future::pending().await;
    };
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = which, "Shutdown requested.");
}

fn check_config(path: &Path) -> ExitCode {
    let cfg = match load(Some(path)) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(f) = &cfg.bindings.file {
        match heartguard_gateway::bindings::file::load(f) {
            Ok(b) => println!("{}: {} binding(s) valid.", f.display(), b.len()),
            Err(problems) => {
                eprintln!("{}: {} problem(s):", f.display(), problems.len());
                for p in problems {
                    eprintln!("  {p}");
                }
                return ExitCode::from(EX_CONFIG);
            }
        }
    }
    println!("{}: configuration valid.", path.display());
    ExitCode::SUCCESS
}

fn queue_stats(cfg: &Config) -> Result<(), String> {
    let conn = store::open_read_only(&cfg.gateway.data_dir).map_err(|e| e.to_string())?;
    let s = store::stats(&conn, &cfg.gateway.data_dir.join(store::DB_FILE)).map_err(|e| e.to_string())?;
    println!("points waiting: {}", s.points);
    println!("parked readings: {}", s.parked);
    println!("dead letters: {}", s.dead_letters);
    println!("bytes waiting:  {}", s.bytes);
    println!("bytes parked:   {}", s.parked_bytes);
    println!("bytes of dead letters: {}", s.dead_letter_bytes);
    println!("database size:  {} bytes (with WAL)", s.db_file_bytes);
    if let Some(oldest) = s.oldest_enqueued_ns {
        let age = (heartguard_gateway::now_ns() - oldest).max(0) / 1_000_000_000;
        println!("oldest point:   queued {age} s ago");
    }
    for (id, dest, n) in store::destinations(&conn).map_err(|e| e.to_string())? {
        println!("destination {id} {dest}: {n} waiting");
    }
    Ok(())
}

fn bindings(cfg: &Config, serial: Option<&str>) -> Result<(), String> {
    let conn = store::open_read_only(&cfg.gateway.data_dir).map_err(|e| e.to_string())?;
    let Some((list, source, version)) = store::load_bindings(&conn).map_err(|e| e.to_string())? else {
        println!("no bindings cached yet");
        return Ok(());
    };
    match serial {
        None => {
            let stored: Option<String> =
                conn.query_row("SELECT value FROM meta WHERE key = 'bindings_stored_at'", [], |r| r.get(0)).ok();
            let age = stored
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| format!("{} s", (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds()))
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
        }
        Some(s) => {
            let mine: Vec<_> = list.into_iter().filter(|b| b.serial == s).collect();
            if mine.is_empty() {
                return Err(format!("no binding for serial {s:?} (source: {source})"));
            }
            print!("{}", heartguard_gateway::bindings::file::to_toml(&mine));
        }
    }
    Ok(())
}

fn dead_letters(cmd: DeadCmd) -> ExitCode {
    use store::DeadLetterFilter;
    let (sel, action) = match cmd {
        DeadCmd::List { sel, limit } => (sel, DeadAction::List(limit)),
        DeadCmd::Export { sel } => (sel, DeadAction::Export),
        DeadCmd::Replay { sel } => (sel, DeadAction::Replay),
        DeadCmd::Purge { sel, all } => (sel, DeadAction::Purge(all)),
    };
    let filter = DeadLetterFilter { reason: sel.reason, ids: sel.ids };
    with_config(sel.config.as_deref(), |cfg| {
        let dir = &cfg.gateway.data_dir;
        match action {
            DeadAction::List(limit) => {
                let conn = store::open_read_only(dir).map_err(|e| e.to_string())?;
                for (reason, n) in store::dead_letter_counts(&conn).map_err(|e| e.to_string())? {
                    println!("# {reason}: {n}");
                }
                for d in store::dead_letters(&conn, &filter, limit).map_err(|e| e.to_string())? {
                    let when = chrono::DateTime::from_timestamp_nanos(d.failed_ns)
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                    let status = d.status.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
                    println!(
                        "{}\t{when}\t{}\t{}\t{status}\t{}",
                        d.id,
                        d.destination,
                        d.reason,
                        d.detail.replace('\n', " ")
                    );
                }
            }
            DeadAction::Export => {
                let conn = store::open_read_only(dir).map_err(|e| e.to_string())?;
                for d in store::dead_letters(&conn, &filter, usize::MAX).map_err(|e| e.to_string())? {
                    println!("{}", serde_json::to_string(&d).map_err(|e| e.to_string())?);
                }
            }
            DeadAction::Replay => {
                let mut conn = store::open_read_write(dir).map_err(|e| e.to_string())?;
                let n = store::replay_dead_letters(&mut conn, &filter).map_err(|e| e.to_string())?;
                println!("{n} dead letter(s) moved back into the queue.");
            }
            DeadAction::Purge(all) => {
                if !all && filter.reason.is_none() && filter.ids.is_empty() {
                    return Err("refusing to purge every dead letter without --all".into());
                }
                let mut conn = store::open_read_write(dir).map_err(|e| e.to_string())?;
                let n = store::purge_dead_letters(&mut conn, &filter).map_err(|e| e.to_string())?;
                println!("{n} dead letter(s) deleted.");
            }
        }
        Ok(())
    })
}

enum DeadAction {
    List(usize),
    Export,
    Replay,
    Purge(bool),
}

fn report(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn keygen(out: &Path) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (private, public) = heartguard_gateway::bindings::push::envelope::generate_key().map_err(|e| e.to_string())?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    writeln!(f, "{private}").map_err(|e| format!("{}: {e}", out.display()))?;
    println!("{public}");
    Ok(())
}

fn snapshot_bindings(from: &SnapshotSource) -> Result<Vec<heartguard_gateway::model::Binding>, String> {
    if let Some(f) = &from.from_file {
        return heartguard_gateway::bindings::file::load(f).map_err(|p| p.join("\n"));
    }
    let path = from.config.as_deref().ok_or("give --from-file FILE or --config FILE (PostgreSQL)")?;
    let cfg = Config::load(path).map_err(|p| p.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))?;
    let src = app::pg_source(&cfg)?.ok_or("the configuration has no bindings.postgres_url_file")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(heartguard_gateway::bindings::postgres::fetch_once(&src)).map_err(|e| e.to_string())
}

fn signed(s: &Signing) -> Result<String, String> {
    use heartguard_gateway::bindings::push::envelope as push;
    let bindings = snapshot_bindings(&s.from)?;
    let key = std::fs::read_to_string(&s.key).map_err(|e| format!("{}: {e}", s.key.display()))?;
    let now = chrono::Utc::now();
    let snapshot = push::Snapshot {
        gateway: s.gateway.clone(),
        version: s.version.unwrap_or(now.timestamp_millis().max(0) as u64),
        created_at: now.to_rfc3339(),
        bindings,
    };
    push::sign(&snapshot, &key).map_err(|e| e.to_string())
}

fn publish(
    broker: &str,
    gateway: &str,
    username: Option<String>,
    password_file: Option<PathBuf>,
    envelope: String,
) -> Result<(), String> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let addr = heartguard_gateway::ingest::mqtt::config::broker_addr(broker)?;
    let mut opts = MqttOptions::new(format!("heartguard-admin-{}", std::process::id()), addr.host, addr.port);
    opts.set_max_packet_size(64 * 1024 * 1024, 64 * 1024 * 1024);
    if let Some(u) = username {
        let pw = match password_file {
            Some(f) => heartguard_gateway::config::secrets::read_secret(&f)?,
            None => String::new(),
        };
        opts.set_credentials(u, pw);
    }
    let topic = heartguard_gateway::bindings::push::topic(gateway);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let (client, mut events) = AsyncClient::new(opts, 10);
        client.publish(&topic, QoS::AtLeastOnce, true, envelope).await.map_err(|e| e.to_string())?;
        let wait = async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("{broker}: {e}")),
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), wait)
            .await
            .map_err(|_| "no acknowledgement within 30 s".to_owned())??;
        let _ = client.disconnect().await;
        println!("Published a signed snapshot for gateway {gateway} to {topic} (retained).");
        Ok(())
    })
}

fn activity(cfg: &Config) -> Result<(), String> {
    let conn = store::open_read_only(&cfg.gateway.data_dir).map_err(|e| e.to_string())?;
    let now = heartguard_gateway::now_ns();
    let ago = |ns: Option<i64>| {
        ns.map(|t| format!("{} s ago", (now - t).max(0) / 1_000_000_000)).unwrap_or_else(|| "never".into())
    };
    println!("stream\treadings\tdelivered\tlast reading\tlast delivered\tgap");
    for a in store::activity(&conn).map_err(|e| e.to_string())? {
        let gap = a.open_gap_ns.map(|g| format!("open since {}", ago(Some(g)))).unwrap_or_else(|| "-".into());
        println!(
            "{}\t{}\t{}\t{}\t{}\t{gap}",
            a.stream_id,
            a.readings,
            a.delivered,
            ago(a.last_reading_ns),
            ago(a.last_delivered_ns)
        );
    }
    Ok(())
}
