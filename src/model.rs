//! Domain types shared by the stages. No I/O here.

use crate::fields::FieldSpec;

/// A typed field value. The type always matches the field's [`crate::fields::FieldKind`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValue {
    Int(i64),
    /// Always finite: decoders refuse NaN and ±inf (line protocol cannot carry them).
    Float(f64),
}

/// A decoded reading: device identity, time, canonical fields. No patient or stream context
/// yet; only [`crate::resolve`] adds that.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The device serial as registered centrally (`devices.serial`).
    pub serial: String,
    /// When the reading was taken, nanoseconds since the Unix epoch (UTC).
    pub ts_ns: i64,
    /// Signal type the reading belongs to, when the device says so (routes readings of a
    /// device that has several active streams).
    pub signal_type: Option<String>,
    /// Canonical fields, sorted by name, no duplicates.
    pub fields: Vec<(&'static FieldSpec, FieldValue)>,
}

/// Longest serial accepted: `devices.serial` is `VARCHAR(80)`.
pub const MAX_SERIAL_LEN: usize = 80;

/// Checks a device serial from a payload or topic: non-empty, at most 80 characters, no
/// control characters and no MQTT wildcard or separator characters.
pub fn valid_serial(s: &str) -> bool {
    !s.is_empty()
        && s.chars().count() <= MAX_SERIAL_LEN
        && !s.chars().any(|c| c.is_control() || matches!(c, '/' | '+' | '#'))
}

/// Shortens untrusted text before it goes into a log line.
pub fn loggable(s: &str) -> String {
    let mut out: String = s.chars().take(MAX_SERIAL_LEN).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}
