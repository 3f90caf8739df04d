//! Decoders: bytes from a transport → [`crate::model::Reading`]s.
//!
//! A decoder never panics and never stops on bad input: every rejected reading comes back as
//! a [`Rejection`] with a reason that is counted and logged (by reason and device serial,
//! never with payload contents, which could carry personal data).

pub mod config;
pub mod json;

/// Why a payload or a reading in it was not accepted. The string form is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    Oversized,
    Empty,
    InvalidJson,
    NotAnObject,
    MissingSerial,
    InvalidSerial,
    SerialMismatch,
    InvalidTimestamp,
    TimestampOutOfRange,
    InvalidField,
    NoFields,
    /// Device protocols: a frame whose checksum does not match.
    BadChecksum,
    /// Device protocols: a frame cut short or malformed (resynchronized after it).
    BadFrame,
    /// Device protocols: bytes before the next frame start (skipped to resynchronize).
    Noise,
    /// Demo, test or training data: never stored as patient data.
    DemoData,
    /// A message type the gateway does not take (HL7: anything but ORU^R01).
    Unsupported,
    /// HL7: an observation of a multi-device message that names no device of its own and
    /// belongs to no row that does (never given to a guessed device).
    AmbiguousDevice,
    /// HL7: a time without offset that the gateway's zone skips (the hour a change to
    /// daylight saving time jumps over).
    NonexistentLocalTime,
    /// HL7: a time without offset that the gateway's zone has twice (the hour repeated when
    /// daylight saving time ends) and that could be either.
    AmbiguousLocalTime,
}

impl RejectReason {
    pub const ALL: [RejectReason; 19] = [
        Self::Oversized,
        Self::Empty,
        Self::InvalidJson,
        Self::NotAnObject,
        Self::MissingSerial,
        Self::InvalidSerial,
        Self::SerialMismatch,
        Self::InvalidTimestamp,
        Self::TimestampOutOfRange,
        Self::InvalidField,
        Self::NoFields,
        Self::BadChecksum,
        Self::BadFrame,
        Self::Noise,
        Self::DemoData,
        Self::Unsupported,
        Self::AmbiguousDevice,
        Self::NonexistentLocalTime,
        Self::AmbiguousLocalTime,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oversized => "oversized",
            Self::Empty => "empty",
            Self::InvalidJson => "invalid_json",
            Self::NotAnObject => "not_an_object",
            Self::MissingSerial => "missing_serial",
            Self::InvalidSerial => "invalid_serial",
            Self::SerialMismatch => "serial_mismatch",
            Self::InvalidTimestamp => "invalid_timestamp",
            Self::TimestampOutOfRange => "timestamp_out_of_range",
            Self::InvalidField => "invalid_field",
            Self::NoFields => "no_fields",
            Self::BadChecksum => "bad_checksum",
            Self::BadFrame => "bad_frame",
            Self::Noise => "noise",
            Self::DemoData => "demo_data",
            Self::Unsupported => "unsupported_message",
            Self::AmbiguousDevice => "ambiguous_device",
            Self::NonexistentLocalTime => "nonexistent_local_time",
            Self::AmbiguousLocalTime => "ambiguous_local_time",
        }
    }
}

/// One rejected payload or reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    /// Short, content-free detail for the log: a field *name*, a type, a size. Never a value.
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into() }
    }
}

/// Earliest reading time accepted: 2000-01-01T00:00:00Z. Older stamps are a device clock that
/// was never set (or seconds sent as milliseconds), not a reading from then.
pub const MIN_TS_NS: i64 = 946_684_800_000_000_000;

/// The gateway's clock as a decoder sees it: the time of receipt, which stamps readings
/// without a time of their own, and how far ahead of it a device may stamp a reading before
/// its clock counts as wrong (`clock.future_tolerance_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub ns: i64,
    pub future_tolerance_ns: i64,
}

impl Now {
    /// How far ahead of the gateway clock `ts_ns` is, when that is beyond the tolerance.
    pub fn too_far_ahead(self, ts_ns: i64) -> Option<i64> {
        (ts_ns > self.ns.saturating_add(self.future_tolerance_ns)).then(|| ts_ns.saturating_sub(self.ns))
    }
}

/// A reading refused because its device's clock is ahead of the gateway's: the device serial
/// (never personal data) and by how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockAhead {
    pub serial: String,
    pub ahead_ns: i64,
}
