//! The status document: what the daemon serves as JSON at `/status` and leaves in its status
//! file, for `heartguard-gateway status` (which renders it, `crate::cli::status`). When the
//! daemon cannot be reached, the command builds a smaller one from the database, read-only.
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

/// How far back "devices seen" looks.
pub const DEVICES_WINDOW_NS: i64 = 60 * 1_000_000_000;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_survives_a_json_round_trip() {
        let s = Status {
            origin: ORIGIN_DAEMON.into(),
            gateway_id: "ward3".into(),
            version: "0.1.0".into(),
            now_ns: 1_800_000_000_000_000_000,
            started_ns: Some(1_799_999_000_000_000_000),
            ready: Some(true),
            stuck_stages: vec![("intake".into(), 14)],
            sources: vec![SourceStatus {
                source: "mqtt".into(),
                protocol: "json".into(),
                connected: Some(true),
                messages: 1204,
                readings: 1200,
                rejected: 4,
            }],
            ports: vec![PortView {
                path: "/dev/ttyUSB0".into(),
                protocol: "nonin_df8".into(),
                state: "open".into(),
                frames: 9,
                last_frame_ns: Some(1_799_999_999_000_000_000),
            }],
            queue: Some(QueueStatus {
                points: 12,
                bytes: 3500,
                oldest_enqueued_ns: None,
                db_file_bytes: 1_300_000,
                dead_letters: vec![("rejected".into(), 2)],
                parked: 1,
                parked_bytes: 40,
                dead_letter_bytes: 90,
                evicted_parked: 3,
                evicted_dead_letters: 4,
            }),
            destinations: vec![DestinationStatus {
                name: "heartguard_vitals".into(),
                waiting: 12,
                oldest_enqueued_ns: None,
                delivered: Some(1180),
                write_failures: Some(0),
                failing: Some(false),
                last_success_ns: None,
                last_error: Some("HTTP 503".into()),
            }],
            bindings: Some(BindingsInfo { count: 3, source: "file".into(), version: "1a2b".into(), loaded_ns: 5 }),
            bindings_sync_errors: 1,
            unbound: vec![("unknown_serial".into(), 0)],
            devices: vec![DeviceStatus { serial: "ABC-001".into(), received_ns: 7, reading_ts_ns: 6, bound: true }],
        };
        let back: Status = serde_json::from_str(&serde_json::to_string(&s).expect("json")).expect("parse");
        assert_eq!(back, s);
    }
}
