//! What a decoder yields ([`Decoded`]), and how the values of one frame become a reading
//! ([`FieldSet`]) under the device identity the frame or the port's configuration gives
//! ([`PortIdentity`]).

use crate::decode::{ClockAhead, RejectReason, Rejection};
use crate::fields::{FieldSpec, FieldValue};
use crate::model::{Reading, valid_serial};

/// What the configuration says about the device on a port (used when the protocol does not
/// carry it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortIdentity {
    pub serial: Option<String>,
    pub signal_type: Option<String>,
}

/// What one `feed` yielded.
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    pub readings: Vec<Reading>,
    pub rejected: Vec<Rejection>,
    /// Valid frames seen (a frame need not yield a reading); feeds the per-port watchdog.
    pub frames: u64,
    /// Values dropped as sentinels or out of range while the rest was kept.
    pub dropped_fields: u32,
    /// Readings refused (also in `rejected`) because their device's clock is ahead (HL7).
    pub clock_ahead: Vec<ClockAhead>,
}

/// Collects a reading's fields: numbers are range-checked, duplicates keep the first value.
#[derive(Debug, Default)]
pub struct FieldSet {
    fields: Vec<(&'static FieldSpec, FieldValue)>,
    /// Values refused as out of range or duplicated.
    pub dropped: u32,
}

impl FieldSet {
    /// Adds a number if it is finite and inside the field's range; counts it otherwise.
    pub fn number(&mut self, spec: &'static FieldSpec, v: f64) {
        match spec.number(v) {
            Some((s, v)) => self.put(s, v),
            None => self.dropped += 1,
        }
    }

    /// Adds a status flag.
    pub fn flag(&mut self, spec: &'static FieldSpec, on: bool) {
        self.put(spec, FieldValue::Bool(on));
    }

    fn put(&mut self, spec: &'static FieldSpec, v: FieldValue) {
        if self.fields.iter().any(|(s, _)| s.name == spec.name) {
            self.dropped += 1;
        } else {
            self.fields.push((spec, v));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn has(&self, name: &str) -> bool {
        self.fields.iter().any(|(s, _)| s.name == name)
    }

    /// A reading from these fields; the serial is the frame's or, failing that, the port's.
    pub fn into_reading(mut self, frame_serial: Option<&str>, identity: &PortIdentity, ts_ns: i64, out: &mut Decoded) {
        out.dropped_fields += self.dropped;
        let serial = frame_serial.or(identity.serial.as_deref());
        let Some(serial) = serial else {
            out.rejected.push(Rejection::new(
                RejectReason::MissingSerial,
                "no serial in the frame and none configured for the port",
            ));
            return;
        };
        if !valid_serial(serial) {
            out.rejected.push(Rejection::new(RejectReason::InvalidSerial, "device serial"));
            return;
        }
        if self.fields.is_empty() {
            out.rejected.push(Rejection::new(RejectReason::NoFields, "no valid value"));
            return;
        }
        self.fields.sort_by_key(|(s, _)| s.name);
        out.readings.push(Reading {
            serial: serial.to_owned(),
            ts_ns,
            signal_type: identity.signal_type.clone(),
            fields: self.fields,
        });
    }
}
