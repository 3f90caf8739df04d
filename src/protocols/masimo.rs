//! Masimo SET oximeters (Radical-7, Rad-8, Rad-87): the "ASCII 1" serial line (protocols.md §2).
//!
//! One line per second, CR LF terminated: `MM/DD/YY HH:MM:SS` and then `KEY=VALUE` tokens.
//! Field set, order, widths and `%` suffixes vary by model and firmware, so a line is
//! tokenised on spaces, each token split on its first `=`, a trailing `%` stripped and hex
//! fields read at any width. Unknown keys are ignored.
//!
//! - Dashes (`---`, `--.--`, `+--`) mean "unavailable": never a number.
//! - `SN=` names the device; all dashes, or absent, falls back to the port's configured serial.
//! - The device clock is often unset: the line's date and time are checked for shape only,
//!   and the reading is stamped with the gateway's receive time.
//! - `EXC` (exception bits) become status fields: `sensor_off` (no sensor 0x1, sensor off
//!   0x20, no cable 0x1000 — numbers are then not written), `artifact` (pulse search 0x8,
//!   interference 0x10, ambient light 0x40, low signal IQ 0x400), `low_perfusion` (0x4).
//!   0x800 ("Masimo SET") is normal operation. `ALARM` 0x40 is `low_battery`.
//! - A line that does not start with a date and time (the partial first line after the port
//!   opens, or noise) is skipped and counted as noise.

use super::decoded::{Decoded, FieldSet, PortIdentity};
use super::framer::{Framer, Scan, report_noise};
use crate::decode::{RejectReason, Rejection};
use crate::fields::{self, FieldSpec};

/// Longest line accepted (the longest real line seen is about 200 bytes).
pub const MAX_LINE: usize = 512;

const EXC_SENSOR_OFF: u32 = 0x0000_0001 | 0x0000_0020 | 0x0000_1000;
const EXC_ARTIFACT: u32 = 0x0000_0008 | 0x0000_0010 | 0x0000_0040 | 0x0000_0400;
const EXC_LOW_PERFUSION: u32 = 0x0000_0004;
const ALARM_LOW_BATTERY: u32 = 0x0040;

/// Cuts one line (without CR LF) from the front of `b`.
pub fn scan_line(b: &[u8]) -> Scan<Vec<u8>> {
    match b.iter().take(MAX_LINE + 2).position(|&c| c == b'\n') {
        Some(i) => {
            let line = b[..i].strip_suffix(b"\r").unwrap_or(&b[..i]);
            Scan::Frame(line.to_vec(), i + 1)
        }
        None if b.len() > MAX_LINE + 1 => Scan::Skip(MAX_LINE, RejectReason::Oversized),
        None => Scan::Incomplete,
    }
}

/// One parsed ASCII 1 line.
#[derive(Debug, Default, PartialEq)]
pub struct Line {
    /// The device serial, unless absent or dashes.
    pub serial: Option<String>,
    pub fields: FieldSetView,
}

/// The values of a line, before they become a reading.
#[derive(Debug, Default, PartialEq)]
pub struct FieldSetView {
    pub spo2: Option<f64>,
    pub bpm: Option<f64>,
    pub pi: Option<f64>,
    pub spco: Option<f64>,
    pub spmet: Option<f64>,
    pub sphb: Option<f64>,
    pub pvi: Option<f64>,
    pub exc: Option<u32>,
    pub alarm: Option<u32>,
    /// Values that were neither a number nor dashes.
    pub unreadable: u32,
}

fn is_date(s: &str, sep: u8) -> bool {
    let b = s.as_bytes();
    b.len() == 8 && b.iter().enumerate().all(|(i, c)| if i % 3 == 2 { *c == sep } else { c.is_ascii_digit() })
}

/// Parses one line. `Err` for a line that is not an ASCII 1 reading.
pub fn parse_line(line: &[u8]) -> Result<Line, Rejection> {
    let text = std::str::from_utf8(line).map_err(|_| Rejection::new(RejectReason::BadFrame, "line is not text"))?;
    let mut tokens = text.split_ascii_whitespace();
    let (Some(date), Some(time)) = (tokens.next(), tokens.next()) else {
        return Err(Rejection::new(RejectReason::Noise, "partial line"));
    };
    if !is_date(date, b'/') || !is_date(time, b':') {
        return Err(Rejection::new(RejectReason::Noise, "partial line"));
    }
    let mut out = Line::default();
    let v = &mut out.fields;
    let mut seen: Vec<&str> = Vec::new();
    for token in tokens {
        let Some((key, value)) = token.split_once('=') else {
            continue;
        };
        // A key twice means two lines ran together (one was cut short): refuse the line
        // rather than mix two readings.
        if seen.contains(&key) {
            return Err(Rejection::new(RejectReason::BadFrame, "two lines joined"));
        }
        seen.push(key);
        let value = value.strip_suffix('%').unwrap_or(value);
        let dashes = value.contains("--") || (!value.is_empty() && value.bytes().all(|c| c == b'-'));
        if key == "SN" {
            if !dashes && !value.is_empty() {
                out.serial = Some(value.to_owned());
            }
            continue;
        }
        let slot = match key {
            "SPO2" => &mut v.spo2,
            "BPM" => &mut v.bpm,
            "PI" => &mut v.pi,
            "SPCO" => &mut v.spco,
            "SPMET" => &mut v.spmet,
            "SPHB" => &mut v.sphb,
            "PVI" => &mut v.pvi,
            "EXC" | "ALARM" => {
                let bits = u32::from_str_radix(value, 16).ok().filter(|_| value.len() <= 8);
                if bits.is_none() {
                    v.unreadable += 1;
                }
                if key == "EXC" {
                    v.exc = bits
                } else {
                    v.alarm = bits
                }
                continue;
            }
            _ => continue,
        };
        if dashes {
            continue;
        }
        match value.parse::<f64>() {
            Ok(n) if n.is_finite() && value.bytes().all(|c| c.is_ascii_digit() || c == b'.') => *slot = Some(n),
            _ => v.unreadable += 1,
        }
    }
    Ok(out)
}

impl Line {
    fn field_set(&self) -> FieldSet {
        let v = &self.fields;
        let mut f = FieldSet::default();
        f.dropped = v.unreadable;
        let exc = v.exc;
        let off = exc.is_some_and(|e| e & EXC_SENSOR_OFF != 0);
        if let Some(e) = exc {
            f.flag(&fields::SENSOR_OFF, off);
            f.flag(&fields::ARTIFACT, e & EXC_ARTIFACT != 0);
            f.flag(&fields::LOW_PERFUSION, e & EXC_LOW_PERFUSION != 0);
        }
        if let Some(a) = v.alarm {
            f.flag(&fields::LOW_BATTERY, a & ALARM_LOW_BATTERY != 0);
        }
        if !off {
            let values: [(&'static FieldSpec, Option<f64>); 7] = [
                (&fields::SPO2, v.spo2),
                (&fields::PULSE_RATE, v.bpm),
                (&fields::PERFUSION_INDEX, v.pi),
                (&fields::SPCO, v.spco),
                (&fields::SPMET, v.spmet),
                (&fields::SPHB, v.sphb),
                (&fields::PVI, v.pvi),
            ];
            for (spec, value) in values {
                if let Some(x) = value {
                    f.number(spec, x);
                }
            }
        }
        f
    }
}

/// A Masimo ASCII 1 decoder for one connection.
#[derive(Debug)]
pub struct Decoder {
    framer: Framer,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self { framer: Framer::new(4 * MAX_LINE) }
    }

    pub fn feed(&mut self, bytes: &[u8], id: &PortIdentity, now_ns: i64, out: &mut Decoded) {
        self.framer.push(bytes);
        while let Some(r) = self.framer.next(scan_line) {
            let line = match r {
                Ok(l) => l,
                Err(rej) => {
                    out.rejected.push(rej);
                    continue;
                }
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse_line(&line) {
                Ok(l) => {
                    out.frames += 1;
                    l.field_set().into_reading(l.serial.as_deref(), id, now_ns, out);
                }
                Err(rej) => out.rejected.push(rej),
            }
        }
        report_noise(&mut self.framer, out);
    }
}

/// One ASCII 1 line (with CR LF) carrying these values; for the simulator and tests.
pub fn build_line(
    when: chrono::NaiveDateTime,
    serial: &str,
    spo2: Option<u8>,
    bpm: Option<u16>,
    pi: Option<f64>,
    exc: u32,
) -> String {
    let spo2 = spo2.map_or("---".to_owned(), |v| format!("{v:03}"));
    let bpm = bpm.map_or("---".to_owned(), |v| format!("{v:03}"));
    let pi = pi.map_or("--.--".to_owned(), |v| format!("{v:05.2}"));
    format!(
        "{} SN={serial} SPO2={spo2}% BPM={bpm} PI={pi}% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- PVI=--- ALARM=0000 EXC={exc:06X}\r\n",
        when.format("%m/%d/%y %H:%M:%S"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::FieldValue;
    use crate::protocols::Protocol;
    use crate::protocols::testutil::*;

    const EXAMPLE: &str = "05/17/24 10:30:15 SN=0000093112 SPO2=097% BPM=072 PI=02.28% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- PVI=--- ALARM=0000 EXC=000800\r\n";

    #[test]
    fn worked_example() {
        assert_eq!(EXAMPLE.len(), 135);
        let d = Protocol::MasimoAscii1.decoder(port("CONFIGURED")).feed(EXAMPLE.as_bytes(), NOW);
        assert!(d.rejected.is_empty(), "{:?}", d.rejected);
        let r = &d.readings[0];
        assert_eq!(r.serial, "0000093112", "the in-band serial wins");
        assert_eq!(field(r, "spo2"), Some(FieldValue::Int(97)));
        assert_eq!(field(r, "pulse_rate"), Some(FieldValue::Int(72)));
        assert_eq!(field(r, "perfusion_index"), Some(FieldValue::Float(2.28)));
        assert_eq!(field(r, "sensor_off"), Some(FieldValue::Bool(false)));
        assert_eq!(field(r, "artifact"), Some(FieldValue::Bool(false)));
        assert_eq!(field(r, "spco"), None);
        assert_eq!(field(r, "pvi"), None);
        assert_eq!(d.dropped_fields, 0);
        assert_well_formed(r);
        let built = build_line(
            chrono::NaiveDate::from_ymd_opt(2024, 5, 17).and_then(|d| d.and_hms_opt(10, 30, 15)).expect("date"),
            "0000093112",
            Some(97),
            Some(72),
            Some(2.28),
            0x800,
        );
        assert_eq!(built, EXAMPLE);
    }

    #[test]
    fn off_patient_line_writes_no_numbers() {
        let line = "05/17/24 10:30:16 SN=0000093112 SPO2=---% BPM=--- PI=--.--% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- PVI=--- ALARM=0000 EXC=000820\r\n";
        let d = Protocol::MasimoAscii1.decoder(port("X")).feed(line.as_bytes(), NOW);
        let r = &d.readings[0];
        assert_eq!(field(r, "sensor_off"), Some(FieldValue::Bool(true)));
        assert_eq!(field(r, "spo2"), None);
        assert_eq!(d.dropped_fields, 0);
    }

    #[test]
    fn real_captures_of_other_firmware() {
        // Rad-7 2016: no % after PI, 7-digit EXC, extra keys; serial dashes → configured one.
        let line = "05/17/24 10:30:15 SN=---------- SPO2=098% BPM=130 PI=00.55 SPCO=--% SPMET=--.-% SPHB=--.- SPOC=-- RESVD=--- DESAT=-- PIDELTA=+-- PVI=--- ALARM=000000 EXC=0000C00 EXC1=00000000\r\n";
        let d = Protocol::MasimoAscii1.decoder(port("RAD7-BED3")).feed(line.as_bytes(), NOW);
        let r = &d.readings[0];
        assert_eq!(r.serial, "RAD7-BED3");
        assert_eq!(field(r, "pulse_rate"), Some(FieldValue::Int(130)));
        assert_eq!(field(r, "perfusion_index"), Some(FieldValue::Float(0.55)));
        assert_eq!(field(r, "artifact"), Some(FieldValue::Bool(true)), "0x400 low SIQ");
        // Rad-7 2007: EXC all zero.
        let line = "05/17/24 10:30:15 SN=0000000001 SPO2=099% BPM=060 PI=--.--% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- PVI=--- ALARM=0000 EXC=000000\r\n";
        let d = Protocol::MasimoAscii1.decoder(port("X")).feed(line.as_bytes(), NOW);
        assert_eq!(field(&d.readings[0], "spo2"), Some(FieldValue::Int(99)));
    }

    #[test]
    fn partial_first_line_noise_and_split_reads() {
        let mut bytes = b"2.28% EXC=000800\r\n\x00\xff\r\n".to_vec();
        bytes.extend(EXAMPLE.as_bytes());
        bytes.extend(EXAMPLE.as_bytes());
        let d = Protocol::MasimoAscii1.decoder(port("X")).feed(&bytes, NOW);
        assert_eq!(d.readings.len(), 2);
        let reasons: Vec<_> = d.rejected.iter().map(|r| r.reason).collect();
        assert_eq!(reasons, [RejectReason::Noise, RejectReason::BadFrame]);
        assert_split_invariant(Protocol::MasimoAscii1, &bytes);
    }

    #[test]
    fn truncated_and_overlong_lines_are_refused() {
        // A line cut short by a reconnect: the rest starts with the next date.
        let cut = &EXAMPLE[..60];
        let bytes = format!("{cut}{EXAMPLE}");
        let d = Protocol::MasimoAscii1.decoder(port("X")).feed(bytes.as_bytes(), NOW);
        assert!(d.readings.is_empty(), "the joined line is refused, not mixed");
        assert_eq!(d.rejected[0].reason, RejectReason::BadFrame);
        let long = format!("{}\r\n{EXAMPLE}", "9".repeat(2000));
        let d = Protocol::MasimoAscii1.decoder(port("X")).feed(long.as_bytes(), NOW);
        assert_eq!(d.readings.len(), 1);
        assert!(d.rejected.iter().any(|r| r.reason == RejectReason::Oversized));
    }

    #[test]
    fn garbage_values_are_counted_not_written() {
        let line = "05/17/24 10:30:15 SN=A1 SPO2=1e3% BPM=-72 PI=NaN EXC=zz\r\n";
        let d = Protocol::MasimoAscii1.decoder(port("X")).feed(line.as_bytes(), NOW);
        assert!(d.readings.is_empty());
        assert_eq!(d.rejected[0].reason, RejectReason::NoFields);
        assert_eq!(d.dropped_fields, 4);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_or_yield_out_of_range_values(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..700),
        ) {
            let d = Protocol::MasimoAscii1.decoder(port("X")).feed(&bytes, NOW);
            for r in &d.readings {
                assert_well_formed(r);
            }
        }

        #[test]
        fn arbitrary_lines_never_yield_out_of_range_values(
            tokens in proptest::collection::vec("(SN|SPO2|BPM|PI|SPCO|SPMET|SPHB|PVI|EXC|ALARM)=[-+0-9.%A-F]{0,8}", 0..12),
        ) {
            let line = format!("05/17/24 10:30:15 {}\r\n", tokens.join(" "));
            let d = Protocol::MasimoAscii1.decoder(port("X")).feed(line.as_bytes(), NOW);
            for r in &d.readings {
                assert_well_formed(r);
            }
        }
    }
}
