//! `heartguard-gateway status`: one screen for an operator. The daemon serves a [`Status`] as
//! JSON at `/status`; when it cannot be reached, the command builds a smaller one from the
//! database, read-only. Both are rendered by [`render`], with the same [`Status::warnings`].
//!
//! Device serials appear here (an operator needs them), never patient data.

use serde::{Deserialize, Serialize};

use super::metrics::BindingsInfo;

/// The file in the data directory where a running daemon leaves its [`Status`] every 5 s.
pub const STATUS_FILE: &str = "status.json";
/// [`Status::origin`]: the daemon's HTTP endpoint answered.
pub const ORIGIN_DAEMON: &str = "daemon";
/// The daemon's status file, written every few seconds while it runs.
pub const ORIGIN_FILE: &str = "status file";
/// The status file the daemon wrote when it stopped.
pub const ORIGIN_STOPPED: &str = "stopped";
/// The database alone, read-only.
pub const ORIGIN_DATABASE: &str = "database";
/// A status file older than this is not taken as the word of a running daemon.
const FILE_FRESH_NS: i64 = 15 * 1_000_000_000;

/// How far back "devices seen" looks.
pub const DEVICES_WINDOW_NS: i64 = 60 * 1_000_000_000;
/// A waiting point older than this is worth a warning.
const BEHIND_NS: i64 = 60 * 1_000_000_000;
/// A device whose newest reading is this much older than its arrival is worth a warning.
const OLD_READING_NS: i64 = 5 * 60 * 1_000_000_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// [`ORIGIN_DAEMON`], [`ORIGIN_FILE`], [`ORIGIN_STOPPED`] or [`ORIGIN_DATABASE`].
    pub origin: String,
    pub gateway_id: String,
    pub version: String,
    /// When this was taken; every age below is relative to it.
    pub now_ns: i64,
    pub started_ns: Option<i64>,
    pub ready: Option<bool>,
    /// Stages that have not beaten recently, with the seconds since their last beat.
    pub stuck_stages: Vec<(String, u64)>,
    pub sources: Vec<SourceStatus>,
    /// Serial ports, by path.
    #[serde(default)]
    pub ports: Vec<PortView>,
    pub queue: Option<QueueStatus>,
    pub destinations: Vec<DestinationStatus>,
    pub bindings: Option<BindingsInfo>,
    pub bindings_sync_errors: u64,
    /// Readings not stored for want of a binding, per reason, since start.
    pub unbound: Vec<(String, u64)>,
    /// Devices heard from in the last minute, most recent first.
    pub devices: Vec<DeviceStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStatus {
    pub source: String,
    pub protocol: String,
    /// For sources with a connection (MQTT); serial ports have their own state.
    pub connected: Option<bool>,
    pub messages: u64,
    pub readings: u64,
    pub rejected: u64,
}

/// One serial port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortView {
    pub path: String,
    pub protocol: String,
    /// `opening`, `open`, `silent` (no frame for its watchdog period) or `disconnected`.
    pub state: String,
    pub frames: u64,
    pub last_frame_ns: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStatus {
    pub points: u64,
    pub bytes: u64,
    pub oldest_enqueued_ns: Option<i64>,
    pub db_file_bytes: u64,
    pub dead_letters: Vec<(String, u64)>,
    /// Readings parked, waiting for a binding (or a current copy of the bindings).
    pub parked: u64,
    /// Bytes of parked readings and of dead letters: with `bytes`, what counts against
    /// `queue.max_bytes`. (Defaults: a status file of an older version has none.)
    #[serde(default)]
    pub parked_bytes: u64,
    #[serde(default)]
    pub dead_letter_bytes: u64,
    /// Readings parked `unbound` and dead letters deleted over their caps since the daemon
    /// started.
    #[serde(default)]
    pub evicted_parked: u64,
    #[serde(default)]
    pub evicted_dead_letters: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationStatus {
    pub name: String,
    pub waiting: u64,
    pub oldest_enqueued_ns: Option<i64>,
    /// The rest is known only to the running daemon.
    pub delivered: Option<u64>,
    pub write_failures: Option<u64>,
    pub failing: Option<bool>,
    pub last_success_ns: Option<i64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub serial: String,
    pub received_ns: i64,
    pub reading_ts_ns: i64,
    /// Whether the bindings in force know this serial.
    pub bound: bool,
}

impl Status {
    /// What an operator should look at, most urgent first.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.ready == Some(false) {
            w.push("The gateway is not ready (starting, stopping, or its queue does not answer).".to_owned());
        }
        for (stage, age) in &self.stuck_stages {
            w.push(format!(
                "Stage {stage} has not beaten for {age} s: it may be stuck (the systemd watchdog restarts the gateway)."
            ));
        }
        for s in self.sources.iter().filter(|s| s.connected == Some(false)) {
            w.push(format!("Source {} ({}) is not connected.", s.source, s.protocol));
        }
        for p in self.ports.iter().filter(|p| p.state != "open") {
            w.push(format!("Serial port {} ({}) is {}.", p.path, p.protocol, p.state));
        }
        for d in &self.destinations {
            if d.failing == Some(true) {
                let why = d.last_error.as_deref().unwrap_or("unknown error");
                w.push(format!("Destination {} is failing ({why}); its points wait in the queue.", d.name));
            }
        }
        if let Some(q) = &self.queue {
            if let Some(t) = q.oldest_enqueued_ns
                && self.now_ns - t > BEHIND_NS
            {
                w.push(format!(
                    "The oldest waiting point was queued {} ago: delivery is behind or InfluxDB is unreachable.",
                    age(self.now_ns - t)
                ));
            }
            if q.parked > 0 {
                w.push(format!(
                    "{} reading(s) parked, waiting for a binding or a current copy of the bindings.",
                    q.parked
                ));
            }
            let dead: u64 = q.dead_letters.iter().map(|(_, n)| n).sum();
            if dead > 0 {
                w.push(format!("{dead} dead letter(s): see `heartguard-gateway dead-letters list`."));
            }
            if q.evicted_parked > 0 {
                w.push(format!(
                    "{} unbound parked reading(s) deleted since start: over queue.max_parked_bytes.",
                    q.evicted_parked
                ));
            }
            if q.evicted_dead_letters > 0 {
                w.push(format!(
                    "{} dead letter(s) deleted since start: over queue.max_dead_letter_bytes.",
                    q.evicted_dead_letters
                ));
            }
        }
        match &self.bindings {
            Some(b) if b.count == 0 => {
                w.push("No bindings: every reading is counted as unbound and not stored.".into())
            }
            None => w.push("No bindings cached yet.".into()),
            Some(_) => {}
        }
        if self.bindings_sync_errors > 0 {
            w.push(format!(
                "{} binding load or sync error(s) since start; the bindings in force stay (see the log).",
                self.bindings_sync_errors
            ));
        }
        let unbound: Vec<&str> = self.devices.iter().filter(|d| !d.bound).map(|d| d.serial.as_str()).collect();
        if !unbound.is_empty() {
            let more = if unbound.len() > 5 { format!(" and {} more", unbound.len() - 5) } else { String::new() };
            w.push(format!(
                "{} device(s) seen in the last minute have no binding: {}{more}.",
                unbound.len(),
                unbound.iter().take(5).copied().collect::<Vec<_>>().join(", ")
            ));
        }
        for d in self.devices.iter().filter(|d| d.received_ns - d.reading_ts_ns > OLD_READING_NS) {
            w.push(format!(
                "Device {}: its newest reading is {} older than its arrival (device clock, or a backlog it is replaying).",
                d.serial,
                age(d.received_ns - d.reading_ts_ns)
            ));
        }
        w
    }
}

/// A duration in ns, for people: `850 ms`, `42 s`, `3 min 20 s`, `2 h 5 min`, `3 d 4 h`.
pub fn age(ns: i64) -> String {
    let ns = ns.max(0);
    let s = ns / 1_000_000_000;
    match s {
        0 => format!("{} ms", ns / 1_000_000),
        1..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A size in bytes, for people.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// The one-screen summary.
pub fn render(s: &Status) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    // A status file is read later than it was written: its ages run on.
    let now_ns = if matches!(s.origin.as_str(), ORIGIN_FILE | ORIGIN_STOPPED) { crate::now_ns() } else { s.now_ns };
    let ago = |t: i64| age(now_ns - t);
    let health = match s.ready {
        Some(true) if s.stuck_stages.is_empty() => "ready",
        Some(true) => "ready, NOT HEALTHY",
        _ => "NOT READY",
    };
    let state = match s.origin.as_str() {
        ORIGIN_DAEMON => format!("running, {health}"),
        ORIGIN_FILE => format!("running, {health} (from its status file, written {} ago)", ago(s.now_ns)),
        ORIGIN_STOPPED => format!("stopped {} ago (figures from its last status file)", ago(s.now_ns)),
        _ => "daemon not reachable: figures from the database only".to_owned(),
    };

    let up = s.started_ns.map(|t| format!(", up {}", ago(t))).unwrap_or_default();
    let _ = writeln!(o, "heartguard-gateway {} — gateway {}: {state}{up}", s.version, s.gateway_id);

    for src in &s.sources {
        let connected = match src.connected {
            Some(true) => "connected; ",
            Some(false) => "NOT CONNECTED; ",
            None => "",
        };
        let _ = writeln!(
            o,
            "Source       {}/{}: {connected}{} messages, {} readings, {} rejected",
            src.source, src.protocol, src.messages, src.readings, src.rejected
        );
    }
    for p in &s.ports {
        let last =
            p.last_frame_ns.map(|t| format!("last frame {} ago", ago(t))).unwrap_or_else(|| "no frame yet".into());
        let _ = writeln!(o, "Serial port  {} ({}): {}, {} frames, {last}", p.path, p.protocol, p.state, p.frames);
    }
    match &s.queue {
        Some(q) => {
            let oldest = q.oldest_enqueued_ns.map(|t| format!(", oldest queued {} ago", ago(t))).unwrap_or_default();
            let dead: u64 = q.dead_letters.iter().map(|(_, n)| n).sum();
            let _ = writeln!(
                o,
                "Queue        {} points waiting ({}){oldest}; {} parked ({}); database {}; {dead} dead letter(s) ({})",
                q.points,
                size(q.bytes),
                q.parked,
                size(q.parked_bytes),
                size(q.db_file_bytes),
                size(q.dead_letter_bytes)
            );
        }
        None => {
            let _ = writeln!(o, "Queue        (did not answer)");
        }
    }
    if s.destinations.is_empty() {
        let _ = writeln!(o, "Destinations none yet");
    }
    for d in &s.destinations {
        let state = match d.failing {
            Some(true) => "FAILING",
            Some(false) if d.last_success_ns.is_some() => "ok",
            Some(false) => "idle",
            None => "-",
        };
        let mut line = format!("Destination  {}: {state}, {} waiting", d.name, d.waiting);
        if let Some(n) = d.delivered {
            let _ = write!(line, ", {n} delivered");
        }
        if let Some(n) = d.write_failures {
            let _ = write!(line, ", {n} failed attempts");
        }
        if let Some(t) = d.last_success_ns {
            let _ = write!(line, ", last write {} ago", ago(t));
        }
        if let (Some(true), Some(e)) = (d.failing, &d.last_error) {
            let _ = write!(line, "; last error: {e}");
        }
        let _ = writeln!(o, "{line}");
    }
    match &s.bindings {
        Some(b) => {
            let version = if b.version.is_empty() { String::new() } else { format!(", version {}", b.version) };
            let _ = writeln!(
                o,
                "Bindings     {} from {}{version}, in force for {}; {} sync error(s)",
                b.count,
                b.source,
                ago(b.loaded_ns),
                s.bindings_sync_errors
            );
        }
        None => {
            let _ = writeln!(o, "Bindings     none cached");
        }
    }
    if s.origin != ORIGIN_DATABASE {
        let unbound: u64 = s.unbound.iter().map(|(_, n)| n).sum();
        let _ = writeln!(
            o,
            "Devices      {} seen in the last minute; {unbound} unbound reading(s) since start",
            s.devices.len()
        );
        for d in s.devices.iter().take(12) {
            let _ = writeln!(
                o,
                "  {:<24} last reading {} old, received {} ago{}",
                d.serial,
                ago(d.reading_ts_ns),
                ago(d.received_ns),
                if d.bound { "" } else { ", NO BINDING" }
            );
        }
        if s.devices.len() > 12 {
            let _ = writeln!(o, "  … and {} more", s.devices.len() - 12);
        }
    }
    let warnings = s.warnings();
    if warnings.is_empty() {
        let _ = writeln!(o, "Warnings     none");
    } else {
        let _ = writeln!(o, "Warnings");
        for w in warnings {
            let _ = writeln!(o, "  - {w}");
        }
    }
    o
}

/// `heartguard-gateway status`: asks the daemon at `url` (default: `http.listen`); when it does
/// not answer, reads the database read-only. Prints the summary, or the JSON with `json`.
pub fn command(cfg: &crate::config::Config, url: Option<&str>, json: bool) -> Result<(), String> {
    let url = url.map(str::to_owned).or_else(|| {
        cfg.http.enabled.then(|| super::http::client_addr(&cfg.http.listen)).flatten().map(|a| format!("http://{a}"))
    });
    let (status, unreachable) = match url.as_deref().map(fetch) {
        Some(Ok(s)) => (s, None),
        Some(Err(e)) => (from_file_or_database(cfg)?, Some(e)),
        None => (from_file_or_database(cfg)?, Some("the HTTP endpoint is disabled (http.enabled = false)".to_owned())),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?);
        return Ok(());
    }
    if let Some(why) = unreachable {
        println!("(daemon not reachable: {why})");
    }
    print!("{}", render(&status));
    Ok(())
}

/// Fetches `/status` from a running daemon.
pub fn fetch(base: &str) -> Result<Status, String> {
    let url = format!("{}/status", base.trim_end_matches('/'));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    crate::tls::install_provider();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let resp = client.get(&url).send().await.map_err(|e| format!("{url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        let body = resp.text().await.map_err(|e| format!("{url}: {e}"))?;
        serde_json::from_str(&body).map_err(|e| format!("{url}: not a gateway status: {e}"))
    })
}

/// The daemon's status file while it is fresh (a running daemon rewrites it every 5 s), else
/// the database. The file written at a graceful stop is never taken for a running daemon.
pub fn from_file_or_database(cfg: &crate::config::Config) -> Result<Status, String> {
    let path = cfg.gateway.data_dir.join(STATUS_FILE);
    match std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Status>(&b).ok()) {
        Some(s) if s.origin == ORIGIN_FILE && crate::now_ns() - s.now_ns <= FILE_FRESH_NS => Ok(s),
        _ => from_database(cfg),
    }
}

/// What the files alone tell, read-only (safe beside a running daemon).
pub fn from_database(cfg: &crate::config::Config) -> Result<Status, String> {
    use crate::queue::{cache, inspect, schema};
    let dir = &cfg.gateway.data_dir;
    let conn = schema::open_read_only(dir).map_err(|e| e.to_string())?;
    let g = inspect::gauges(&conn, &dir.join(schema::DB_FILE), None).map_err(|e| e.to_string())?;
    let cached = cache::load_bindings(&conn).map_err(|e| e.to_string())?;
    let stored_ns = cache::bindings_stored_at(&conn).map_err(|e| e.to_string())?;
    let bindings = cached.map(|cache::CachedBindings { bindings: list, source, version }| BindingsInfo {
        count: list.len() as u64,
        source: source.split_whitespace().next().unwrap_or("none").to_owned(),
        version,
        loaded_ns: stored_ns.unwrap_or(0),
    });
    Ok(Status {
        origin: ORIGIN_DATABASE.into(),
        gateway_id: cfg.gateway.id.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        now_ns: crate::now_ns(),
        started_ns: None,
        ready: None,
        stuck_stages: Vec::new(),
        sources: Vec::new(),
        ports: Vec::new(),
        queue: Some(QueueStatus {
            points: g.points,
            bytes: g.bytes,
            oldest_enqueued_ns: g.oldest_enqueued_ns,
            db_file_bytes: g.db_file_bytes,
            dead_letters: g.dead_letters.iter().map(|(r, n)| (r.as_str().to_owned(), *n)).collect(),
            parked: g.parked.iter().map(|(_, n)| n).sum(),
            parked_bytes: g.parked_bytes,
            dead_letter_bytes: g.dead_letter_bytes,
            evicted_parked: 0,
            evicted_dead_letters: 0,
        }),
        destinations: g
            .destinations
            .into_iter()
            .map(|(d, waiting, oldest)| DestinationStatus {
                name: super::destination_label(&d),
                waiting,
                oldest_enqueued_ns: oldest,
                delivered: None,
                write_failures: None,
                failing: None,
                last_success_ns: None,
                last_error: None,
            })
            .collect(),
        bindings,
        bindings_sync_errors: 0,
        unbound: Vec::new(),
        devices: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn sample() -> Status {
        let now = 1_800_000_000 * S;
        Status {
            origin: ORIGIN_DAEMON.into(),
            gateway_id: "ward3".into(),
            version: "0.1.0".into(),
            now_ns: now,
            started_ns: Some(now - 7500 * S),
            ready: Some(true),
            stuck_stages: vec![],
            ports: vec![],
            sources: vec![SourceStatus {
                source: "mqtt".into(),
                protocol: "json".into(),
                connected: Some(true),
                messages: 1204,
                readings: 1200,
                rejected: 4,
            }],
            queue: Some(QueueStatus {
                points: 12,
                bytes: 3500,
                oldest_enqueued_ns: Some(now - 2 * S),
                db_file_bytes: 1_300_000,
                dead_letters: vec![],
                parked: 0,
                parked_bytes: 0,
                dead_letter_bytes: 0,
                evicted_parked: 0,
                evicted_dead_letters: 0,
            }),
            destinations: vec![DestinationStatus {
                name: "heartguard_vitals".into(),
                waiting: 12,
                oldest_enqueued_ns: Some(now - 2 * S),
                delivered: Some(1180),
                write_failures: Some(0),
                failing: Some(false),
                last_success_ns: Some(now - S),
                last_error: None,
            }],
            bindings: Some(BindingsInfo {
                count: 3,
                source: "file".into(),
                version: "1a2b".into(),
                loaded_ns: now - 7500 * S,
            }),
            bindings_sync_errors: 0,
            unbound: vec![("unknown_serial".into(), 0)],
            devices: vec![DeviceStatus {
                serial: "ABC-001".into(),
                received_ns: now - S,
                reading_ts_ns: now - S - 200_000_000,
                bound: true,
            }],
        }
    }

    #[test]
    fn a_healthy_gateway_fits_on_a_few_lines() {
        assert_eq!(
            render(&sample()),
            "\
heartguard-gateway 0.1.0 — gateway ward3: running, ready, up 2 h 5 min
Source       mqtt/json: connected; 1204 messages, 1200 readings, 4 rejected
Queue        12 points waiting (3.4 KiB), oldest queued 2 s ago; 0 parked (0 B); database 1.2 MiB; 0 dead letter(s) (0 B)
Destination  heartguard_vitals: ok, 12 waiting, 1180 delivered, 0 failed attempts, last write 1 s ago
Bindings     3 from file, version 1a2b, in force for 2 h 5 min; 0 sync error(s)
Devices      1 seen in the last minute; 0 unbound reading(s) since start
  ABC-001                  last reading 1 s old, received 1 s ago
Warnings     none
"
        );
    }

    #[test]
    fn trouble_is_spelled_out_in_warnings() {
        let mut s = sample();
        let now = s.now_ns;
        s.sources[0].connected = Some(false);
        s.destinations[0].failing = Some(true);
        s.destinations[0].last_error = Some("HTTP 404".into());
        if let Some(q) = &mut s.queue {
            q.oldest_enqueued_ns = Some(now - 200 * S);
            q.dead_letters = vec![("rejected".into(), 2)];
            q.evicted_parked = 40;
            q.evicted_dead_letters = 3;
        }
        s.stuck_stages = vec![("intake".into(), 14)];
        s.devices.push(DeviceStatus {
            serial: "X-9".into(),
            received_ns: now,
            reading_ts_ns: now - 600 * S,
            bound: false,
        });
        let out = render(&s);
        assert!(out.starts_with("heartguard-gateway 0.1.0 — gateway ward3: running, ready, NOT HEALTHY"), "{out}");
        assert!(out.contains("Destination  heartguard_vitals: FAILING, 12 waiting"), "{out}");
        assert!(
            out.ends_with(
                "\
Warnings
  - Stage intake has not beaten for 14 s: it may be stuck (the systemd watchdog restarts the gateway).
  - Source mqtt (json) is not connected.
  - Destination heartguard_vitals is failing (HTTP 404); its points wait in the queue.
  - The oldest waiting point was queued 3 min 20 s ago: delivery is behind or InfluxDB is unreachable.
  - 2 dead letter(s): see `heartguard-gateway dead-letters list`.
  - 40 unbound parked reading(s) deleted since start: over queue.max_parked_bytes.
  - 3 dead letter(s) deleted since start: over queue.max_dead_letter_bytes.
  - 1 device(s) seen in the last minute have no binding: X-9.
  - Device X-9: its newest reading is 10 min 0 s older than its arrival (device clock, or a backlog it is replaying).
"
            ),
            "{out}"
        );
    }

    #[test]
    fn status_survives_a_json_round_trip() {
        let s = sample();
        let back: Status = serde_json::from_str(&serde_json::to_string(&s).expect("json")).expect("parse");
        assert_eq!(back, s);
        assert_eq!((age(850_000_000), age(3 * 86_400 * S + 4 * 3600 * S)), ("850 ms".into(), "3 d 4 h".into()));
        assert_eq!((size(1023), size(5 * 1024 * 1024 * 1024)), ("1023 B".into(), "5.0 GiB".into()));
    }
}
