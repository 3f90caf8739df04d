//! The configuration file (TOML): one [`Config`] aggregating the sections each component owns
//! (`[mqtt]` in `ingest::mqtt::config`, `[influx]` in `sink::config`, …). Every struct
//! refuses unknown keys; [`Config::validate`] then asks every section and reports *every*
//! remaining problem at once, each naming its key ([`problem`]); the rules that span two
//! sections live here.
//!
//! Secrets are never in this file: `*_file` keys name files that hold them ([`secrets`]).

pub mod problem;
pub mod secrets;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bindings::config::Bindings;
use crate::decode::config::Clock;
use crate::ingest::mllp::config::Hl7;
use crate::ingest::mqtt::config::Mqtt;
use crate::ingest::serial::config::{self as serial_config, SerialPort};
use crate::queue::config::Queue;
use crate::report::config::Report;
use crate::sink::config::Influx;
use crate::telemetry::config::{Http, Log};
pub use problem::ConfigProblem;
use problem::Problems;

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

impl Gateway {
    pub fn validate(&self, p: &mut Problems) {
        let g = self;
        if g.id.is_empty() || g.id.len() > 64 || !g.id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            p.bad("gateway.id", "1 to 64 characters: letters, digits, '-', '_', '.'".into());
        }
        if g.data_dir.as_os_str().is_empty() {
            p.bad("gateway.data_dir", "must not be empty".into());
        }
        if g.shutdown_grace_ms == 0 {
            p.bad("gateway.shutdown_grace_ms", "must be greater than 0".into());
        }
    }
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

    /// Every problem in the configuration, each naming its key: section by section, then the
    /// rules that span sections.
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut p = Problems::default();
        self.gateway.validate(&mut p);
        self.mqtt.validate(&mut p);
        self.influx.validate(&mut p);
        self.log.validate(&mut p);
        self.http.validate(&mut p);
        self.queue.validate(&mut p);
        self.bindings.validate(&mut p);
        self.report.validate(&mut p);
        serial_config::validate(&self.serial, &mut p);
        self.hl7.validate(&mut p);
        self.clock.validate(&mut p);
        self.validate_across(&mut p);
        p.into_result()
    }

    /// The rules that tie two sections together.
    fn validate_across(&self, p: &mut Problems) {
        let (b, r) = (&self.bindings, &self.report);
        // The reporter connects with the bindings' TLS settings: its database must be local too.
        b.plain_text_only_locally("report.postgres_url_file", r.postgres_url_file.as_deref(), p);
        if r.enabled && r.postgres_url_file.is_none() && b.postgres_url_file.is_none() {
            p.bad(
                "report.postgres_url_file",
                "reporting needs a database: set it or bindings.postgres_url_file".into(),
            );
        }
        if !b.trusted_keys.is_empty() && !self.mqtt.enabled {
            p.bad("bindings.trusted_keys", "signed pushes arrive over MQTT: enable [mqtt]".into());
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::Parity;

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
}
