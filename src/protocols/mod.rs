//! Bedside device protocols: bytes from a serial port or a TCP stream → [`crate::model::Reading`]s.
//!
//! One file per device family, each pure (no I/O) and described byte by byte in
//! `docs/protocols.md` (the `protocols.md §n` references in this module's files are its sections):
//! - [`nonin`]: Nonin pulse oximeters, serial data formats #8, #7 and #2;
//! - [`masimo`]: Masimo SET oximeters, "ASCII 1" lines;
//! - [`datex`]: GE Datex-Ohmeda S/5 and CARESCAPE displayed values (request and records);
//! - [`hl7`]: HL7 v2 ORU^R01 (IHE PCD-01) messages, MLLP framing and ACKs.
//!
//! Every stream decoder follows the same shape, after mini-redis' `connection.rs`: bytes are
//! *fed* into a capped [`framer::Framer`]; a protocol's scanner looks at the front of the buffer and
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
//! - demo and test data is dropped ([`crate::decode::RejectReason::DemoData`]);
//! - the device serial comes from the frame where the protocol carries one (Masimo `SN=`,
//!   HL7 OBX-18 / MSH-3), otherwise from the port's configuration.
//!
//! Files: [`framer`] cuts frames from bytes; [`decoded`] collects a frame's values into a
//! reading and holds what a feed yielded; one file (or folder) per device family; this file
//! names the serial protocols and dispatches a port's bytes to its family's decoder.

pub mod datex;
pub mod decoded;
pub mod framer;
#[doc(hidden)]
pub mod fuzzing;
pub mod hl7;
pub mod masimo;
pub mod nonin;

use serde::{Deserialize, Serialize};

use decoded::{Decoded, PortIdentity};

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

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use crate::fields::FieldValue;
    use crate::model::{Reading, valid_serial};

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
    fn every_protocol_has_a_distinct_name_and_line() {
        let names: std::collections::HashSet<_> = Protocol::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(names.len(), Protocol::ALL.len());
        assert_eq!(Protocol::DatexS5.line().parity, Parity::Even);
        assert_eq!(Protocol::NoninDf8.on_connect(), [0x02, 0x70, 0x02, 0x02, 0x08, 0x03]);
    }
}
