//! Logs and counters. Counters are plain atomics today; the metrics endpoint reads them.
//!
//! Logs carry ids (device serial, stream id, destination), reasons and counts — never a
//! payload's contents or anything about a patient but the patient id.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::decode::RejectReason;
use crate::resolve::Unbound;

/// Sets up `tracing`: `RUST_LOG` or `info`, plain text on stderr (journald adds time stamps).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Every counter of the data path.
#[derive(Debug, Default)]
pub struct Counters {
    pub messages_received: AtomicU64,
    pub readings_decoded: AtomicU64,
    pub readings_queued: AtomicU64,
    pub rejected: [AtomicU64; RejectReason::ALL.len()],
    pub unknown_fields: AtomicU64,
    pub dropped_fields: AtomicU64,
    pub unbound: [AtomicU64; 3],
    pub points_delivered: AtomicU64,
    pub write_failures: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Readings parked: waiting for a fresh binding copy or for a binding at all.
    pub parked: AtomicU64,
    /// Parked readings later resolved and queued.
    pub unparked: AtomicU64,
    /// Readings resolved on a copy whose freshness mark had stopped (PostgreSQL away).
    pub resolved_stale: AtomicU64,
    /// Parked readings that found no binding within `max_park_age_ms`.
    pub expired_unbound: AtomicU64,
    pub sync_errors: AtomicU64,
    /// Pushed binding snapshots refused (untrusted, bad signature, older, …).
    pub push_refused: AtomicU64,
    /// Data gaps opened (a stream silent for longer than its threshold).
    pub gaps_opened: AtomicU64,
    /// Database clock minus gateway clock, last measured (ms).
    pub clock_skew_ms: AtomicI64,
    /// Valid frames read from serial ports.
    pub serial_frames: AtomicU64,
    /// Serial devices lost (EOF, I/O error) and reopened.
    pub serial_disconnects: AtomicU64,
    /// Times a serial port went silent for its watchdog period.
    pub serial_watchdog: AtomicU64,
    /// Serial ports silent right now (a gauge).
    pub serial_ports_silent: AtomicU64,
    /// Serial readings dropped, oldest first, because intake was behind.
    pub serial_overflow: AtomicU64,
    /// HL7 messages received over MLLP, and how many of them were retries already stored.
    pub hl7_messages: AtomicU64,
    pub hl7_duplicates: AtomicU64,
    /// Each serial port's state, by path, for `status`.
    pub ports: std::sync::Mutex<std::collections::BTreeMap<String, PortStatus>>,
}

/// What `status` shows of one serial port.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PortStatus {
    pub protocol: String,
    /// `opening`, `open`, `silent` (watchdog) or `disconnected`.
    pub state: &'static str,
    pub frames: u64,
    /// When the last valid frame arrived (ns since the epoch), if one did.
    pub last_frame_ns: Option<i64>,
}

impl Counters {
    /// Updates the status of serial port `path`.
    pub fn port(&self, path: &str, update: impl FnOnce(&mut PortStatus)) {
        if let Ok(mut ports) = self.ports.lock() {
            update(ports.entry(path.to_owned()).or_default());
        }
    }

    pub fn reject(&self, r: RejectReason) {
        let i = RejectReason::ALL.iter().position(|x| *x == r).unwrap_or(0);
        self.rejected[i].fetch_add(1, Relaxed);
    }

    pub fn unbound(&self, u: Unbound) {
        let i = match u {
            Unbound::UnknownSerial => 0,
            Unbound::NotCovered => 1,
            Unbound::Ambiguous => 2,
        };
        self.unbound[i].fetch_add(1, Relaxed);
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn unbound_total(&self) -> u64 {
        self.unbound.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Every counter by name, for the status file.
    pub fn snapshot(&self) -> serde_json::Value {
        let rejected: serde_json::Map<String, serde_json::Value> = RejectReason::ALL
            .iter()
            .zip(&self.rejected)
            .map(|(r, c)| (r.as_str().to_owned(), c.load(Relaxed).into()))
            .collect();
        serde_json::json!({
            "messages_received": self.messages_received.load(Relaxed),
            "readings_decoded": self.readings_decoded.load(Relaxed),
            "readings_queued": self.readings_queued.load(Relaxed),
            "points_delivered": self.points_delivered.load(Relaxed),
            "write_failures": self.write_failures.load(Relaxed),
            "dead_lettered": self.dead_lettered.load(Relaxed),
            "unbound": self.unbound_total(),
            "rejected": rejected,
            "dropped_fields": self.dropped_fields.load(Relaxed),
            "serial_frames": self.serial_frames.load(Relaxed),
            "serial_disconnects": self.serial_disconnects.load(Relaxed),
            "serial_watchdog": self.serial_watchdog.load(Relaxed),
            "serial_ports_silent": self.serial_ports_silent.load(Relaxed),
            "serial_overflow": self.serial_overflow.load(Relaxed),
            "hl7_messages": self.hl7_messages.load(Relaxed),
            "hl7_duplicates": self.hl7_duplicates.load(Relaxed),
            "ports": self.ports.lock().map(|p| serde_json::to_value(&*p).unwrap_or_default()).unwrap_or_default(),
        })
    }

    /// One line for the periodic summary log.
    pub fn summary(&self) -> String {
        let rejected: Vec<String> = RejectReason::ALL
            .iter()
            .zip(&self.rejected)
            .filter(|(_, c)| c.load(Relaxed) > 0)
            .map(|(r, c)| format!("{}={}", r.as_str(), c.load(Relaxed)))
            .collect();
        let unbound: Vec<String> = [Unbound::UnknownSerial, Unbound::NotCovered, Unbound::Ambiguous]
            .iter()
            .zip(&self.unbound)
            .filter(|(_, c)| c.load(Relaxed) > 0)
            .map(|(u, c)| format!("{}={}", u.as_str(), c.load(Relaxed)))
            .collect();
        format!(
            "messages={} readings={} queued={} delivered={} rejected={} [{}] unbound={} [{}] unknown_fields={} dropped_fields={} write_failures={} dead_lettered={} parked={} unparked={} resolved_stale={} expired_unbound={} sync_errors={} push_refused={} gaps_opened={} clock_skew_ms={}",
            self.messages_received.load(Relaxed),
            self.readings_decoded.load(Relaxed),
            self.readings_queued.load(Relaxed),
            self.points_delivered.load(Relaxed),
            self.rejected_total(),
            rejected.join(" "),
            self.unbound_total(),
            unbound.join(" "),
            self.unknown_fields.load(Relaxed),
            self.dropped_fields.load(Relaxed),
            self.write_failures.load(Relaxed),
            self.dead_lettered.load(Relaxed),
            self.parked.load(Relaxed),
            self.unparked.load(Relaxed),
            self.resolved_stale.load(Relaxed),
            self.expired_unbound.load(Relaxed),
            self.sync_errors.load(Relaxed),
            self.push_refused.load(Relaxed),
            self.gaps_opened.load(Relaxed),
            self.clock_skew_ms.load(Relaxed),
        ) + &self.device_summary()
    }

    /// The serial and HL7 part of the summary; empty while neither saw anything.
    fn device_summary(&self) -> String {
        let serial = [
            self.serial_frames.load(Relaxed),
            self.serial_disconnects.load(Relaxed),
            self.serial_watchdog.load(Relaxed),
            self.serial_ports_silent.load(Relaxed),
            self.serial_overflow.load(Relaxed),
        ];
        let hl7 = [self.hl7_messages.load(Relaxed), self.hl7_duplicates.load(Relaxed)];
        let mut out = String::new();
        if serial.iter().any(|n| *n > 0) {
            out += &format!(
                " serial_frames={} serial_disconnects={} serial_watchdog={} serial_ports_silent={} serial_overflow={}",
                serial[0], serial[1], serial[2], serial[3], serial[4]
            );
        }
        if hl7.iter().any(|n| *n > 0) {
            out += &format!(" hl7_messages={} hl7_duplicates={}", hl7[0], hl7[1]);
        }
        out
    }
}

/// The file in the data directory where a running daemon leaves its counters.
pub const STATUS_FILE: &str = "status.json";

/// Writes the status file (atomically: a temporary file renamed over it).
pub fn write_status(data_dir: &std::path::Path, gateway_id: &str, counters: &Counters) -> std::io::Result<()> {
    let status = serde_json::json!({
        "gateway": gateway_id,
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "updated_ns": crate::now_ns(),
        "counters": counters.snapshot(),
    });
    let tmp = data_dir.join(format!("{STATUS_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&status).unwrap_or_default())?;
    std::fs::rename(tmp, data_dir.join(STATUS_FILE))
}
