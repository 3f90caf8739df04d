//! `[[serial]]`: one serial port with one bedside device. Line settings default to the
//! protocol's.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::problem::Problems;
use crate::model::{valid_serial, valid_signal_type};
use crate::protocols::{FlowControl, LineSettings, Parity, Protocol};

/// One `[[serial]]` port.
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

/// Baud rates a serial port may be given.
pub const BAUD_RATES: &[u32] = &[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400];

/// Checks every port: `serial[n].key`, n counted from 0 in the order of the file.
pub fn validate(ports: &[SerialPort], p: &mut Problems) {
    let mut paths = std::collections::HashSet::new();
    for (n, port) in ports.iter().enumerate() {
        let key = |k: &str| format!("serial[{n}].{k}");
        if port.path.as_os_str().is_empty() {
            p.bad(&key("path"), "must not be empty".into());
        } else if !paths.insert(&port.path) {
            p.bad(&key("path"), "the same port is configured twice".into());
        }
        let line = port.line();
        if !BAUD_RATES.contains(&line.baud) {
            p.bad(&key("baud"), format!("one of {BAUD_RATES:?}"));
        }
        if !(5..=8).contains(&line.data_bits) {
            p.bad(&key("data_bits"), "5, 6, 7 or 8".into());
        }
        if !(1..=2).contains(&line.stop_bits) {
            p.bad(&key("stop_bits"), "1 or 2".into());
        }
        match &port.serial {
            None if !port.protocol.carries_serial() => {
                p.bad(&key("serial"), format!("required: {} carries no device identity", port.protocol))
            }
            Some(s) if !valid_serial(s) => {
                p.bad(&key("serial"), "1 to 80 characters without control characters, '/', '+', '#'".into())
            }
            _ => {}
        }
        if port.signal_type.as_deref().is_some_and(|s| !valid_signal_type(s)) {
            p.bad(&key("signal_type"), "1 to 60 characters without control characters".into());
        }
        if !(1..=86_400).contains(&port.frame_timeout_secs) {
            p.bad(&key("frame_timeout_secs"), "between 1 and 86400".into());
        }
    }
}
