//! Bedside device protocols: bytes from a serial port or a TCP stream → [`Reading`]s.
//!
//! One file per device family, each pure (no I/O) and described byte by byte in
//! `docs/protocols.md` (the `protocols.md §n` references in this module's files are its sections):
//! - [`nonin`]: Nonin pulse oximeters, serial data formats #8, #7 and #2;
//! - [`masimo`]: Masimo SET oximeters, "ASCII 1" lines;
//! - [`datex`]: GE Datex-Ohmeda S/5 and CARESCAPE displayed values (request and records);
//! - [`hl7`]: HL7 v2 ORU^R01 (IHE PCD-01) messages, MLLP framing and ACKs.
//!
//! Every stream decoder follows the same shape, after mini-redis' `connection.rs`: bytes are
//! *fed* into a capped [`Framer`]; a protocol's scanner looks at the front of the buffer and
//! says "incomplete", "a frame of n bytes" or "skip n bytes" (noise before a sync pattern, a
//! bad checksum); frames are then parsed into readings. So a stream split at any byte
//! boundary yields the same frames, garbage is skipped until the next valid frame, and no
//! input can make a decoder panic or grow without bound.
//!
//! Rules every decoder keeps (protocols.md §0):
//! - an invalid-value sentinel never becomes a number, and a number outside its field's
//!   plausible range ([`crate::fields::FieldSpec::number`]) is dropped;
//! - sensor-off, artifact and low-perfusion states are written as boolean status fields, and
//!   numbers a device holds while its sensor is off are not written;
//! - demo and test data is dropped ([`RejectReason::DemoData`]);
//! - the device serial comes from the frame where the protocol carries one (Masimo `SN=`,
//!   HL7 OBX-18 / MSH-3), otherwise from the port's configuration.

pub mod datex;
#[doc(hidden)]
pub mod fuzzing;
pub mod hl7;
pub mod masimo;
pub mod nonin;

use serde::{Deserialize, Serialize};

use crate::decode::{RejectReason, Rejection};
use crate::fields::FieldSpec;
use crate::fields::FieldValue;
use crate::model::{Reading, valid_serial};

/// The serial protocols a `[[serial]]` port can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Nonin data format #8: one 4-byte packet per second.
    NoninDf8,
    /// Nonin data format #7: 5-byte frames with a 16-bit pleth, 75 per second.
    NoninDf7,
    /// Nonin data format #2: 5-byte frames with an 8-bit pleth, 75 per second.
    NoninDf2,
    /// Masimo "ASCII 1": one text line per second.
    MasimoAscii1,
    /// GE Datex-Ohmeda S/5 computer interface, displayed values.
    DatexS5,
}

impl Protocol {
    pub const ALL: [Protocol; 5] = [Self::NoninDf8, Self::NoninDf7, Self::NoninDf2, Self::MasimoAscii1, Self::DatexS5];

    /// The name used in the configuration, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoninDf8 => "nonin_df8",
            Self::NoninDf7 => "nonin_df7",
            Self::NoninDf2 => "nonin_df2",
            Self::MasimoAscii1 => "masimo_ascii1",
            Self::DatexS5 => "datex_s5",
        }
    }

    /// Whether the protocol carries the device serial in band; otherwise the port's
    /// configuration must name it.
    pub fn carries_serial(self) -> bool {
        matches!(self, Self::MasimoAscii1)
    }

    /// The line settings the device family uses (protocols.md, "Transport").
    pub fn line(self) -> LineSettings {
        match self {
            Self::NoninDf8 | Self::NoninDf7 | Self::NoninDf2 | Self::MasimoAscii1 => LineSettings {
                baud: 9600,
                data_bits: 8,
                parity: Parity::None,
                stop_bits: 1,
                flow_control: FlowControl::None,
            },
            Self::DatexS5 => LineSettings {
                baud: 19200,
                data_bits: 8,
                parity: Parity::Even,
                stop_bits: 1,
                flow_control: FlowControl::Hardware,
            },
        }
    }

    /// Bytes to send each time the port is opened: Nonin's set-format command, Datex's
    /// transmission request. Masimo needs nothing.
    pub fn on_connect(self) -> Vec<u8> {
        match self {
            Self::NoninDf8 => nonin::set_format_command(nonin::Format::Df8).to_vec(),
            Self::NoninDf7 => nonin::set_format_command(nonin::Format::Df7).to_vec(),
            Self::NoninDf2 => nonin::set_format_command(nonin::Format::Df2).to_vec(),
            Self::MasimoAscii1 => Vec::new(),
            Self::DatexS5 => {
                datex::request_frame(datex::DEFAULT_INTERVAL_SECS, datex::ALL_CLASSES, datex::DEFAULT_DRI_LEVEL)
            }
        }
    }

    /// A fresh decoder for one connection of a port.
    pub fn decoder(self, identity: PortIdentity) -> StreamDecoder {
        let inner = match self {
            Self::NoninDf8 => Inner::Nonin(nonin::Decoder::new(nonin::Format::Df8)),
            Self::NoninDf7 => Inner::Nonin(nonin::Decoder::new(nonin::Format::Df7)),
            Self::NoninDf2 => Inner::Nonin(nonin::Decoder::new(nonin::Format::Df2)),
            Self::MasimoAscii1 => Inner::Masimo(masimo::Decoder::new()),
            Self::DatexS5 => Inner::Datex(datex::Decoder::new()),
        };
        StreamDecoder { identity, inner }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    Odd,
    Even,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    None,
    Software,
    Hardware,
}

/// Serial line settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineSettings {
    pub baud: u32,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: u8,
    pub flow_control: FlowControl,
}

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
    pub clock_ahead: Vec<crate::decode::ClockAhead>,
}

/// A decoder for one connection of a serial port.
#[derive(Debug)]
pub struct StreamDecoder {
    identity: PortIdentity,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Nonin(nonin::Decoder),
    Masimo(masimo::Decoder),
    Datex(datex::Decoder),
}

impl StreamDecoder {
    /// Feeds bytes as read; returns the readings, rejections and frame count they completed.
    pub fn feed(&mut self, bytes: &[u8], now_ns: i64) -> Decoded {
        let mut out = Decoded::default();
        match &mut self.inner {
            Inner::Nonin(d) => d.feed(bytes, &self.identity, now_ns, &mut out),
            Inner::Masimo(d) => d.feed(bytes, &self.identity, now_ns, &mut out),
            Inner::Datex(d) => d.feed(bytes, &self.identity, now_ns, &mut out),
        }
        out
    }
}

/// What a protocol's scanner found at the front of the buffer.
#[derive(Debug, PartialEq)]
pub enum Scan<F> {
    /// Not enough bytes to decide yet.
    Incomplete,
    /// A whole frame; the second value is how many bytes it takes.
    Frame(F, usize),
    /// Drop this many bytes (at least one) and look again.
    Skip(usize, RejectReason),
}

/// A capped byte buffer that protocol scanners cut frames from.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf` (consumed bytes are compacted away lazily).
    start: usize,
    cap: usize,
    /// Noise bytes skipped since the last [`Framer::take_noise`], reported as one rejection.
    noise: usize,
}

impl Framer {
    pub fn new(cap: usize) -> Self {
        Self { buf: Vec::new(), start: 0, cap: cap.max(1), noise: 0 }
    }

    /// Appends bytes (the caller's read size bounds one push).
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && (self.start >= self.buf.len() / 2 || self.buf.len() > self.cap) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next frame, or a rejection (bad checksum, broken frame), or `None` when more
    /// bytes are needed. Noise is counted, not returned (see [`Framer::take_noise`]).
    /// When more than `cap` bytes wait undecided, the oldest are dropped as noise: a scanner
    /// that cannot decide within `cap` bytes is looking at junk.
    pub fn next<F>(&mut self, mut scan: impl FnMut(&[u8]) -> Scan<F>) -> Option<Result<F, Rejection>> {
        loop {
            let unread = &self.buf[self.start..];
            if unread.is_empty() {
                return None;
            }
            match scan(unread) {
                Scan::Incomplete if unread.len() > self.cap => {
                    let drop = unread.len() - self.cap;
                    self.start += drop;
                    self.noise += drop;
                }
                Scan::Incomplete => return None,
                Scan::Frame(f, len) => {
                    self.start += len.clamp(1, unread.len());
                    return Some(Ok(f));
                }
                Scan::Skip(n, RejectReason::Noise) => {
                    let n = n.clamp(1, unread.len());
                    self.start += n;
                    self.noise += n;
                }
                Scan::Skip(n, reason) => {
                    self.start += n.clamp(1, unread.len());
                    return Some(Err(Rejection::new(reason, "frame dropped")));
                }
            }
        }
    }

    /// Noise bytes skipped since the last call.
    pub fn take_noise(&mut self) -> usize {
        std::mem::take(&mut self.noise)
    }

    /// Bytes waiting for a decision.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// Reports skipped noise as one rejection per feed.
fn report_noise(framer: &mut Framer, out: &mut Decoded) {
    let n = framer.take_noise();
    if n > 0 {
        out.rejected.push(Rejection::new(RejectReason::Noise, format!("{n} byte(s) skipped to resynchronize")));
    }
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

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    pub const NOW: i64 = 1_715_941_815_000_000_000; // 2024-05-17T10:30:15Z

    pub fn port(serial: &str) -> PortIdentity {
        PortIdentity { serial: Some(serial.into()), signal_type: None }
    }

    /// Parses "80 48 61 20"-style hex (any whitespace).
    pub fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace().map(|b| u8::from_str_radix(b, 16).expect("hex byte")).collect()
    }

    pub fn field(r: &Reading, name: &str) -> Option<FieldValue> {
        r.fields.iter().find(|(s, _)| s.name == name).map(|(_, v)| *v)
    }

    /// Every field has its kind and lies in its range; fields are sorted and unique.
    pub fn assert_well_formed(r: &Reading) {
        for (s, v) in &r.fields {
            assert!(s.accepts(*v), "{} = {v:?} out of range or mistyped", s.name);
        }
        for w in r.fields.windows(2) {
            assert!(w[0].0.name < w[1].0.name);
        }
        assert!(valid_serial(&r.serial));
    }

    /// Feeds `bytes` in pieces cut at every boundary pair and checks that the readings are
    /// the same as from one piece.
    pub fn assert_split_invariant(protocol: Protocol, bytes: &[u8]) {
        let whole = protocol.decoder(port("DEV")).feed(bytes, NOW).readings;
        assert!(!whole.is_empty(), "the stream yields readings");
        for cut in 0..=bytes.len() {
            let mut d = protocol.decoder(port("DEV"));
            let mut got = d.feed(&bytes[..cut], NOW).readings;
            got.extend(d.feed(&bytes[cut..], NOW).readings);
            assert_eq!(got, whole, "split at {cut}");
        }
        let mut d = protocol.decoder(port("DEV"));
        let mut got = Vec::new();
        for b in bytes {
            got.extend(d.feed(std::slice::from_ref(b), NOW).readings);
        }
        assert_eq!(got, whole, "byte by byte");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framer_skips_noise_and_caps_its_buffer() {
        let mut f = Framer::new(8);
        f.push(b"xxAByy");
        let scan = |b: &[u8]| match b {
            [b'A', b'B', ..] => Scan::Frame((), 2),
            [b'A'] => Scan::Incomplete,
            _ => Scan::Skip(1, RejectReason::Noise),
        };
        assert_eq!(f.next(scan), Some(Ok(())));
        assert_eq!(f.take_noise(), 2);
        assert_eq!(f.next(scan), None);
        assert_eq!(f.take_noise(), 2);
        f.push(&[b'A'; 20]);
        assert_eq!(f.next(scan), None);
        assert_eq!(f.pending(), 1);
        assert_eq!(f.take_noise(), 19);
        // Undecidable bytes beyond the cap are dropped as noise.
        let mut f = Framer::new(8);
        f.push(&[b'A'; 30]);
        assert_eq!(f.next(|_| Scan::<()>::Incomplete), None);
        assert_eq!((f.pending(), f.take_noise()), (8, 22));
    }

    #[test]
    fn every_protocol_has_a_distinct_name_and_line() {
        let names: std::collections::HashSet<_> = Protocol::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(names.len(), Protocol::ALL.len());
        assert_eq!(Protocol::DatexS5.line().parity, Parity::Even);
        assert_eq!(Protocol::NoninDf8.on_connect(), [0x02, 0x70, 0x02, 0x02, 0x08, 0x03]);
    }
}
