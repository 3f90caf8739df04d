//! A decoded reading: a device, an instant and canonical fields, with no patient or stream
//! context yet, and the form it is parked in.

use crate::fields::{FieldSpec, FieldValue};

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

/// Checks a signal type from a payload or the configuration: 1 to 60 bytes, no control
/// characters.
pub fn valid_signal_type(s: &str) -> bool {
    !s.is_empty() && s.len() <= 60 && !s.chars().any(char::is_control)
}

/// Shortens untrusted text before it goes into a log line.
pub fn loggable(s: &str) -> String {
    let mut out: String = s.chars().take(MAX_SERIAL_LEN).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// The stored form of a reading waiting for its binding (the `parked` table): canonical
/// field names with their typed values.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredReading {
    serial: String,
    ts_ns: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signal_type: Option<String>,
    fields: Vec<(String, serde_json::Value)>,
}

impl Reading {
    /// Serializes for durable parking.
    pub fn to_stored(&self) -> String {
        let fields = self
            .fields
            .iter()
            .map(|(spec, v)| {
                let v = match v {
                    FieldValue::Int(i) => serde_json::Value::from(*i),
                    FieldValue::Float(f) => serde_json::Value::from(*f),
                    FieldValue::Bool(b) => serde_json::Value::from(*b),
                };
                (spec.name.to_owned(), v)
            })
            .collect();
        let s = StoredReading {
            serial: self.serial.clone(),
            ts_ns: self.ts_ns,
            signal_type: self.signal_type.clone(),
            fields,
        };
        serde_json::to_string(&s).unwrap_or_default()
    }

    /// Reads a parked reading back; `None` if it is not one (never trusted blindly: field
    /// names and types are checked against the canonical table again).
    pub fn from_stored(s: &str) -> Option<Reading> {
        let s: StoredReading = serde_json::from_str(s).ok()?;
        let mut fields = Vec::with_capacity(s.fields.len());
        for (name, v) in s.fields {
            let spec = crate::fields::lookup(&name)?;
            let value = match spec.kind {
                crate::fields::FieldKind::Int => FieldValue::Int(v.as_i64()?),
                crate::fields::FieldKind::Float => FieldValue::Float(v.as_f64().filter(|f| f.is_finite())?),
                crate::fields::FieldKind::Bool => FieldValue::Bool(v.as_bool()?),
            };
            fields.push((spec, value));
        }
        Some(Reading { serial: s.serial, ts_ns: s.ts_ns, signal_type: s.signal_type, fields })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_reading_round_trips_with_types() {
        let r = Reading {
            serial: "ABC-001".into(),
            ts_ns: 1_700_000_000_123_000_000,
            signal_type: Some("spo2".into()),
            fields: vec![
                (crate::fields::lookup("spo2").expect("spo2"), FieldValue::Int(97)),
                (crate::fields::lookup("sensor_off").expect("flag"), FieldValue::Bool(false)),
                (crate::fields::lookup("temperature").expect("t"), FieldValue::Float(37.0)),
            ],
        };
        assert_eq!(Reading::from_stored(&r.to_stored()), Some(r));
        assert_eq!(Reading::from_stored("{\"serial\":\"A\",\"ts_ns\":1,\"fields\":[[\"bogus\",1]]}"), None);
    }
}
