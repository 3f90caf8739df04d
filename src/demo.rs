//! `heartguard-gateway demo`: the daemon on its embedded defaults with simulated bedside
//! devices, on a fresh machine, with nothing else installed.
//!
//! - three serial devices (Nonin DF8, Masimo ASCII 1, GE Datex S/5) play into pseudo-terminals
//!   that the daemon reads as `[[serial]]` ports, and an HL7 monitor sends ORU^R01 messages to
//!   the daemon's MLLP listener on loopback; MQTT is off, so no broker is needed;
//! - the demo's bindings route the four made-up devices to made-up patients
//!   (`demo-patient-…`) in database `heartguard_demo`, every point tagged `demo=true`: demo
//!   data never lands among patient data;
//! - points wait in the queue in the demo's data directory and are delivered when InfluxDB
//!   (1.x API, `--influx-url`) is reachable; the demo creates its database there if it can.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::app::StartError;
use crate::config::Config;
use crate::ingest::serial::config::SerialPort;
use crate::protocols::Protocol;
use crate::simulate::{Pty, SimError, Simulation, Target};

/// The database the demo writes to.
pub const DEMO_DB: &str = "heartguard_demo";

/// Why the demo did not run, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{}: {error}", path.display())]
    File { path: PathBuf, error: std::io::Error },
    #[error("finding a free loopback port: {0}")]
    NoPort(std::io::Error),
    #[error(transparent)]
    Device(#[from] SimError),
    /// The demo's own configuration refused (its problems, `; `-separated).
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Gateway(#[from] StartError),
}

fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |error| DemoError::File { path: path.to_owned(), error }
}

/// `heartguard-gateway demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Directory for the demo's queue, bindings and device links (created if missing).
    #[arg(long, default_value = "heartguard-demo")]
    pub data_dir: PathBuf,
    /// InfluxDB (1.x API) to deliver to, if reachable; points wait in the queue meanwhile.
    #[arg(long, default_value = "http://127.0.0.1:8086")]
    pub influx_url: String,
    /// Seconds between simulated readings.
    #[arg(long, default_value_t = 1)]
    pub interval_secs: u64,
}

/// The simulated devices: (serial or EUI-64, protocol; `None` = HL7 over MLLP).
const DEVICES: [(&str, Option<Protocol>); 4] = [
    ("DEMO-NONIN-1", Some(Protocol::NoninDf8)),
    ("DEMO-MASIMO-1", Some(Protocol::MasimoAscii1)),
    ("DEMO-DATEX-1", Some(Protocol::DatexS5)),
    ("00DE00DE00DE0001", None),
];

fn bindings_toml() -> String {
    let mut out = String::from("# Written by `heartguard-gateway demo`: made-up devices and patients.\n\n");
    for (i, (serial, protocol)) in DEVICES.iter().enumerate() {
        let n = i + 1;
        let kind = protocol.map_or("hl7", Protocol::as_str);
        out.push_str(&format!(
            "[[binding]]\nserial = \"{serial}\"\ndevice_id = \"demo-device-{n}\"\nstream_id = \"demo-stream-{n}\"\npatient_id = \"demo-patient-{n}\"\norg_id = \"demo-org\"\nsignal_type = \"vital_signs\"\ninflux_org = \"demo\"\ninflux_bucket = \"{DEMO_DB}\"\nmeasurement = \"vital_signs\"\n\n[binding.tags]\ndemo = \"true\"\nprotocol = \"{kind}\"\n\n"
        ));
    }
    out
}

/// A loopback port free right now (the demo's MLLP listener).
fn free_port() -> Result<u16, DemoError> {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).map_err(DemoError::NoPort)
}

fn absolute(p: &Path) -> PathBuf {
    std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_owned())
}

/// Creates the demo's database if InfluxDB answers; best effort.
async fn create_database(influx_url: &str) {
    crate::tls::install_provider();
    let Ok(client) = reqwest::Client::builder().timeout(Duration::from_secs(3)).build() else {
        return;
    };
    let Ok(mut url) = reqwest::Url::parse(&format!("{}/query", influx_url.trim_end_matches('/'))) else {
        return;
    };
    url.query_pairs_mut().append_pair("q", &format!("CREATE DATABASE {DEMO_DB}"));
    match client.post(url).send().await {
        Ok(r) if r.status().is_success() => info!(database = DEMO_DB, "InfluxDB reachable; demo database ready."),
        Ok(r) => warn!(status = r.status().as_u16(), "InfluxDB refused CREATE DATABASE; points wait in the queue."),
        Err(_) => warn!(url = %influx_url, "InfluxDB not reachable; points wait in the queue until it is."),
    }
}

/// Runs the demo until `shutdown`.
pub async fn run(args: DemoArgs, shutdown: impl Future<Output = ()>) -> Result<(), DemoError> {
    let dir = absolute(&args.data_dir);
    let dev = dir.join("dev");
    std::fs::create_dir_all(&dev).map_err(file_error(&dev))?;
    let bindings = dir.join("demo-bindings.toml");
    std::fs::write(&bindings, bindings_toml()).map_err(file_error(&bindings))?;

    let mut cfg = Config::default();
    cfg.gateway.id = "demo".into();
    cfg.gateway.data_dir = dir.clone();
    cfg.mqtt.enabled = false;
    cfg.influx.url = args.influx_url.clone();
    cfg.bindings.file = Some(bindings);
    cfg.hl7.enabled = true;
    let hl7_addr = format!("127.0.0.1:{}", free_port()?);
    cfg.hl7.listen = hl7_addr.clone();

    let stop = CancellationToken::new();
    let interval = Duration::from_secs(args.interval_secs.max(1));
    let (ptys, sims) = devices(&mut cfg, &dev, &hl7_addr, interval)?;
    cfg.validate().map_err(|p| DemoError::Config(p.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))?;

    create_database(&args.influx_url).await;
    println!(
        "heartguard-gateway demo: 3 serial devices on pseudo-terminals ({}), an HL7 monitor on {hl7_addr}.\n\
         Data directory: {}. Points go to InfluxDB {} database {DEMO_DB} (they wait in the queue while it is away).\n\
         In another terminal:  heartguard-gateway status --data-dir {}\n\
         Stop with Ctrl-C.",
        dev.display(),
        dir.display(),
        args.influx_url,
        dir.display()
    );

    let tasks: Vec<_> = sims.into_iter().map(|sim| tokio::spawn(play(sim, stop.clone()))).collect();
    let result = crate::app::run(cfg, shutdown).await.map_err(DemoError::Gateway);
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    drop(ptys);
    result
}

/// The simulated devices: a pseudo-terminal for each serial device, linked in `dev` and
/// configured as a `[[serial]]` port, and the HL7 monitor sending to `hl7_addr`. The
/// pseudo-terminals live as long as the returned [`Pty`]s.
fn devices(
    cfg: &mut Config,
    dev: &Path,
    hl7_addr: &str,
    interval: Duration,
) -> Result<(Vec<Pty>, Vec<Simulation>), DemoError> {
    let mut ptys = Vec::new();
    let mut sims = Vec::new();
    for (serial, protocol) in DEVICES {
        let Some(protocol) = protocol else { continue };
        let pty = Pty::open()?;
        let link = dev.join(protocol.as_str());
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&pty.path, &link).map_err(file_error(&link))?;
        cfg.serial.push(SerialPort {
            path: link,
            protocol,
            baud: None,
            data_bits: None,
            parity: None,
            stop_bits: None,
            flow_control: None,
            serial: (!protocol.carries_serial()).then(|| serial.to_owned()),
            signal_type: None,
            frame_timeout_secs: 10,
        });
        sims.push(Simulation {
            target: Target::Pty { protocol, master: pty.master.clone() },
            serial: serial.into(),
            interval,
            count: None,
            start_tick: 0,
        });
        ptys.push(pty);
    }
    sims.push(Simulation {
        target: Target::Mllp { addr: hl7_addr.to_owned() },
        serial: DEVICES[3].0.into(),
        interval: interval * 5,
        count: None,
        start_tick: 0,
    });
    Ok((ptys, sims))
}

/// Plays one device until `stop`. The listener and ports come up with the daemon: retry until
/// they do.
async fn play(sim: Simulation, stop: CancellationToken) {
    while !stop.is_cancelled() {
        if let Err(e) = sim.run(stop.clone()).await {
            tracing::debug!(error = %e, "Demo device restarts.");
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
