//! The configuration file (TOML). Every struct refuses unknown keys; [`Config::validate`]
//! then reports *every* remaining problem at once, each naming its key.
//!
//! Secrets are never in this file: `*_file` keys name files that hold them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocols::{FlowControl, LineSettings, Parity, Protocol};
use crate::queue::{FullPolicy, Limits, Synchronous};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub gateway: Gateway,
    pub mqtt: Mqtt,
    pub influx: Influx,
    pub queue: Queue,
    pub bindings: Bindings,
    pub report: Report,
    /// Serial ports with a bedside device each (`[[serial]]` tables).
    pub serial: Vec<SerialPort>,
    /// HL7 v2 (IHE PCD-01) over MLLP.
    pub hl7: Hl7,
    /// The gateway clock against the devices' clocks.
    pub clock: Clock,
    pub http: Http,
    pub log: Log,
    /// The file this configuration was read from (SIGHUP reads it again); not a key.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// Reporting activity, counts and gaps back to PostgreSQL (`sql/heartguard-gateway-report.sql`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Report {
    pub enabled: bool,
    /// Connection string file; default: `bindings.postgres_url_file` (same TLS settings).
    pub postgres_url_file: Option<PathBuf>,
    pub interval_ms: u64,
    /// A stream is in a gap after `gap_factor` sample periods without a reading
    /// (`signal_streams.sample_rate_hz`)…
    pub gap_factor: f64,
    /// …and never less than this (also the threshold of streams without a sample rate).
    pub gap_min_ms: u64,
}

impl Default for Report {
    fn default() -> Self {
        Self { enabled: false, postgres_url_file: None, interval_ms: 60_000, gap_factor: 3.0, gap_min_ms: 10_000 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gateway {
    /// Names this gateway (MQTT client id, logs). Letters, digits, `-`, `_`, `.`.
    pub id: String,
    /// Holds the SQLite database: queue, binding cache.
    pub data_dir: PathBuf,
    /// How long a graceful stop may take before the process exits anyway.
    pub shutdown_grace_ms: u64,
}

impl Default for Gateway {
    fn default() -> Self {
        Self { id: "gateway".into(), data_dir: "/var/lib/heartguard-gateway".into(), shutdown_grace_ms: 10_000 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mqtt {
    /// Set to false to run without MQTT.
    pub enabled: bool,
    /// `mqtt://host:port`.
    pub url: String,
    /// Topic filters; a level written `{serial}` names the device serial.
    pub topics: Vec<String>,
    /// Fixed client id of the persistent session; default `heartguard-gateway-<gateway.id>`.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub keep_alive_secs: u64,
    /// Largest payload decoded; larger ones are counted and dropped.
    pub max_payload_bytes: usize,
    /// `mqtts://` only: CA certificates (PEM) that sign the broker's certificate.
    pub ca_file: Option<PathBuf>,
    /// `mqtts://` only: a client certificate chain (PEM) and its private key, for brokers
    /// that authenticate clients by certificate. Both or neither.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl Default for Mqtt {
    fn default() -> Self {
        Self {
            enabled: true,
            url: "mqtt://127.0.0.1:1883".into(),
            topics: vec!["devices/{serial}/vitals".into()],
            client_id: None,
            username: None,
            password_file: None,
            keep_alive_secs: 30,
            max_payload_bytes: 256 * 1024,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InfluxApi {
    /// InfluxDB 1.x: `/write?db=&rp=`, user/password.
    V1,
    /// InfluxDB 2.x (and 1.8+/3.x compatibility): `/api/v2/write?org=&bucket=`, token.
    V2,
    /// InfluxDB 3.x: `/api/v3/write_lp?db=`, token; lists rejected lines on a partial write.
    V3,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Influx {
    pub url: String,
    pub api: InfluxApi,
    /// v2: file holding the API token.
    pub token_file: Option<PathBuf>,
    /// v1: user name and the file holding the password (HTTP basic auth).
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub batch_max_lines: usize,
    pub batch_max_bytes: usize,
    pub flush_interval_ms: u64,
    pub gzip: bool,
    pub request_timeout_ms: u64,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// `https://` only: CA certificates (PEM) to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// `https://` only: a client certificate chain (PEM) and its private key. Both or neither.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl Default for Influx {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8086".into(),
            api: InfluxApi::V1,
            token_file: None,
            username: None,
            password_file: None,
            batch_max_lines: 5000,
            batch_max_bytes: 4 * 1024 * 1024,
            flush_interval_ms: 1000,
            gzip: true,
            request_timeout_ms: 30_000,
            retry_initial_ms: 500,
            retry_max_ms: 60_000,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Queue {
    /// `full` (every commit survives power loss) or `normal` (faster on slow storage; the
    /// last commits may be lost on power loss, never on a process crash).
    pub synchronous: Synchronous,
    /// Most bytes the queue keeps (about the disk space they take): waiting points (line
    /// protocol), parked readings and dead letters. The default suits a small eMMC card: about
    /// 1.5 million readings.
    pub max_bytes: u64,
    /// When `max_bytes` is reached: `drop_oldest` (counted and logged) or `backpressure`
    /// (stop acknowledging MQTT so the broker holds the data). Either acts on waiting points.
    pub full_policy: FullPolicy,
    /// Most bytes of readings parked `unbound` (stored reading and serial); over it the oldest
    /// are deleted, so readings nobody claims cannot take the waiting points' room. Not set:
    /// `max_bytes / 8`.
    pub max_parked_bytes: Option<u64>,
    /// Most bytes of dead letters (line and detail); over it the oldest are deleted. Not set:
    /// `max_bytes / 8`.
    pub max_dead_letter_bytes: Option<u64>,
    /// Intake stops, whatever the policy, when less than this is free on the data
    /// directory's filesystem, so the disk never fills up.
    pub min_free_bytes: u64,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            max_bytes: 512 * 1024 * 1024,
            full_policy: FullPolicy::DropOldest,
            max_parked_bytes: None,
            max_dead_letter_bytes: None,
            min_free_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Queue {
    pub fn limits(&self) -> Limits {
        Limits {
            max_bytes: self.max_bytes,
            policy: self.full_policy,
            max_parked_bytes: self.max_parked_bytes(),
            max_dead_letter_bytes: self.max_dead_letter_bytes(),
            min_free_bytes: self.min_free_bytes,
            ..Limits::default()
        }
    }

    /// `max_parked_bytes`, or its default: an eighth of `max_bytes`.
    pub fn max_parked_bytes(&self) -> u64 {
        self.max_parked_bytes.unwrap_or(self.max_bytes / 8)
    }

    /// `max_dead_letter_bytes`, or its default: an eighth of `max_bytes`.
    pub fn max_dead_letter_bytes(&self) -> u64 {
        self.max_dead_letter_bytes.unwrap_or(self.max_bytes / 8)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bindings {
    /// A bindings file (`[[binding]]` tables). Without a file or PostgreSQL, the cached
    /// copy is used.
    pub file: Option<PathBuf>,
    /// File holding the central database's connection string (URL or `key=value`; it may
    /// carry a password, so it lives in a file only the service user can read).
    pub postgres_url_file: Option<PathBuf>,
    /// `verify-full` (default; `require` is the same here: the certificate chain and the
    /// host name are always verified against `ca_file`) or `disable` (loopback only).
    pub sslmode: String,
    /// CA certificates (PEM) that sign the PostgreSQL server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Load only the bindings of these organizations (`patients.org_id`); empty: all.
    pub org_ids: Vec<String>,
    /// Load only these device serials; empty: all.
    pub serials: Vec<String>,
    /// Full reload this often, also when no notification came (a lost NOTIFY).
    pub refresh_interval_ms: u64,
    /// How often the freshness mark is advanced (one `SELECT now()` round trip).
    pub freshness_poll_ms: u64,
    /// PostgreSQL unreachable: readings newer than the last fresh mark wait this long, then
    /// are resolved on the cached copy (counted as stale).
    pub stale_grace_ms: u64,
    /// A binding change is stamped with its transaction's start time but becomes visible at
    /// commit; the fresh-until mark trails the database clock by this much so that changes
    /// committed within it are never missed. Transactions that move devices should be short.
    pub freshness_margin_ms: u64,
    /// A parked reading (no binding covers it) waits at most this long, then moves to the
    /// dead letters with the reason `unbound`. Ended streams are kept in the cache as long.
    pub max_park_age_ms: u64,
    /// Ed25519 public keys (hex) whose signed snapshots this gateway accepts over MQTT on
    /// `heartguard/gateways/{gateway.id}/bindings`. Empty: pushes are not taken.
    pub trusted_keys: Vec<String>,
    /// A pushed snapshot whose signed `created_at` is older than this is refused: the bound on
    /// replaying an old signed snapshot when the gateway's memory of versions is gone.
    pub push_max_age_hours: u64,
}

impl Default for Bindings {
    fn default() -> Self {
        Self {
            file: None,
            postgres_url_file: None,
            sslmode: "verify-full".into(),
            ca_file: None,
            org_ids: Vec::new(),
            serials: Vec::new(),
            refresh_interval_ms: 60_000,
            freshness_poll_ms: 250,
            stale_grace_ms: 10_000,
            freshness_margin_ms: 500,
            max_park_age_ms: 24 * 3600 * 1000,
            trusted_keys: Vec::new(),
            push_max_age_hours: 720,
        }
    }
}

/// One `[[serial]]` port. Line settings default to the protocol's (protocols.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialPort {
    /// The device path; prefer the stable `/dev/serial/by-id/...` symlink.
    pub path: PathBuf,
    pub protocol: Protocol,
    pub baud: Option<u32>,
    pub data_bits: Option<u8>,
    pub parity: Option<Parity>,
    pub stop_bits: Option<u8>,
    pub flow_control: Option<FlowControl>,
    /// The device serial (`devices.serial`); required unless the protocol carries it.
    pub serial: Option<String>,
    /// Routes readings of a device with several active streams.
    pub signal_type: Option<String>,
    /// Watchdog: no valid frame for this long is logged and counted.
    #[serde(default = "default_frame_timeout_secs")]
    pub frame_timeout_secs: u64,
}

fn default_frame_timeout_secs() -> u64 {
    30
}

impl SerialPort {
    /// The line settings in force: the configured ones over the protocol's defaults.
    pub fn line(&self) -> LineSettings {
        let d = self.protocol.line();
        LineSettings {
            baud: self.baud.unwrap_or(d.baud),
            data_bits: self.data_bits.unwrap_or(d.data_bits),
            parity: self.parity.unwrap_or(d.parity),
            stop_bits: self.stop_bits.unwrap_or(d.stop_bits),
            flow_control: self.flow_control.unwrap_or(d.flow_control),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hl7 {
    /// Off by default: the listener opens a TCP port.
    pub enabled: bool,
    /// `host:port` to listen on for MLLP connections.
    pub listen: String,
    /// Connections served at once; more are closed at once (counted; `/readyz` says so).
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed: an unplugged monitor leaves a
    /// half-open socket that would hold its slot for ever.
    pub idle_timeout_secs: u64,
    /// Largest message accepted; a larger one is refused (AR) and skipped.
    pub max_message_bytes: usize,
    /// Signal type given to HL7 readings (routes devices with several streams).
    pub signal_type: Option<String>,
    /// How times without a zone offset are read: `local` (the gateway's zone), `UTC` or a
    /// fixed offset such as `+01:00` ([`crate::protocols::hl7::time::Zone`]).
    pub time_zone: String,
    /// Peers that may connect (addresses or CIDR networks); others are closed at once. MLLP
    /// has no authentication of its own: whoever reaches the port could write vitals for a
    /// bound device.
    pub allow: Vec<String>,
    /// MLLP over TLS: the gateway's certificate chain and private key (PEM). Both or neither.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// With TLS: CA certificates (PEM) that sign the monitors' client certificates; when set,
    /// a client certificate is required.
    pub client_ca_file: Option<PathBuf>,
}

impl Default for Hl7 {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: "127.0.0.1:2575".into(),
            max_connections: 64,
            idle_timeout_secs: 300,
            max_message_bytes: 1024 * 1024,
            signal_type: None,
            time_zone: "local".into(),
            allow: vec!["127.0.0.0/8".into(), "::1".into()],
            tls_cert_file: None,
            tls_key_file: None,
            client_ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Clock {
    /// A device time further ahead of the gateway clock than this is a device clock that is
    /// wrong, not a reading from the future: refused (HL7 and MQTT JSON), counted and logged
    /// with the device. Small, because a reading stamped ahead would also be resolved against
    /// a binding that is not yet in force.
    pub future_tolerance_ms: u64,
}

impl Default for Clock {
    fn default() -> Self {
        Self { future_tolerance_ms: 120_000 }
    }
}

impl Clock {
    pub fn future_tolerance_ns(&self) -> i64 {
        i64::try_from(self.future_tolerance_ms).unwrap_or(i64::MAX / 1_000_000).saturating_mul(1_000_000)
    }
}

/// Baud rates a serial port may be given.
pub const BAUD_RATES: &[u32] = &[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400];

fn valid_signal_type(s: &str) -> bool {
    !s.is_empty() && s.len() <= 60 && !s.chars().any(char::is_control)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Serve `/metrics`, `/healthz`, `/readyz` and `/status`.
    pub enabled: bool,
    /// `address:port`. Loopback by default: the endpoint has no authentication.
    pub listen: String,
}

impl Default for Http {
    fn default() -> Self {
        Self { enabled: true, listen: "127.0.0.1:9187".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `EnvFilter` directives (`info`, `debug`, `info,heartguard_gateway::sink=debug`).
    /// `RUST_LOG` wins when set. SIGHUP applies a new value.
    pub level: String,
    /// `text` or `json` (one object per line); `run --log-format` overrides it.
    pub format: crate::telemetry::logging::LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Self { level: "info".into(), format: crate::telemetry::logging::LogFormat::Text }
    }
}

/// A problem in the file, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Where the MQTT broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    /// `mqtts://`: TLS.
    pub tls: bool,
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigProblem>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![ConfigProblem { key: path.display().to_string(), message: e.to_string() }])?;
        let mut cfg = Self::parse(&text)?;
        cfg.validate()?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses TOML; unknown keys and wrong types are refused with the key named.
    pub fn parse(text: &str) -> Result<Config, Vec<ConfigProblem>> {
        toml::from_str(text).map_err(|e| {
            let key = e.span().map(|s| key_at(text, s.start)).unwrap_or_else(|| "config".into());
            vec![ConfigProblem { key, message: e.message().trim().to_owned() }]
        })
    }

    /// Every problem in the configuration, each naming its key.
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut p = Vec::new();
        let mut bad = |key: &str, message: String| p.push(ConfigProblem { key: key.into(), message });

        let g = &self.gateway;
        if g.id.is_empty() || g.id.len() > 64 || !g.id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            bad("gateway.id", "1 to 64 characters: letters, digits, '-', '_', '.'".into());
        }
        if g.data_dir.as_os_str().is_empty() {
            bad("gateway.data_dir", "must not be empty".into());
        }
        if g.shutdown_grace_ms == 0 {
            bad("gateway.shutdown_grace_ms", "must be greater than 0".into());
        }

        let m = &self.mqtt;
        if m.enabled {
            if let Err(e) = broker_addr(&m.url) {
                bad("mqtt.url", e);
            }
            if m.topics.is_empty() {
                bad("mqtt.topics", "at least one topic filter".into());
            }
            for (i, t) in m.topics.iter().enumerate() {
                if let Err(e) = TopicPattern::parse(t) {
                    bad(&format!("mqtt.topics[{i}]"), e);
                }
            }
            if let Some(id) = &m.client_id
                && (id.is_empty() || id.len() > 23 * 4 || id.contains(['+', '#', '/']))
            {
                bad(
                    "mqtt.client_id",
                    "must be non-empty (the persistent session needs a fixed id), without '+', '#', '/'".into(),
                );
            }
            if m.password_file.is_some() && m.username.is_none() {
                bad("mqtt.password_file", "needs mqtt.username".into());
            }
            if !(2..=65_535).contains(&m.keep_alive_secs) {
                bad("mqtt.keep_alive_secs", "between 2 and 65535".into());
            }
            if !(64..=64 * 1024 * 1024).contains(&m.max_payload_bytes) {
                bad("mqtt.max_payload_bytes", "between 64 and 67108864".into());
            }
        }

        let i = &self.influx;
        match reqwest::Url::parse(&i.url) {
            Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {
                if u.scheme() == "http" {
                    for (key, f) in [
                        ("influx.ca_file", &i.ca_file),
                        ("influx.client_cert_file", &i.client_cert_file),
                        ("influx.client_key_file", &i.client_key_file),
                    ] {
                        if f.is_some() {
                            bad(key, "only with an https:// influx.url".into());
                        }
                    }
                }
            }
            _ => bad("influx.url", format!("{:?} is not an http:// or https:// URL", i.url)),
        }
        if i.client_cert_file.is_some() != i.client_key_file.is_some() {
            bad("influx.client_key_file", "client_cert_file and client_key_file go together".into());
        }
        // The client certificate is part of the TLS configuration built from the CA file;
        // without one it would silently not be presented.
        if i.client_cert_file.is_some() && i.ca_file.is_none() {
            bad(
                "influx.client_cert_file",
                "needs influx.ca_file (the CA that signs InfluxDB's certificate) to be presented".into(),
            );
        }
        match i.api {
            InfluxApi::V2 if i.token_file.is_none() => bad("influx.token_file", "required for api = \"v2\"".into()),
            InfluxApi::V1 if i.token_file.is_some() => {
                bad("influx.token_file", "only for api = \"v2\" (v1 uses username/password_file)".into())
            }
            _ => {}
        }
        if i.password_file.is_some() && i.username.is_none() {
            bad("influx.password_file", "needs influx.username".into());
        }
        if !(1..=100_000).contains(&i.batch_max_lines) {
            bad("influx.batch_max_lines", "between 1 and 100000".into());
        }
        if !(1024..=25_000_000).contains(&i.batch_max_bytes) {
            bad("influx.batch_max_bytes", "between 1024 and 25000000 (InfluxDB 1.x refuses larger bodies)".into());
        }
        if !(10..=3_600_000).contains(&i.flush_interval_ms) {
            bad("influx.flush_interval_ms", "between 10 and 3600000".into());
        }
        if i.request_timeout_ms < 100 {
            bad("influx.request_timeout_ms", "at least 100".into());
        }
        if i.retry_initial_ms == 0 || i.retry_max_ms < i.retry_initial_ms {
            bad("influx.retry_max_ms", "retry_initial_ms must be > 0 and <= retry_max_ms".into());
        }

        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            bad(
                "log.level",
                format!("{:?}: {e} (for example \"info\" or \"info,heartguard_gateway::sink=debug\")", self.log.level),
            );
        }
        if self.http.enabled && self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            bad(
                "http.listen",
                format!("{:?} is not an address:port (for example \"127.0.0.1:9187\")", self.http.listen),
            );
        }

        let q = &self.queue;
        if q.max_bytes < 64 * 1024 {
            bad("queue.max_bytes", "at least 65536".into());
        }
        let (parked, dead) = (q.max_parked_bytes(), q.max_dead_letter_bytes());
        if parked >= q.max_bytes {
            bad("queue.max_parked_bytes", format!("{parked} must be below queue.max_bytes ({})", q.max_bytes));
        }
        if dead >= q.max_bytes {
            bad("queue.max_dead_letter_bytes", format!("{dead} must be below queue.max_bytes ({})", q.max_bytes));
        } else if parked < q.max_bytes && parked.saturating_add(dead) >= q.max_bytes {
            bad(
                "queue.max_dead_letter_bytes",
                format!(
                    "{dead} and queue.max_parked_bytes ({parked}) together must stay below queue.max_bytes ({}), so \
                     that waiting points keep room",
                    q.max_bytes
                ),
            );
        }

        let b = &self.bindings;
        if b.file.is_some() && b.postgres_url_file.is_some() {
            bad("bindings.file", "choose one source: a file or bindings.postgres_url_file".into());
        }
        match b.sslmode.as_str() {
            "verify-full" | "require" => {
                if b.postgres_url_file.is_some() && b.ca_file.is_none() {
                    bad(
                        "bindings.ca_file",
                        "required with sslmode = \"verify-full\" (the server certificate is always verified)".into(),
                    );
                }
            }
            "disable" => {}
            other => bad("bindings.sslmode", format!("{other:?}: use \"verify-full\" or \"disable\" (loopback only)")),
        }
        // The reporter connects with the same TLS settings: its database must be local too.
        for (key, file) in [
            ("bindings.postgres_url_file", &b.postgres_url_file),
            ("report.postgres_url_file", &self.report.postgres_url_file),
        ] {
            if let (Some(f), "disable") = (file, b.sslmode.as_str())
                && let Ok(url) = read_secret(f)
            {
                match postgres_config(&url) {
                    Ok(c) if all_loopback(&c) => {}
                    Ok(_) => bad(
                        "bindings.sslmode",
                        format!(
                            "\"disable\" is only allowed for a database on this machine (loopback or a Unix socket); {key} names another host"
                        ),
                    ),
                    Err(e) => bad(key, e),
                }
            }
        }
        if !(50..=60_000).contains(&b.freshness_poll_ms) {
            bad("bindings.freshness_poll_ms", "between 50 and 60000".into());
        }
        if b.refresh_interval_ms < 1000 {
            bad("bindings.refresh_interval_ms", "at least 1000".into());
        }
        if b.max_park_age_ms < 1000 {
            bad("bindings.max_park_age_ms", "at least 1000".into());
        }
        let r = &self.report;
        if r.enabled && r.postgres_url_file.is_none() && b.postgres_url_file.is_none() {
            bad("report.postgres_url_file", "reporting needs a database: set it or bindings.postgres_url_file".into());
        }
        if !(1000..=86_400_000).contains(&r.interval_ms) {
            bad("report.interval_ms", "between 1000 and 86400000".into());
        }
        if !(r.gap_factor.is_finite() && r.gap_factor >= 1.0) {
            bad("report.gap_factor", "a number of sample periods, at least 1".into());
        }
        if r.gap_min_ms < 100 {
            bad("report.gap_min_ms", "at least 100".into());
        }
        for (i, k) in b.trusted_keys.iter().enumerate() {
            if k.len() != 64 || !k.chars().all(|c| c.is_ascii_hexdigit()) {
                bad(&format!("bindings.trusted_keys[{i}]"), "an Ed25519 public key: 64 hex digits".into());
            }
        }
        if !b.trusted_keys.is_empty() && (b.file.is_some() || b.postgres_url_file.is_some()) {
            bad(
                "bindings.trusted_keys",
                "signed pushes are a binding source of their own: no bindings.file or postgres_url_file with them"
                    .into(),
            );
        }
        if !(1..=87_600).contains(&b.push_max_age_hours) {
            bad("bindings.push_max_age_hours", "between 1 and 87600 (ten years)".into());
        }
        if !b.trusted_keys.is_empty() && !self.mqtt.enabled {
            bad("bindings.trusted_keys", "signed pushes arrive over MQTT: enable [mqtt]".into());
        }
        for (i, o) in b.org_ids.iter().enumerate() {
            if o.trim().is_empty() {
                bad(&format!("bindings.org_ids[{i}]"), "must not be empty".into());
            }
        }

        let mut paths = std::collections::HashSet::new();
        for (n, port) in self.serial.iter().enumerate() {
            let key = |k: &str| format!("serial[{n}].{k}");
            if port.path.as_os_str().is_empty() {
                bad(&key("path"), "must not be empty".into());
            } else if !paths.insert(&port.path) {
                bad(&key("path"), "the same port is configured twice".into());
            }
            let line = port.line();
            if !BAUD_RATES.contains(&line.baud) {
                bad(&key("baud"), format!("one of {BAUD_RATES:?}"));
            }
            if !(5..=8).contains(&line.data_bits) {
                bad(&key("data_bits"), "5, 6, 7 or 8".into());
            }
            if !(1..=2).contains(&line.stop_bits) {
                bad(&key("stop_bits"), "1 or 2".into());
            }
            match &port.serial {
                None if !port.protocol.carries_serial() => {
                    bad(&key("serial"), format!("required: {} carries no device identity", port.protocol))
                }
                Some(s) if !crate::model::valid_serial(s) => {
                    bad(&key("serial"), "1 to 80 characters without control characters, '/', '+', '#'".into())
                }
                _ => {}
            }
            if port.signal_type.as_deref().is_some_and(|s| !valid_signal_type(s)) {
                bad(&key("signal_type"), "1 to 60 characters without control characters".into());
            }
            if !(1..=86_400).contains(&port.frame_timeout_secs) {
                bad(&key("frame_timeout_secs"), "between 1 and 86400".into());
            }
        }

        let h = &self.hl7;
        if h.enabled {
            if h.listen.parse::<std::net::SocketAddr>().is_err() {
                bad("hl7.listen", format!("{:?} is not an address:port (e.g. 127.0.0.1:2575)", h.listen));
            }
            if !(1..=10_000).contains(&h.max_connections) {
                bad("hl7.max_connections", "between 1 and 10000".into());
            }
            if !(1..=86_400).contains(&h.idle_timeout_secs) {
                bad("hl7.idle_timeout_secs", "between 1 and 86400".into());
            }
            if !(1024..=64 * 1024 * 1024).contains(&h.max_message_bytes) {
                bad("hl7.max_message_bytes", "between 1024 and 67108864".into());
            }
            if h.signal_type.as_deref().is_some_and(|s| !valid_signal_type(s)) {
                bad("hl7.signal_type", "1 to 60 characters without control characters".into());
            }
            if let Err(e) = crate::protocols::hl7::time::Zone::parse(&h.time_zone) {
                bad("hl7.time_zone", e.to_string());
            }
            if h.allow.is_empty() {
                bad("hl7.allow", "empty: no monitor could connect (the default is loopback only)".into());
            }
            for (n, a) in h.allow.iter().enumerate() {
                if let Err(e) = peer_network(a) {
                    bad(&format!("hl7.allow[{n}]"), e);
                }
            }
            if h.tls_cert_file.is_some() != h.tls_key_file.is_some() {
                bad("hl7.tls_key_file", "tls_cert_file and tls_key_file go together".into());
            }
            if h.client_ca_file.is_some() && h.tls_cert_file.is_none() {
                bad("hl7.client_ca_file", "only with hl7.tls_cert_file and hl7.tls_key_file".into());
            }
            for (key, file) in [("hl7.tls_cert_file", &h.tls_cert_file), ("hl7.client_ca_file", &h.client_ca_file)] {
                if let Some(f) = file
                    && let Err(e) = std::fs::metadata(f)
                {
                    bad(key, format!("{}: {e}", f.display()));
                }
            }
            if let Some(f) = &h.tls_key_file
                && let Err(e) = secret_file_mode(f)
            {
                bad("hl7.tls_key_file", e);
            }
        }
        if !(1_000..=86_400_000).contains(&self.clock.future_tolerance_ms) {
            bad("clock.future_tolerance_ms", "between 1000 and 86400000 (24 h)".into());
        }

        if m.enabled
            && let Ok(addr) = broker_addr(&m.url)
        {
            if addr.tls && m.ca_file.is_none() {
                bad("mqtt.ca_file", "required for mqtts:// (the CA that signs the broker's certificate)".into());
            }
            for (key, f) in [
                ("mqtt.ca_file", &m.ca_file),
                ("mqtt.client_cert_file", &m.client_cert_file),
                ("mqtt.client_key_file", &m.client_key_file),
            ] {
                if !addr.tls && f.is_some() {
                    bad(key, "only with an mqtts:// mqtt.url".into());
                }
            }
            if m.client_cert_file.is_some() != m.client_key_file.is_some() {
                bad("mqtt.client_key_file", "client_cert_file and client_key_file go together".into());
            }
        }
        // Certificates are public; private keys are secrets (their mode is checked).
        for (key, file) in [
            ("mqtt.ca_file", &m.ca_file),
            ("mqtt.client_cert_file", &m.client_cert_file),
            ("influx.ca_file", &i.ca_file),
            ("influx.client_cert_file", &i.client_cert_file),
        ] {
            if let Some(f) = file
                && let Err(e) = std::fs::metadata(f)
            {
                bad(key, format!("{}: {e}", f.display()));
            }
        }
        for (key, file) in
            [("mqtt.client_key_file", &m.client_key_file), ("influx.client_key_file", &i.client_key_file)]
        {
            if let Some(f) = file
                && let Err(e) = secret_file_mode(f)
            {
                bad(key, e);
            }
        }
        for (key, file) in [
            ("mqtt.password_file", &m.password_file),
            ("influx.token_file", &i.token_file),
            ("influx.password_file", &i.password_file),
            ("bindings.file", &self.bindings.file),
            ("bindings.postgres_url_file", &self.bindings.postgres_url_file),
            ("bindings.ca_file", &self.bindings.ca_file),
            ("report.postgres_url_file", &self.report.postgres_url_file),
        ] {
            let Some(f) = file else { continue };
            let check = if key == "bindings.file" || key == "bindings.ca_file" {
                std::fs::metadata(f).map(|_| ()).map_err(|e| format!("{}: {e}", f.display()))
            } else {
                read_secret(f).map(|_| ())
            };
            if let Err(e) = check {
                bad(key, e);
            }
        }
        if p.is_empty() { Ok(()) } else { Err(p) }
    }

    pub fn mqtt_client_id(&self) -> String {
        self.mqtt.client_id.clone().unwrap_or_else(|| format!("heartguard-gateway-{}", self.gateway.id))
    }
}

/// The dotted key (`section.key`) at byte `offset` of a TOML text, for error messages.
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let section = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    if line.starts_with('[') {
        return line.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
    }
    let key = line.split('=').next().unwrap_or("").trim().trim_matches('"');
    match (section, key.is_empty()) {
        (Some(s), false) => format!("{s}.{key}"),
        (Some(s), true) => s,
        (None, false) => key.to_owned(),
        (None, true) => "config".into(),
    }
}

/// Parses a PostgreSQL connection string (URL or `key=value` form).
pub fn postgres_config(s: &str) -> Result<tokio_postgres::Config, String> {
    s.trim().parse::<tokio_postgres::Config>().map_err(|e| format!("not a PostgreSQL connection string: {e}"))
}

/// True when every host of `c` is on this machine. `hostaddr`, when given, is the address
/// actually connected to (the host name then only serves TLS and authentication), so it must
/// be loopback too.
pub fn all_loopback(c: &tokio_postgres::Config) -> bool {
    !c.get_hosts().is_empty()
        && c.get_hosts().iter().all(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => {
                name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
            }
            tokio_postgres::config::Host::Unix(_) => true,
        })
        && c.get_hostaddrs().iter().all(|ip| ip.is_loopback())
}

/// Parses `mqtt://host[:port]`.
pub fn broker_addr(url: &str) -> Result<BrokerAddr, String> {
    let (rest, tls) = match (url.strip_prefix("mqtt://"), url.strip_prefix("mqtts://")) {
        (Some(r), _) => (r, false),
        (_, Some(r)) => (r, true),
        _ => return Err(format!("{url:?} must start with mqtt:// or mqtts://")),
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| format!("{p:?} is not a port number"))?)
        }
        _ => (rest, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return Err(format!("{url:?} has no host"));
    }
    Ok(BrokerAddr { host: host.to_owned(), port, tls })
}

/// A configured topic filter: what to subscribe to and where the serial sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    /// The MQTT filter (`{serial}` replaced by `+`).
    pub filter: String,
    /// Index of the `{serial}` level, if any.
    pub serial_level: Option<usize>,
}

impl TopicPattern {
    pub fn parse(t: &str) -> Result<Self, String> {
        if t.is_empty() {
            return Err("must not be empty".into());
        }
        let levels: Vec<&str> = t.split('/').collect();
        let mut serial_level = None;
        for (i, l) in levels.iter().enumerate() {
            match *l {
                "{serial}" if serial_level.is_none() => serial_level = Some(i),
                "{serial}" => return Err("{serial} may appear once".into()),
                "#" if i + 1 != levels.len() => return Err("'#' must be the last level".into()),
                l if l != "#" && l != "+" && (l.contains(['+', '#', '{', '}'])) => {
                    return Err(format!("level {l:?}: wildcards must fill a whole level"));
                }
                _ => {}
            }
        }
        let filter = levels.iter().map(|l| if *l == "{serial}" { "+" } else { l }).collect::<Vec<_>>().join("/");
        Ok(Self { filter, serial_level })
    }

    /// The serial named by `topic`, when this pattern matches it and has a `{serial}` level.
    pub fn serial_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let idx = self.serial_level?;
        if !topic_matches(&self.filter, topic) {
            return None;
        }
        topic.split('/').nth(idx)
    }
}

/// MQTT filter matching (`+` one level, `#` the rest).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match (f, t.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(l)) if f == l => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

/// A peer address (`10.20.1.7`, `::1`) or network (`10.20.0.0/16`) of `hl7.allow`.
pub fn peer_network(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    let net = if s.contains('/') {
        s.parse::<ipnet::IpNet>().ok()
    } else {
        s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from)
    };
    net.ok_or_else(|| format!("{s:?} is not an address or a CIDR network (e.g. 10.20.0.0/16)"))
}

/// Refuses a secret file (password, token, connection string, private key) with any
/// permission bit for its group or other users: a secret others can read is a leak waiting to
/// happen. Give it mode 0600, owned by the service user.
pub fn secret_file_mode(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{}: readable by group or others (mode {:o}); make it readable by the service user only (chmod 600)",
            path.display(),
            mode & 0o777
        ));
    }
    Ok(())
}

/// Reads a secret file, trimming one trailing newline. Refuses an empty secret.
pub fn read_secret(path: &Path) -> Result<String, String> {
    secret_file_mode(path)?;
    let s = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let s = s.strip_suffix('\n').map(|s| s.strip_suffix('\r').unwrap_or(s)).unwrap_or(&s).to_owned();
    if s.is_empty() {
        return Err(format!("{}: empty", path.display()));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_readable_by_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("token");
        std::fs::write(&f, "s3cr3t\n").expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(read_secret(&f).expect_err("0644").contains("chmod 600"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_secret(&f), Ok("s3cr3t".into()));
    }

    #[test]
    fn plain_text_postgres_is_only_for_this_machine_whatever_the_file_or_form() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = |name: &str, text: &str| {
            let f = dir.path().join(name);
            std::fs::write(&f, text).expect("write");
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            f
        };
        let local = secret("local", "host=localhost dbname=heartguard");
        let via_hostaddr = secret("hostaddr", "host=localhost hostaddr=10.20.0.5 dbname=heartguard");
        let remote = secret("remote", "postgresql://db.ward3:5432/heartguard");
        let mut cfg = Config::default();
        cfg.bindings.sslmode = "disable".into();
        cfg.bindings.postgres_url_file = Some(local.clone());
        cfg.validate().expect("a local database without TLS");
        cfg.bindings.postgres_url_file = Some(via_hostaddr);
        let p = cfg.validate().expect_err("hostaddr is where it connects");
        assert!(
            p.iter().any(|p| p.key == "bindings.sslmode" && p.message.contains("bindings.postgres_url_file")),
            "{p:?}"
        );
        cfg.bindings.postgres_url_file = Some(local);
        cfg.report.enabled = true;
        cfg.report.postgres_url_file = Some(remote);
        let p = cfg.validate().expect_err("the reporter's database is remote");
        assert!(
            p.iter().any(|p| p.key == "bindings.sslmode" && p.message.contains("report.postgres_url_file")),
            "{p:?}"
        );
    }

    #[test]
    fn an_influx_client_certificate_needs_the_ca_it_is_presented_with() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("client.pem"), dir.path().join("client.key"));
        std::fs::write(&cert, "cert").expect("write");
        std::fs::write(&key, "key").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut cfg = Config::default();
        cfg.influx.url = "https://influx.ward3:8086".into();
        cfg.influx.client_cert_file = Some(cert);
        cfg.influx.client_key_file = Some(key);
        let p = cfg.validate().expect_err("a client certificate without a CA file");
        assert_eq!(p.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(), ["influx.client_cert_file"], "{p:?}");
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().expect("embedded defaults validate");
    }

    #[test]
    fn serial_ports_and_hl7_are_validated() {
        let cfg = Config::parse(
            r#"
[[serial]]
path = "/dev/serial/by-id/usb-nonin"
protocol = "nonin_df8"
serial = "NON-7500-0042"

[[serial]]
path = "/dev/ttyUSB1"
protocol = "masimo_ascii1"

[[serial]]
path = "/dev/ttyUSB1"
protocol = "datex_s5"
baud = 1234
stop_bits = 3

[hl7]
enabled = true
listen = "localhost"
time_zone = "CET"

[clock]
future_tolerance_ms = 0
"#,
        )
        .expect("parses");
        assert_eq!(cfg.serial[0].line().baud, 9600);
        assert_eq!(cfg.serial[2].line().parity, Parity::Even);
        let keys: Vec<String> = cfg.validate().expect_err("invalid").into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "serial[2].path",
                "serial[2].baud",
                "serial[2].stop_bits",
                "serial[2].serial",
                "hl7.listen",
                "hl7.time_zone",
                "clock.future_tolerance_ms"
            ]
        );
        let e = Config::parse("[[serial]]\npath = \"/dev/x\"\nprotocol = \"nonin_df9\"\n").expect_err("bad protocol");
        assert!(e[0].key.starts_with("serial"), "{e:?}");
    }

    #[test]
    fn queue_caps_default_to_an_eighth_of_max_bytes_and_stay_below_it() {
        let cfg = Config::parse("[queue]\nmax_bytes = 800000\n").expect("parses");
        let l = cfg.queue.limits();
        assert_eq!((l.max_bytes, l.max_parked_bytes, l.max_dead_letter_bytes), (800_000, 100_000, 100_000));
        cfg.validate().expect("valid");
        let keys = |toml: &str| -> Vec<String> {
            let cfg = Config::parse(toml).expect("parses");
            cfg.validate().err().unwrap_or_default().into_iter().map(|p| format!("{}: {}", p.key, p.message)).collect()
        };
        assert_eq!(
            keys("[queue]\nmax_bytes = 800000\nmax_parked_bytes = 800000\n"),
            ["queue.max_parked_bytes: 800000 must be below queue.max_bytes (800000)"]
        );
        assert_eq!(
            keys("[queue]\nmax_bytes = 800000\nmax_parked_bytes = 500000\nmax_dead_letter_bytes = 300000\n"),
            ["queue.max_dead_letter_bytes: 300000 and queue.max_parked_bytes (500000) together must stay below \
                 queue.max_bytes (800000), so that waiting points keep room"]
        );
        assert_eq!(keys("[queue]\nmax_bytes = 800000\nmax_dead_letter_bytes = 0\n"), Vec::<String>::new());
    }

    #[test]
    fn hl7_allowlist_and_tls_are_validated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "k").expect("write");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
        let cfg = Config::parse(&format!(
            "[hl7]\nenabled = true\nallow = [\"10.20.0.0/16\", \"10.20.0.0/33\", \"host\"]\ntls_key_file = \"{}\"\nclient_ca_file = \"/nonexistent/ca.pem\"\n",
            key.display()
        ))
        .expect("parses");
        let keys: Vec<String> = cfg.validate().expect_err("invalid").into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            ["hl7.allow[1]", "hl7.allow[2]", "hl7.tls_key_file", "hl7.client_ca_file", "hl7.client_ca_file"]
        );
        let net = |s: &str| peer_network(s).expect(s);
        assert!(net("10.20.0.0/16").contains(&"10.20.3.4".parse::<std::net::IpAddr>().expect("ip")));
        assert!(!net("127.0.0.1").contains(&"127.0.0.2".parse::<std::net::IpAddr>().expect("ip")));
        assert!(net("::1").contains(&"::1".parse::<std::net::IpAddr>().expect("ip")));
        assert!(Config::parse("[hl7]\nenabled = true\nallow = []\n").expect("parses").validate().is_err());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("[mqtt]\nurll = \"x\"\n").expect_err("unknown");
        assert!(e[0].message.contains("urll"), "{e:?}");
        assert_eq!(e[0].key, "mqtt.urll");
        let e = Config::parse("[gateway]\nid = \"a\"\n\n[influx]\nbatch_max_lines = -1\n").expect_err("type");
        assert_eq!(e[0].key, "influx.batch_max_lines", "{e:?}");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let cfg = Config::parse(
            r#"
[gateway]
id = "bad id"
[mqtt]
url = "tcp://x"
topics = ["a/{serial}/{serial}"]
[influx]
api = "v2"
batch_max_lines = 0
"#,
        )
        .expect("parses");
        let keys: Vec<String> = cfg.validate().expect_err("invalid").into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["gateway.id", "mqtt.url", "mqtt.topics[0]", "influx.token_file", "influx.batch_max_lines"]);
    }

    #[test]
    fn the_push_age_limit_is_bounded() {
        for hours in [0, 87_601] {
            let cfg = Config::parse(&format!("[bindings]\npush_max_age_hours = {hours}\n")).expect("parses");
            let keys: Vec<String> = cfg.validate().expect_err("invalid").into_iter().map(|p| p.key).collect();
            assert_eq!(keys, ["bindings.push_max_age_hours"]);
        }
        assert_eq!(Config::default().bindings.push_max_age_hours, 720);
    }

    #[test]
    fn topic_patterns_extract_the_serial() {
        let p = TopicPattern::parse("devices/{serial}/vitals").expect("valid");
        assert_eq!(p.filter, "devices/+/vitals");
        assert_eq!(p.serial_of("devices/ABC-001/vitals"), Some("ABC-001"));
        assert_eq!(p.serial_of("devices/ABC-001/other"), None);
        assert!(topic_matches("a/#", "a/b/c") && !topic_matches("a/+", "a/b/c"));
        assert!(TopicPattern::parse("a/#/b").is_err() && TopicPattern::parse("a/x+/b").is_err());
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            broker_addr("mqtt://127.0.0.1:1884"),
            Ok(BrokerAddr { host: "127.0.0.1".into(), port: 1884, tls: false })
        );
        assert_eq!(broker_addr("mqtt://broker").map(|b| b.port), Ok(1883));
        assert!(broker_addr("http://x").is_err() && broker_addr("mqtt://:1").is_err());
        assert_eq!(
            broker_addr("mqtts://broker.ward3"),
            Ok(BrokerAddr { host: "broker.ward3".into(), port: 8883, tls: true })
        );
    }
}
