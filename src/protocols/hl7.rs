//! HL7 v2 ORU^R01 (IHE PCD-01) messages over MLLP, and their ACKs (protocols.md §3).
//!
//! - **MLLP**: `0B` + message + `1C 0D`. Garbage before `0B` is skipped; a new `0B` before
//!   the end of a message means the message was cut short; messages are capped at the
//!   caller's limit ([`scan_mllp_within`]; the listener's is `hl7.max_message_bytes`).
//!   Segments end with CR, LF or CR LF.
//! - **Read**: MSH (delimiters from MSH-1/2, sending application MSH-3, message type
//!   MSH-9, control id MSH-10, processing id MSH-11), OBR-7 and OBX. **PID and PV1 are
//!   never read**: no name, no MRN, nothing about the patient is decoded, logged or
//!   written — the binding says which patient a device belongs to.
//! - **Identity**, per observation, since a central station's message carries several
//!   devices: the OBX's own OBX-18 (equipment instance, the device's EUI-64); else the
//!   nearest row above it in the OBX-4 containment tree that names a device in its OBX-18
//!   (`2.1.1.1` belongs to the MDS row `2.0.0.0`, or to a VMD row `2.1.0.0` naming its own);
//!   else the message's device when its OBX-18s name exactly one; without any OBX-18, the
//!   EUI-64 in MSH-3 (`APP^<EUI-64>^EUI-64`), else MSH-3's first component. An observation
//!   that cannot be tied to one device of a multi-device message is refused
//!   ([`RejectReason::AmbiguousDevice`]), never guessed.
//! - **Values**: numeric OBX (`NM`) whose OBX-3 carries an IEEE 11073 (MDC) code the
//!   canonical field table knows ([`crate::fields::by_mdc`]; code first, the `MDC_…` name
//!   second; LOINC-first rows use the MDC alternate). OBX-11 `X`, `D` or `W`, an empty
//!   OBX-5, a non-number, a vendor sentinel (`-999`, `-100`: negative, so out of every
//!   range) and a unit the field cannot be converted from are not written. °F is converted.
//! - **Time**: OBX-14, else OBR-7, else MSH-7, else the receipt. IHE PCD requires
//!   synchronized clocks and the zone offset; a time without offset is read in
//!   `hl7.time_zone` ([`Zone`]: the gateway's own by default). A local time that its zone
//!   skips (the change to daylight saving time) is refused; one it has twice (the repeated
//!   hour) is refused unless the later instant is still ahead of the gateway clock ([`instant`]
//!   says why). A time further ahead of the gateway clock than `clock.future_tolerance_ms` is
//!   a device clock that is wrong: refused, and its device reported (`clock_ahead`).
//!   Observations are grouped into one reading per device and time, so NIBP measured earlier
//!   is written at its own time and a repeat of it in a later message overwrites the same
//!   point in InfluxDB.
//! - **Demo and test data**: MSH-11 `T` (training) or `D` (debugging), or `DEMO` in any
//!   OBX-8, drops the whole message ([`RejectReason::DemoData`]); it is still acknowledged
//!   (AA), so the sender does not retry.
//! - **ACK** (original mode): AA once the readings are committed; AR for what a retry
//!   cannot fix (not HL7, not ORU^R01, no control id, no device identity); AE for an ORU
//!   without any OBX. MSA-3 carries a fixed reason text, never message content.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::decoded::{Decoded, FieldSet, PortIdentity};
use super::framer::Scan;
use chrono::{Offset, TimeZone};

use crate::decode::{ClockAhead, MIN_TS_NS, Now, RejectReason, Rejection};
use crate::fields::{self, FieldSpec};

pub const START_BLOCK: u8 = 0x0B;
pub const END_BLOCK: [u8; 2] = [0x1C, 0x0D];
/// Largest message [`scan_mllp`] accepts (the simulator's and the tests' limit; the listener
/// takes `hl7.max_message_bytes`).
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// Finds an MLLP-framed message of at most [`MAX_MESSAGE`] bytes at the front of `b`.
pub fn scan_mllp(b: &[u8]) -> Scan<Vec<u8>> {
    scan_mllp_within(b, MAX_MESSAGE)
}

/// Finds an MLLP-framed message of at most `max` bytes at the front of `b`; a longer one is
/// skipped as [`RejectReason::Oversized`] once more than `max` bytes of it are in.
pub fn scan_mllp_within(b: &[u8], max: usize) -> Scan<Vec<u8>> {
    if b[0] != START_BLOCK {
        let skip = b.iter().position(|&c| c == START_BLOCK).unwrap_or(b.len());
        return Scan::Skip(skip, RejectReason::Noise);
    }
    let window = &b[1..b.len().min(max.saturating_add(3))];
    let mut from = 0;
    while let Some(i) = window[from..].iter().position(|&c| c == END_BLOCK[0]) {
        let i = from + i;
        if window.get(i + 1) == Some(&END_BLOCK[1]) {
            return Scan::Frame(window[..i].to_vec(), i + 3);
        }
        from = i + 1;
    }
    // A new start block before the end: this message was cut short.
    if let Some(next) = window.iter().position(|&c| c == START_BLOCK) {
        return Scan::Skip(next + 1, RejectReason::BadFrame);
    }
    let most = max.saturating_add(2);
    if b.len() > most { Scan::Skip(most, RejectReason::Oversized) } else { Scan::Incomplete }
}

/// Wraps a message in MLLP framing.
pub fn frame_mllp(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 3);
    out.push(START_BLOCK);
    out.extend_from_slice(msg);
    out.extend_from_slice(&END_BLOCK);
    out
}

/// The delimiters of a message (MSH-1 and MSH-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Delims {
    field: char,
    component: char,
    repetition: char,
    escape: char,
    subcomponent: char,
}

/// What an ACK needs from the message header. Raw field text (still escaped), so it can be
/// echoed as it came.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    pub sending_app: String,
    pub sending_facility: String,
    pub receiving_app: String,
    pub receiving_facility: String,
    pub control_id: String,
    pub message_type: String,
    pub processing_id: String,
    pub version: String,
}

/// MSA-1 acknowledgement codes (original mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Accepted: the readings are committed (or there was nothing to store).
    Accept,
    /// Error: the message was understood but is wrong; the sender may retry.
    Error,
    /// Reject: retrying the same message cannot help.
    Reject,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "AA",
            Self::Error => "AE",
            Self::Reject => "AR",
        }
    }
}

/// A decoded message and the answer it deserves once its readings are committed.
#[derive(Debug, PartialEq)]
pub struct Message {
    pub header: Option<Header>,
    pub decoded: Decoded,
    pub ack: AckCode,
    /// MSA-3 for AE/AR: a fixed text, never message content.
    pub reason: Option<&'static str>,
    /// Tells a resend of this message from a new one ([`retry_key`]); `None` when nothing is
    /// to be stored.
    pub retry_key: Option<[u8; 32]>,
}

impl Message {
    fn refuse(header: Option<Header>, ack: AckCode, reason: RejectReason, text: &'static str) -> Self {
        let mut decoded = Decoded::default();
        decoded.rejected.push(Rejection::new(reason, text));
        Self { header, decoded, ack, reason: Some(text), retry_key: None }
    }
}

/// Splits on a delimiter, without allocating.
fn part(s: &str, sep: char, i: usize) -> &str {
    s.split(sep).nth(i).unwrap_or("")
}

/// Resolves HL7 escape sequences (`\F\ \S\ \T\ \R\ \E\ \Xhh..\`); unknown ones are dropped.
fn unescape(s: &str, d: Delims) -> String {
    if !s.contains(d.escape) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut parts = s.split(d.escape);
    out.push_str(parts.next().unwrap_or(""));
    let mut inside = true;
    for p in parts {
        if inside {
            match p {
                "F" => out.push(d.field),
                "S" => out.push(d.component),
                "T" => out.push(d.subcomponent),
                "R" => out.push(d.repetition),
                "E" => out.push(d.escape),
                x if x.starts_with('X') && x.len() % 2 == 1 => {
                    let bytes: Vec<u8> =
                        (1..x.len()).step_by(2).filter_map(|i| u8::from_str_radix(x.get(i..i + 2)?, 16).ok()).collect();
                    out.push_str(&String::from_utf8_lossy(&bytes));
                }
                _ => {}
            }
        } else {
            out.push_str(p);
        }
        inside = !inside;
    }
    out
}

fn parse_msh(seg: &str) -> Option<(Delims, Vec<&str>)> {
    let rest = seg.strip_prefix("MSH")?;
    let mut chars = rest.chars();
    let field = chars.next()?;
    let enc: Vec<char> = chars.take_while(|c| *c != field).collect();
    if enc.len() < 3 || field.is_alphanumeric() || enc.contains(&field) {
        return None;
    }
    let d = Delims {
        field,
        component: enc[0],
        repetition: enc[1],
        escape: enc[2],
        subcomponent: enc.get(3).copied().unwrap_or('&'),
    };
    // parts[0] = "MSH", parts[1] = MSH-2, parts[i] = MSH-(i+1).
    Some((d, seg.split(field).collect()))
}

/// How times without a zone offset are read (`hl7.time_zone`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    /// The gateway's zone (`TZ`, else `/etc/localtime`), daylight saving time included.
    Local,
    /// A fixed offset from UTC.
    Fixed(chrono::FixedOffset),
}

impl Zone {
    pub fn utc() -> Self {
        Self::Fixed(chrono::Utc.fix())
    }

    /// Reads `"local"`, `"UTC"` or a fixed offset such as `"+01:00"` or `"-0330"`.
    pub fn parse(s: &str) -> Result<Self, ZoneError> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("local") {
            return Ok(Self::Local);
        }
        if s.eq_ignore_ascii_case("UTC") {
            return Ok(Self::utc());
        }
        let bad = || ZoneError(s.to_owned());
        let (sign, hhmm) = match s.as_bytes().first() {
            Some(b'+') => (1, &s[1..]),
            Some(b'-') => (-1, &s[1..]),
            _ => return Err(bad()),
        };
        let digits = match (hhmm.len(), hhmm.get(2..3)) {
            (5, Some(":")) => format!("{}{}", &hhmm[..2], &hhmm[3..]),
            (4, _) => hhmm.to_owned(),
            _ => return Err(bad()),
        };
        if !digits.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        let (h, m) = (digits[..2].parse::<i32>().map_err(|_| bad())?, digits[2..].parse::<i32>().map_err(|_| bad())?);
        if h > 23 || m > 59 {
            return Err(bad());
        }
        chrono::FixedOffset::east_opt(sign * (h * 3600 + m * 60)).map(Self::Fixed).ok_or_else(bad)
    }
}

/// A `hl7.time_zone` that is neither `"local"`, `"UTC"` nor an offset; the text names what is
/// accepted (configuration validation prints it after the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither \"local\", \"UTC\" nor an offset such as \"+01:00\"")]
pub struct ZoneError(String);

/// A time read from a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// ns since the epoch.
    At(i64),
    /// A local time its zone skips (the hour a change to daylight saving time jumps over).
    Skipped,
    /// A local time its zone has twice (the hour repeated when daylight saving time ends):
    /// the earlier and the later instant.
    Twice(i64, i64),
}

/// Parses an HL7 time (`YYYY[MM[DD[HH[MM[SS[.ffff]]]]]][+/-ZZZZ]`); a time without offset is
/// read in `zone`. `None`: not a time.
pub fn parse_time(s: &str, zone: Zone) -> Option<Stamp> {
    let s = s.trim();
    let (main, offset_secs) = match s.find(['+', '-']) {
        Some(i) => {
            let z = &s[i + 1..];
            if z.len() != 4 || !z.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let mins = z[..2].parse::<i64>().ok()? * 60 + z[2..].parse::<i64>().ok()?;
            let sign = if s.as_bytes()[i] == b'-' { -1 } else { 1 };
            (&s[..i], Some(sign * mins * 60))
        }
        None => (s, None),
    };
    let (digits, frac) = main.split_once('.').unwrap_or((main, ""));
    if digits.len() < 8
        || digits.len() > 14
        || digits.len() % 2 != 0
        || !digits.bytes().all(|c| c.is_ascii_digit())
        || frac.len() > 9
        || !frac.bytes().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| digits.get(r).map_or(Some(0), |x| x.parse::<u32>().ok());
    let date = chrono::NaiveDate::from_ymd_opt(num(0..4)? as i32, num(4..6)?, num(6..8)?)?;
    let time = chrono::NaiveTime::from_hms_opt(num(8..10)?, num(10..12)?, num(12..14)?)?;
    let frac_ns = if frac.is_empty() { 0 } else { frac.parse::<i64>().ok()? * 10i64.pow(9 - frac.len() as u32) };
    let local = date.and_time(time);
    let ns = |utc_secs: i64| utc_secs.checked_mul(1_000_000_000)?.checked_add(frac_ns);
    let offset = match (offset_secs, zone) {
        (Some(o), _) => o,
        (None, Zone::Fixed(o)) => i64::from(o.local_minus_utc()),
        (None, Zone::Local) => {
            return match chrono::Local.from_local_datetime(&local) {
                chrono::MappedLocalTime::Single(t) => Some(Stamp::At(ns(t.timestamp())?)),
                chrono::MappedLocalTime::None => Some(Stamp::Skipped),
                chrono::MappedLocalTime::Ambiguous(a, b) => {
                    let (a, b) = (ns(a.timestamp())?, ns(b.timestamp())?);
                    Some(Stamp::Twice(a.min(b), a.max(b)))
                }
            };
        }
    };
    Some(Stamp::At(ns(local.and_utc().timestamp() - offset)?))
}

/// The instant of an observation's time, or why it has none. In the repeated hour, the later
/// instant is ruled out while it still lies further ahead of the gateway clock than a device
/// clock may be; otherwise either may be meant and the time is refused: taking the earlier
/// would write the readings of the second pass an hour early, over the first pass's points
/// (same series and time) and perhaps to the patient who had the bed an hour before.
fn instant(stamp: Stamp, now: Now) -> Result<i64, Rejection> {
    match stamp {
        Stamp::At(t) => Ok(t),
        Stamp::Skipped => Err(Rejection::new(
            RejectReason::NonexistentLocalTime,
            "local time skipped by a change to daylight saving time (hl7.time_zone)",
        )),
        Stamp::Twice(earlier, later) if now.too_far_ahead(later).is_some() => Ok(earlier),
        Stamp::Twice(..) => Err(Rejection::new(
            RejectReason::AmbiguousLocalTime,
            "local time repeated when daylight saving time ends (hl7.time_zone)",
        )),
    }
}

/// MDC reference ids the gateway knows, for OBX-3 rows that name the code only.
const MDC_NAMES: &[(&str, u32)] = &[
    ("MDC_ECG_HEART_RATE", 147842),
    ("MDC_PULS_OXIM_SAT_O2", 150456),
    ("MDC_PULS_OXIM_PULS_RATE", 149530),
    ("MDC_BLD_PERF_INDEX", 150488),
    ("MDC_PRESS_BLD_NONINV_SYS", 150021),
    ("MDC_PRESS_BLD_NONINV_DIA", 150022),
    ("MDC_PRESS_BLD_NONINV_MEAN", 150023),
    ("MDC_PRESS_CUFF_SYS", 150301),
    ("MDC_PRESS_CUFF_DIA", 150302),
    ("MDC_PRESS_CUFF_MEAN", 150303),
    ("MDC_TEMP", 150344),
    ("MDC_TEMP_BODY", 150364),
    ("MDC_TEMP_AXIL", 188496),
    ("MDC_RESP_RATE", 151562),
];

/// The canonical field of an OBX-3 value.
fn field_of(obx3: &str, d: Delims) -> Option<&'static FieldSpec> {
    let c = |i| part(obx3, d.component, i).trim();
    for (code, name, system) in [(c(0), c(1), c(2)), (c(3), c(4), c(5))] {
        if !system.is_empty() && system != "MDC" {
            continue;
        }
        if let Some(f) = code.parse::<u32>().ok().and_then(fields::by_mdc) {
            return Some(f);
        }
        if let Some((_, code)) = MDC_NAMES.iter().find(|(n, _)| *n == name) {
            return fields::by_mdc(*code);
        }
    }
    None
}

/// Converts `v` in the OBX-6 unit to the field's unit; `None` when the unit is not one the
/// field can be given in. An empty unit is taken as the field's own.
fn convert(spec: &FieldSpec, v: f64, obx6: &str, d: Delims) -> Option<f64> {
    let unit = part(obx6, d.component, 0).trim();
    let name = part(obx6, d.component, 1).trim();
    if unit.is_empty() && name.is_empty() {
        return Some(v);
    }
    let is = |codes: &[&str]| codes.contains(&unit) || codes.contains(&name);
    match spec.unit {
        "/min"
            if is(&[
                "264864",
                "264928",
                "/min",
                "{beats}/min",
                "{beat}/min",
                "{breaths}/min",
                "{resp}/min",
                "bpm",
                "MDC_DIM_BEAT_PER_MIN",
                "MDC_DIM_RESP_PER_MIN",
            ]) =>
        {
            Some(v)
        }
        "%" if is(&["262688", "%", "MDC_DIM_PERCENT"]) => Some(v),
        "mmHg" if is(&["266016", "mm[Hg]", "mmHg", "MDC_DIM_MMHG"]) => Some(v),
        "°C" if is(&["268192", "Cel", "°C", "degC", "MDC_DIM_DEGC"]) => Some(v),
        "°C" if is(&["266560", "[degF]", "degF", "MDC_DIM_FAHR"]) => Some((v - 32.0) * 5.0 / 9.0),
        _ => None,
    }
}

/// Which device each observation of a message belongs to (module docs, "Identity").
struct Devices {
    /// OBX-4 of the rows whose OBX-18 names a device (`2.0.0.0` for an MDS), and that device;
    /// `None` where rows of the same place name different devices.
    rows: HashMap<String, Option<String>>,
    /// The device of the whole message: the only one its OBX-18s name, else MSH-3's; `None`
    /// when its OBX-18s name several.
    message: Option<String>,
    /// How many devices the OBX-18s name.
    named: usize,
}

impl Devices {
    fn of(obx: &[Vec<&str>], msh3: &str, d: Delims) -> Self {
        let mut rows: HashMap<String, Option<String>> = HashMap::new();
        let mut named: BTreeSet<String> = BTreeSet::new();
        for f in obx {
            let Some(serial) = obx18_serial(f, d) else { continue };
            let place = f.get(4).copied().unwrap_or("").trim();
            if !place.is_empty() {
                let row = rows.entry(place.to_owned()).or_insert_with(|| Some(serial.clone()));
                if row.as_ref().is_some_and(|s| *s != serial) {
                    *row = None;
                }
            }
            named.insert(serial);
        }
        let ok = |s: &str| {
            let s = unescape(s.trim(), d);
            crate::model::valid_serial(&s).then_some(s)
        };
        let count = named.len();
        let message = match count {
            0 => (part(msh3, d.component, 2) == "EUI-64")
                .then(|| ok(part(msh3, d.component, 1)))
                .flatten()
                .or_else(|| ok(part(msh3, d.component, 0))),
            1 => named.pop_first(),
            _ => None,
        };
        Self { rows, message, named: count }
    }

    /// The device of one OBX: its own OBX-18, else the nearest row above it in the containment
    /// tree of OBX-4 (channel `2.1.1.0`, VMD `2.1.0.0`, MDS `2.0.0.0`) that names one, else
    /// the message's. `None`: the observation cannot be tied to one device.
    fn of_obx(&self, f: &[&str], d: Delims) -> Option<String> {
        if let Some(own) = obx18_serial(f, d) {
            return Some(own);
        }
        let place: Vec<&str> = f.get(4).copied().unwrap_or("").trim().split('.').collect();
        // PCD containment has four levels; a deeper OBX-4 is no tree to walk (and walking
        // one of thousands of levels would cost their square).
        let depths = if place.len() <= MAX_CONTAINMENT_LEVELS { 1..place.len() } else { 0..0 };
        for depth in depths.rev() {
            let mut above = place[..depth].to_vec();
            above.resize(place.len(), "0");
            if let Some(row) = self.rows.get(&above.join(".")) {
                return row.clone();
            }
        }
        self.message.clone()
    }
}

/// Most OBX-4 levels looked up in the containment tree (MDS.VMD.CHAN.METRIC, and some room).
const MAX_CONTAINMENT_LEVELS: usize = 8;

/// The device an OBX names in OBX-18 (equipment instance identifier), if a valid serial.
fn obx18_serial(f: &[&str], d: Delims) -> Option<String> {
    let s = unescape(part(f.get(18).copied().unwrap_or(""), d.component, 0).trim(), d);
    crate::model::valid_serial(&s).then_some(s)
}

/// Decodes one message (without MLLP framing). `now` is the receive time; times without an
/// offset are read in `zone`.
pub fn decode_message(msg: &[u8], now: Now, zone: Zone) -> Message {
    let text = String::from_utf8_lossy(msg);
    let mut segments = text.split(['\r', '\n']).filter(|s| !s.trim().is_empty());
    let Some((d, msh)) = segments.next().and_then(parse_msh) else {
        return Message::refuse(None, AckCode::Reject, RejectReason::BadFrame, "not an HL7 message: no MSH segment");
    };
    let f = |i: usize| msh.get(i - 1).copied().unwrap_or("");
    let header = Header {
        sending_app: f(3).to_owned(),
        sending_facility: f(4).to_owned(),
        receiving_app: f(5).to_owned(),
        receiving_facility: f(6).to_owned(),
        control_id: unescape(f(10), d),
        message_type: f(9).to_owned(),
        processing_id: f(11).to_owned(),
        version: part(f(12), d.component, 0).to_owned(),
    };
    if header.control_id.is_empty() || header.control_id.chars().any(|c| c.is_control()) {
        return Message::refuse(
            Some(header),
            AckCode::Reject,
            RejectReason::BadFrame,
            "MSH-10 (message control id) missing or invalid",
        );
    }
    if part(f(9), d.component, 0) != "ORU" || part(f(9), d.component, 1) != "R01" {
        return Message::refuse(Some(header), AckCode::Reject, RejectReason::Unsupported, "only ORU^R01 is accepted");
    }
    let mut obr7 = "";
    let mut obx: Vec<Vec<&str>> = Vec::new();
    for seg in segments {
        let fields: Vec<&str> = seg.split(d.field).collect();
        match fields[0].trim() {
            "OBR" => obr7 = fields.get(7).copied().unwrap_or(""),
            // Observation time falls back to the closest OBR before it.
            "OBX" => {
                let mut f = fields;
                if f.get(14).is_none_or(|t| t.trim().is_empty()) && !obr7.is_empty() {
                    f.resize(f.len().max(15), "");
                    f[14] = obr7;
                }
                obx.push(f);
            }
            _ => {} // PID, PV1, NTE, …: never read.
        }
    }
    if obx.is_empty() {
        return Message::refuse(Some(header), AckCode::Error, RejectReason::NoFields, "no OBX segment");
    }
    let get = |f: &Vec<&'_ str>, i: usize| f.get(i).copied().unwrap_or("").trim().to_owned();
    let processing = part(&header.processing_id, d.component, 0).to_owned();
    if matches!(processing.as_str(), "T" | "D") || obx.iter().any(|f| get(f, 8).contains("DEMO")) {
        let mut m = Message::refuse(Some(header), AckCode::Accept, RejectReason::DemoData, "demo or test data");
        m.reason = None;
        return m;
    }
    let devices = Devices::of(&obx, f(3), d);
    if devices.named == 0 && devices.message.is_none() {
        return Message::refuse(
            Some(header),
            AckCode::Reject,
            RejectReason::MissingSerial,
            "no device identity in OBX-18 or MSH-3",
        );
    };

    let msh_time = parse_time(f(7), zone);
    let mut groups: BTreeMap<(String, i64), FieldSet> = BTreeMap::new();
    let mut out = Decoded::default();
    for o in &obx {
        if get(o, 2) != "NM" || matches!(get(o, 11).as_str(), "X" | "D" | "W") {
            continue;
        }
        let Some(spec) = field_of(&get(o, 3), d) else {
            continue;
        };
        let Some(serial) = devices.of_obx(o, d) else {
            out.rejected.push(Rejection::new(
                RejectReason::AmbiguousDevice,
                "observation not tied to one device of a multi-device message",
            ));
            continue;
        };
        let stamp = parse_time(&get(o, 14), zone).or(msh_time).unwrap_or(Stamp::At(now.ns));
        let ts = match instant(stamp, now) {
            Ok(ts) => ts,
            Err(rejection) => {
                out.rejected.push(rejection);
                continue;
            }
        };
        let set = groups.entry((serial, ts)).or_default();
        let value = get(o, 5).parse::<f64>().ok().and_then(|v| convert(spec, v, &get(o, 6), d));
        match value {
            Some(v) => set.number(spec, v),
            None => set.dropped += 1,
        }
    }
    out.frames = 1;
    let id = PortIdentity { serial: None, signal_type: None };
    for ((serial, ts), set) in groups {
        let ahead = now.too_far_ahead(ts);
        if ts < MIN_TS_NS || ahead.is_some() {
            out.dropped_fields += set.dropped;
            out.rejected.push(Rejection::new(
                RejectReason::TimestampOutOfRange,
                if ahead.is_some() {
                    "observation time ahead of the gateway clock by more than clock.future_tolerance_ms"
                } else {
                    "observation time before 2000"
                },
            ));
            if let Some(ahead_ns) = ahead {
                out.clock_ahead.push(ClockAhead { serial, ahead_ns });
            }
            continue;
        }
        if set.is_empty() {
            out.dropped_fields += set.dropped;
            continue;
        }
        set.into_reading(Some(&serial), &id, ts, &mut out);
    }
    // MSH-7's place in `msg`: `text` borrows `msg` unless the message is not UTF-8.
    let msh7 = match (&text, msh.get(6)) {
        (std::borrow::Cow::Borrowed(t), Some(f7)) => {
            (f7.as_ptr() as usize).checked_sub(t.as_ptr() as usize).map(|start| start..start + f7.len())
        }
        _ => None,
    };
    let retry_key = (!out.readings.is_empty()).then(|| retry_key(msg, msh7, &out.readings));
    Message { header: Some(header), decoded: out, ack: AckCode::Accept, reason: None, retry_key }
}

/// What tells a resend from a new message: SHA-256 over the message without MSH-7 (a sender
/// may stamp a message anew each time it sends it) and over the times of its readings. MSH-10
/// alone cannot: monitors number messages with counters that restart after a reboot or wrap,
/// and two monitors may share MSH-3. The reading times keep apart two messages alike in every
/// byte but whose readings took their time from MSH-7 or from the receipt. `msh7` is the byte
/// range of MSH-7 in `msg`, when known; without it the whole message counts (a restamped resend
/// is then stored again, which InfluxDB takes as an overwrite of the same point).
pub fn retry_key(msg: &[u8], msh7: Option<std::ops::Range<usize>>, readings: &[crate::model::Reading]) -> [u8; 32] {
    let mut d = ring::digest::Context::new(&ring::digest::SHA256);
    match msh7.filter(|r| r.start <= r.end && r.end <= msg.len()) {
        Some(r) => {
            d.update(&((msg.len() - r.len()) as u64).to_be_bytes());
            d.update(&msg[..r.start]);
            d.update(&msg[r.end..]);
        }
        None => {
            d.update(&(msg.len() as u64).to_be_bytes());
            d.update(msg);
        }
    }
    for r in readings {
        d.update(&r.ts_ns.to_be_bytes());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(d.finish().as_ref());
    key
}

/// An original-mode ACK for `header` (or for an unreadable message), MLLP-framed.
/// `control_id` is the ACK's own MSH-10; `time` its MSH-7 (`YYYYMMDDHHMMSS+ZZZZ`).
pub fn build_ack(
    header: Option<&Header>,
    code: AckCode,
    reason: Option<&str>,
    control_id: &str,
    time: &str,
) -> Vec<u8> {
    let empty = Header::default();
    let h = header.unwrap_or(&empty);
    let version = if h.version.is_empty() { "2.6" } else { h.version.as_str() };
    let processing = if h.processing_id.is_empty() { "P" } else { h.processing_id.as_str() };
    let mut msg = format!(
        "MSH|^~\\&|{}|{}|{}|{}|{time}||ACK^R01^ACK|{control_id}|{processing}|{version}\rMSA|{}|{}",
        h.receiving_app,
        h.receiving_facility,
        h.sending_app,
        h.sending_facility,
        code.as_str(),
        h.control_id,
    );
    if let Some(r) = reason {
        msg.push('|');
        msg.push_str(r);
    }
    msg.push('\r');
    frame_mllp(msg.as_bytes())
}

/// Reads the MSA segment of an ACK: (code, MSA-2 control id). For the simulator and tests.
pub fn parse_ack(msg: &[u8]) -> Option<(String, String)> {
    let text = String::from_utf8_lossy(msg);
    let msa = text.split(['\r', '\n']).find(|s| s.starts_with("MSA"))?;
    let f: Vec<&str> = msa.split('|').collect();
    Some((f.get(1)?.to_string(), f.get(2).unwrap_or(&"").to_string()))
}

/// Values for [`build_oru`].
#[derive(Debug, Clone, Default)]
pub struct Vitals {
    pub heart_rate: Option<u16>,
    pub spo2: Option<u8>,
    pub pulse_rate: Option<u16>,
    pub nibp: Option<(u16, u16, u16)>,
    pub temperature: Option<f64>,
    pub resp_rate: Option<u16>,
}

/// A PCD-01 ORU^R01 message in the shape of the worked example, for the simulator and
/// tests. `time` and `nibp_time` are HL7 times. No patient data: PID carries nothing.
pub fn build_oru(eui64: &str, control_id: &str, time: &str, nibp_time: &str, v: &Vitals) -> Vec<u8> {
    let mut s = format!(
        "MSH|^~\\&|MON^{eui64}^EUI-64|ACME|GW|HOSP|{time}||ORU^R01^ORU_R01|{control_id}|P|2.6|||NE|AL||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO\r\
         PID|||\r\
         OBR|1|{control_id}^MON^{eui64}^EUI-64|{control_id}^MON^{eui64}^EUI-64|182777000^monitoring of patient^SCT|||{time}\r\
         OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||{eui64}^ACME_MON^{eui64}^EUI-64\r"
    );
    let mut n = 1;
    let mut obx = |code: &str, sub: &str, value: String, unit: &str, t: &str| {
        n += 1;
        s.push_str(&format!("OBX|{n}|NM|{code}^MDC|{sub}|{value}|{unit}^MDC|||||R|||{t}\r"));
    };
    if let Some(x) = v.heart_rate {
        obx("147842^MDC_ECG_HEART_RATE", "1.1.1.1", x.to_string(), "264864^MDC_DIM_BEAT_PER_MIN", time);
    }
    if let Some(x) = v.spo2 {
        obx("150456^MDC_PULS_OXIM_SAT_O2", "1.2.1.1", x.to_string(), "262688^MDC_DIM_PERCENT", time);
    }
    if let Some(x) = v.pulse_rate {
        obx("149530^MDC_PULS_OXIM_PULS_RATE", "1.2.1.2", x.to_string(), "264864^MDC_DIM_BEAT_PER_MIN", time);
    }
    if let Some((sys, dia, mean)) = v.nibp {
        obx("150021^MDC_PRESS_BLD_NONINV_SYS", "1.3.1.1", sys.to_string(), "266016^MDC_DIM_MMHG", nibp_time);
        obx("150022^MDC_PRESS_BLD_NONINV_DIA", "1.3.1.2", dia.to_string(), "266016^MDC_DIM_MMHG", nibp_time);
        obx("150023^MDC_PRESS_BLD_NONINV_MEAN", "1.3.1.3", mean.to_string(), "266016^MDC_DIM_MMHG", nibp_time);
    }
    if let Some(x) = v.temperature {
        obx("150364^MDC_TEMP_BODY", "1.4.1.1", format!("{x:.1}"), "268192^MDC_DIM_DEGC", time);
    }
    if let Some(x) = v.resp_rate {
        obx("151562^MDC_RESP_RATE", "1.5.1.1", x.to_string(), "264928^MDC_DIM_RESP_PER_MIN", time);
    }
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::FieldValue;
    use crate::model::Reading;
    use crate::protocols::framer::Framer;
    use crate::protocols::testutil::*;

    const EXAMPLE: &[&str] = &[
        "MSH|^~\\&|MON^0123456789ABCDEF^EUI-64|ACME|GW|HOSP|20240517103015+0000||ORU^R01^ORU_R01|MSG00001|P|2.6|||NE|AL||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO",
        "PID|||12345^^^HOSP^MR||DOE^JOHN^^^^^L",
        "PV1||I|ICU^^BED12",
        "OBR|1|MSG00001^MON^0123456789ABCDEF^EUI-64|MSG00001^MON^0123456789ABCDEF^EUI-64|182777000^monitoring of patient^SCT|||20240517103015+0000",
        "OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||0123456789ABCDEF^ACME_MON^0123456789ABCDEF^EUI-64",
        "OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|72|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R|||20240517103015+0000",
        "OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|97|262688^MDC_DIM_PERCENT^MDC|||||R|||20240517103015+0000",
        "OBX|4|NM|149530^MDC_PULS_OXIM_PULS_RATE^MDC|1.2.1.2|71|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R|||20240517103015+0000",
        "OBX|5|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.3.1.1|120|266016^MDC_DIM_MMHG^MDC|||||R|||20240517102900+0000",
        "OBX|6|NM|150022^MDC_PRESS_BLD_NONINV_DIA^MDC|1.3.1.2|80|266016^MDC_DIM_MMHG^MDC|||||R|||20240517102900+0000",
        "OBX|7|NM|150023^MDC_PRESS_BLD_NONINV_MEAN^MDC|1.3.1.3|93|266016^MDC_DIM_MMHG^MDC|||||R|||20240517102900+0000",
        "OBX|8|NM|150364^MDC_TEMP_BODY^MDC|1.4.1.1|36.8|268192^MDC_DIM_DEGC^MDC|||||R|||20240517103015+0000",
    ];
    const T_VITALS: i64 = 1_715_941_815_000_000_000; // 2024-05-17T10:30:15Z
    const T_NIBP: i64 = 1_715_941_740_000_000_000; // 2024-05-17T10:29:00Z

    /// Decodes as received at `ns`, times without offset in UTC, a 2 min clock tolerance.
    fn decode(msg: &[u8], ns: i64) -> Message {
        decode_message(msg, now(ns), Zone::utc())
    }

    fn now(ns: i64) -> Now {
        Now { ns, future_tolerance_ns: 120_000_000_000 }
    }

    fn example() -> Vec<u8> {
        EXAMPLE.iter().flat_map(|s| s.bytes().chain([b'\r'])).collect()
    }

    fn at(readings: &[Reading], ts: i64) -> &Reading {
        readings.iter().find(|r| r.ts_ns == ts).expect("reading at that time")
    }

    #[test]
    fn worked_example_decodes() {
        let msg = example();
        assert_eq!(msg.len(), 1254);
        let wire = frame_mllp(&msg);
        assert_eq!(wire.len(), 1257);
        assert_eq!(&wire[..8], [0x0B, 0x4D, 0x53, 0x48, 0x7C, 0x5E, 0x7E, 0x5C]);
        assert_eq!(&wire[wire.len() - 6..], [0x30, 0x30, 0x30, 0x0D, 0x1C, 0x0D]);

        let m = decode(&msg, NOW + 1_000_000_000);
        assert_eq!(m.ack, AckCode::Accept);
        assert!(m.decoded.rejected.is_empty(), "{:?}", m.decoded.rejected);
        let h = m.header.as_ref().expect("header");
        assert_eq!(h.control_id, "MSG00001");
        assert_eq!(m.decoded.readings.len(), 2, "vitals at 10:30:15, NIBP at 10:29:00");
        let v = at(&m.decoded.readings, T_VITALS);
        assert_eq!(v.serial, "0123456789ABCDEF");
        assert_eq!(field(v, "heart_rate"), Some(FieldValue::Int(72)));
        assert_eq!(field(v, "spo2"), Some(FieldValue::Int(97)));
        assert_eq!(field(v, "pulse_rate"), Some(FieldValue::Int(71)));
        assert_eq!(field(v, "temperature"), Some(FieldValue::Float(36.8)));
        let b = at(&m.decoded.readings, T_NIBP);
        assert_eq!(field(b, "systolic_bp"), Some(FieldValue::Int(120)));
        assert_eq!(field(b, "diastolic_bp"), Some(FieldValue::Int(80)));
        assert_eq!(field(b, "mean_bp"), Some(FieldValue::Int(93)));
        for r in &m.decoded.readings {
            assert_well_formed(r);
        }
        // No patient data anywhere in what was decoded.
        let dump = format!("{m:?}");
        for personal in ["DOE", "JOHN", "12345^", "BED12"] {
            assert!(!dump.contains(personal), "{personal} in {dump}");
        }
    }

    #[test]
    fn ack_is_byte_exact() {
        let m = decode(&example(), NOW);
        let ack = build_ack(m.header.as_ref(), AckCode::Accept, None, "ACK00001", "20240517103016+0000");
        let expected = b"\x0bMSH|^~\\&|GW|HOSP|MON^0123456789ABCDEF^EUI-64|ACME|20240517103016+0000||ACK^R01^ACK|ACK00001|P|2.6\rMSA|AA|MSG00001\r\x1c\r";
        assert_eq!(String::from_utf8_lossy(&ack), String::from_utf8_lossy(expected));
        assert_eq!(ack.len(), 117);
        assert_eq!(parse_ack(&ack[1..ack.len() - 2]), Some(("AA".into(), "MSG00001".into())));
    }

    #[test]
    fn rejections_carry_a_reason() {
        let m = decode(b"garbage", NOW);
        assert_eq!((m.ack, m.reason.is_some()), (AckCode::Reject, true));
        let ack = build_ack(m.header.as_ref(), m.ack, m.reason, "A1", "20240517103016+0000");
        assert!(String::from_utf8_lossy(&ack).contains("MSA|AR||not an HL7 message"));

        let adt = b"MSH|^~\\&|X|Y|GW|HOSP|20240517103015||ADT^A01|C1|P|2.6\rPID|||1^^^H^MR||DOE^JANE\r";
        let m = decode(adt, NOW);
        assert_eq!(m.ack, AckCode::Reject);
        assert_eq!(m.decoded.rejected[0].reason, RejectReason::Unsupported);
        assert_eq!(m.header.map(|h| h.control_id), Some("C1".into()));

        let no_obx = b"MSH|^~\\&|X^AB^EUI-64|Y|GW|HOSP|20240517103015||ORU^R01|C2|P|2.6\rPID|||\r";
        assert_eq!(decode(no_obx, NOW).ack, AckCode::Error);
        let no_id =
            b"MSH|^~\\&|||GW|HOSP|20240517103015||ORU^R01|C3|P|2.6\rOBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC||60\r";
        assert_eq!(decode(no_id, NOW).ack, AckCode::Reject);
        let no_ctrl = b"MSH|^~\\&|X|Y|GW|HOSP|20240517103015||ORU^R01||P|2.6\r";
        assert_eq!(decode(no_ctrl, NOW).ack, AckCode::Reject);
    }

    #[test]
    fn demo_and_test_data_is_acknowledged_but_not_stored() {
        let text = String::from_utf8(example()).expect("utf8");
        let training = text.replace("|MSG00001|P|2.6|", "|MSG00001|T|2.6|");
        let m = decode(training.as_bytes(), NOW);
        assert_eq!(m.ack, AckCode::Accept);
        assert!(m.decoded.readings.is_empty());
        assert_eq!(m.decoded.rejected[0].reason, RejectReason::DemoData);
        let demo = text.replace("|72|264864^MDC_DIM_BEAT_PER_MIN^MDC||", "|72|264864^MDC_DIM_BEAT_PER_MIN^MDC||DEMO|");
        assert!(decode(demo.as_bytes(), NOW).decoded.readings.is_empty());
    }

    #[test]
    fn sentinels_units_and_dialects() {
        let msg = "MSH|^~\\&|CMS^00A0B1FFFEC2D3E4^EUI-64|M|GW|H|20240517103015+0800||ORU^R01^ORU_R01|X9|P|2.6\r\
            OBR|1||||||20240517103015+0800\r\
            OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|-999|/min|||||R\r\
            OBX|2|NM|8867-4^Heart rate^LN^149530^MDC_PULS_OXIM_PULS_RATE^MDC|1.2.1.2|88|{beats}/min^^UCUM|||||F\r\
            OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1||%|||||X\r\
            OBX|4|NM|^MDC_TEMP^MDC|1.4.1.1|98.6|[degF]^^UCUM|||||F\r\
            OBX|5|NM|150301^MDC_PRESS_CUFF_SYS^MDC|1.3.1.1|118|mm[Hg]^^UCUM|||||F\r\
            OBX|6|NM|150302^MDC_PRESS_CUFF_DIA^MDC|1.3.1.2|76|kPa^^UCUM|||||F\r\
            OBX|7|NM|151562^MDC_RESP_RATE^MDC|1.5.1.1|NaN|/min|||||F\r";
        let m = decode(msg.as_bytes(), NOW);
        assert_eq!(m.ack, AckCode::Accept);
        let r = &m.decoded.readings[0];
        assert_eq!(r.serial, "00A0B1FFFEC2D3E4", "EUI-64 from MSH-3");
        assert_eq!(r.ts_ns, T_VITALS - 8 * 3600 * 1_000_000_000, "+0800 offset, time from OBR-7");
        assert_eq!(field(r, "heart_rate"), None, "-999 sentinel");
        assert_eq!(field(r, "pulse_rate"), Some(FieldValue::Int(88)), "LOINC first, MDC alternate");
        assert_eq!(field(r, "spo2"), None, "OBX-11 X");
        assert!(matches!(field(r, "temperature"), Some(FieldValue::Float(t)) if (t - 37.0).abs() < 1e-9));
        assert_eq!(field(r, "systolic_bp"), Some(FieldValue::Int(118)), "cuff variant code");
        assert_eq!(field(r, "diastolic_bp"), None, "kPa is not converted");
        assert_eq!(field(r, "resp_rate"), None);
        assert_eq!(m.decoded.dropped_fields, 3);
    }

    #[test]
    fn times_parse_with_offsets_and_precision() {
        let utc = |s: &str| parse_time(s, Zone::utc());
        assert_eq!(utc("20240517103015+0000"), Some(Stamp::At(T_VITALS)));
        assert_eq!(utc("20240517103015"), Some(Stamp::At(T_VITALS)));
        assert_eq!(utc("20240517123015.25+0200"), Some(Stamp::At(T_VITALS + 250_000_000)));
        assert_eq!(utc("202405171030"), Some(Stamp::At(T_VITALS - 15_000_000_000)));
        assert_eq!(utc("2024051710301"), None);
        assert_eq!(utc("20241317103015"), None);
        assert_eq!(utc("20240517103015+00"), None);
        assert_eq!(utc(""), None);
        // Without an offset, the configured zone's; with one, its own.
        let plus2 = Zone::parse("+02:00").expect("offset");
        assert_eq!(parse_time("20240517123015", plus2), Some(Stamp::At(T_VITALS)));
        assert_eq!(parse_time("20240517103015+0000", plus2), Some(Stamp::At(T_VITALS)));
        let minus0330 = Zone::parse("-0330").expect("offset");
        assert_eq!(parse_time("20240517070015", minus0330), Some(Stamp::At(T_VITALS)));
    }

    #[test]
    fn time_zones_are_named_local_utc_or_an_offset() {
        assert_eq!(Zone::parse("local"), Ok(Zone::Local));
        assert_eq!(Zone::parse("UTC"), Ok(Zone::utc()));
        assert_eq!(Zone::parse("+00:00"), Ok(Zone::utc()));
        assert_eq!(Zone::parse("+05:30"), Ok(Zone::Fixed(chrono::FixedOffset::east_opt(19_800).expect("offset"))));
        for bad in ["Europe/Berlin", "+1", "+01:60", "+24:00", "01:00", "+01:00:00", "", "+:0100"] {
            assert!(Zone::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_zone_that_is_none_of_these_is_named_in_the_error() {
        // `check-config` prints this text after `hl7.time_zone: `.
        let e = Zone::parse(" Europe/Berlin ").expect_err("not a zone the gateway reads");
        assert_eq!(e.to_string(), r#""Europe/Berlin" is neither "local", "UTC" nor an offset such as "+01:00""#);
    }

    #[test]
    fn the_repeated_hour_is_refused_unless_its_later_instant_is_still_ahead() {
        let hour = 3_600_000_000_000;
        let twice = Stamp::Twice(T_VITALS, T_VITALS + hour);
        // During the first pass the later instant lies an hour ahead: no device clock is there.
        assert_eq!(instant(twice, now(T_VITALS + 5_000_000_000)), Ok(T_VITALS));
        // During the second pass (or after) either could be meant.
        let r = instant(twice, now(T_VITALS + hour + 5_000_000_000)).expect_err("ambiguous");
        assert_eq!(r.reason, RejectReason::AmbiguousLocalTime);
        assert_eq!(
            instant(Stamp::Skipped, now(T_VITALS)).map_err(|r| r.reason),
            Err(RejectReason::NonexistentLocalTime)
        );
    }

    #[test]
    fn observations_stamped_ahead_of_the_gateway_clock_are_refused_and_reported() {
        let v = Vitals { heart_rate: Some(72), ..Default::default() };
        let m = decode(
            &build_oru("0123456789ABCDEF", "C1", "20240517103015+0000", "20240517103015+0000", &v),
            T_VITALS - 180_000_000_000,
        );
        assert!(m.decoded.readings.is_empty());
        assert_eq!(m.decoded.rejected[0].reason, RejectReason::TimestampOutOfRange);
        assert_eq!(
            m.decoded.clock_ahead,
            [ClockAhead { serial: "0123456789ABCDEF".into(), ahead_ns: 180_000_000_000 }]
        );
        assert_eq!(m.ack, AckCode::Accept, "nothing a resend could fix");
        let m = decode(
            &build_oru("0123456789ABCDEF", "C1", "20240517103015+0000", "20240517103015+0000", &v),
            T_VITALS - 60_000_000_000,
        );
        assert_eq!((m.decoded.readings.len(), m.decoded.clock_ahead.len()), (1, 0));
    }

    #[test]
    fn escapes_are_resolved() {
        let d = Delims { field: '|', component: '^', repetition: '~', escape: '\\', subcomponent: '&' };
        assert_eq!(unescape("A\\F\\B\\S\\C\\T\\D\\R\\E\\E\\E\\X41\\", d), "A|B^C&D~E\\EA");
    }

    #[test]
    fn mllp_framing_resyncs() {
        let msg = example();
        let good = frame_mllp(&msg);
        let mut cut = good[..300].to_vec(); // connection reset mid-message, sender resends
        cut.extend(&good);
        let mut bytes = b"\r\nnoise".to_vec();
        bytes.extend(&cut);
        bytes.extend(&good);
        let mut f = Framer::new(4 * MAX_MESSAGE);
        let mut frames = Vec::new();
        let mut rejected = Vec::new();
        for chunk in bytes.chunks(7) {
            f.push(chunk);
            while let Some(r) = f.next(scan_mllp) {
                match r {
                    Ok(m) => frames.push(m),
                    Err(e) => rejected.push(e.reason),
                }
            }
        }
        assert_eq!(frames, [msg.clone(), msg]);
        assert_eq!(rejected, [RejectReason::BadFrame]);
        assert_eq!(f.take_noise(), 7);
    }

    #[test]
    fn resends_share_a_retry_key_and_new_messages_do_not() {
        let key = |m: &str, now: i64| decode(m.as_bytes(), now).retry_key.expect("readings, so a key");
        let v = Vitals { heart_rate: Some(72), ..Default::default() };
        let text = |control: &str, time: &str, v: &Vitals| {
            String::from_utf8(build_oru("0123456789ABCDEF", control, time, time, v)).expect("utf8")
        };
        let first = text("7", "20240517103015+0000", &v);
        assert_eq!(key(&first, NOW), key(&first, NOW + 5_000_000_000), "an exact resend");
        let restamped = first.replacen("|20240517103015+0000||ORU", "|20240517103115+0000||ORU", 1);
        assert_ne!(restamped, first);
        assert_eq!(key(&restamped, NOW), key(&first, NOW), "a resend stamped anew in MSH-7");
        let reused = text("7", "20240517103115+0000", &Vitals { heart_rate: Some(80), ..Default::default() });
        assert_ne!(key(&reused, NOW), key(&first, NOW), "a new message under a control id seen before");

        // Readings that take their time from MSH-7 or from the receipt are never merged.
        let no_times = "MSH|^~\\&|MON^0123456789ABCDEF^EUI-64|A|GW|H|{msh7}||ORU^R01|7|P|2.6\r\
            OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|72|/min|||||R\r";
        let at = |msh7: &str| no_times.replace("{msh7}", msh7);
        assert_ne!(key(&at("20240517103015"), NOW), key(&at("20240517103115"), NOW));
        assert_ne!(key(&at(""), NOW), key(&at(""), NOW + 1));
        assert_eq!(key(&at(""), NOW), key(&at(""), NOW));
    }

    #[test]
    fn each_observation_belongs_to_the_device_that_names_it_or_its_containment() {
        let msg = |rows: &[&str]| {
            let mut m = String::from("MSH|^~\\&|CMS^CENTRAL^L|W|GW|H|20240517103015+0000||ORU^R01|C1|P|2.6\r");
            for r in rows {
                m.push_str(r);
                m.push('\r');
            }
            decode(m.as_bytes(), NOW)
        };
        let mds = |place: &str, dev: &str| {
            format!("OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|{place}|||||||X|||||||{dev}^M^{dev}^EUI-64")
        };
        let hr = |place: &str, v: u32, dev: &str| {
            format!("OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|{place}|{v}|/min|||||R|||||||{dev}")
        };
        let serials = |m: &Message| {
            let mut v: Vec<(String, Option<FieldValue>)> =
                m.decoded.readings.iter().map(|r| (r.serial.clone(), field(r, "heart_rate"))).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let reasons = |m: &Message| m.decoded.rejected.iter().map(|r| r.reason).collect::<Vec<_>>();

        // Two monitors: each heart rate goes to its MDS's device; one under neither is refused.
        let m = msg(&[
            &mds("1.0.0.0", "A1"),
            &hr("1.1.1.1", 71, ""),
            &mds("2.0.0.0", "B2"),
            &hr("2.1.1.1", 82, ""),
            &hr("", 90, ""),
        ]);
        assert_eq!(serials(&m), [("A1".into(), Some(FieldValue::Int(71))), ("B2".into(), Some(FieldValue::Int(82)))]);
        assert_eq!(reasons(&m), [RejectReason::AmbiguousDevice]);
        assert_eq!(m.ack, AckCode::Accept);

        // An OBX-18 of its own wins; a VMD row naming a module is nearer than the MDS.
        let m =
            msg(&[&mds("1.0.0.0", "A1"), &mds("1.2.0.0", "OX3"), &hr("1.2.1.1", 73, ""), &hr("1.1.1.1", 74, "OWN4")]);
        assert_eq!(
            serials(&m),
            [("OWN4".into(), Some(FieldValue::Int(74))), ("OX3".into(), Some(FieldValue::Int(73)))]
        );

        // Two rows of one place naming different devices: what sits below them is nobody's.
        let m = msg(&[&mds("1.0.0.0", "A1"), &mds("1.0.0.0", "B2"), &hr("1.1.1.1", 75, "")]);
        assert!(m.decoded.readings.is_empty());
        assert_eq!(reasons(&m), [RejectReason::AmbiguousDevice]);

        // One device named: everything of the message is its, OBX-4 or not.
        let m = msg(&[&mds("1.0.0.0", "A1"), &hr("", 76, "")]);
        assert_eq!(serials(&m), [("A1".into(), Some(FieldValue::Int(76)))]);
        // None named: MSH-3's first component.
        assert_eq!(serials(&msg(&[&hr("1.1.1.1", 77, "")])), [("CMS".into(), Some(FieldValue::Int(77)))]);
    }

    #[test]
    fn the_message_limit_is_the_callers() {
        let mut msg = example();
        msg.resize(2 * MAX_MESSAGE, b'x');
        let wire = frame_mllp(&msg);
        assert_eq!(scan_mllp_within(&wire, 4 * MAX_MESSAGE), Scan::Frame(msg.clone(), wire.len()));
        assert_eq!(scan_mllp(&wire), Scan::Skip(MAX_MESSAGE + 2, RejectReason::Oversized));
        assert_eq!(scan_mllp_within(&wire[..wire.len() - 1], 4 * MAX_MESSAGE), Scan::Incomplete);
        assert_eq!(scan_mllp_within(&wire, msg.len()), Scan::Frame(msg.clone(), wire.len()));
        assert_eq!(scan_mllp_within(&wire, msg.len() - 1), Scan::Skip(msg.len() + 1, RejectReason::Oversized));
    }

    #[test]
    fn built_messages_round_trip() {
        let v = Vitals {
            heart_rate: Some(130),
            spo2: Some(95),
            pulse_rate: Some(129),
            nibp: Some((121, 79, 93)),
            temperature: Some(37.2),
            resp_rate: Some(18),
        };
        let m = decode(&build_oru("0123456789ABCDEF", "C7", "20240517103015+0000", "20240517102900+0000", &v), NOW);
        assert_eq!(m.ack, AckCode::Accept);
        let r = at(&m.decoded.readings, T_VITALS);
        assert_eq!(field(r, "heart_rate"), Some(FieldValue::Int(130)));
        assert_eq!(field(r, "resp_rate"), Some(FieldValue::Int(18)));
        assert_eq!(field(at(&m.decoded.readings, T_NIBP), "mean_bp"), Some(FieldValue::Int(93)));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_or_yield_out_of_range_values(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..800),
        ) {
            let m = decode_message(&bytes, now(NOW), Zone::Local);
            for r in &m.decoded.readings {
                assert_well_formed(r);
            }
            let mut f = Framer::new(1024);
            f.push(&bytes);
            while f.next(scan_mllp).is_some() {}
        }

        #[test]
        fn arbitrary_obx_rows_never_yield_out_of_range_values(
            rows in proptest::collection::vec(("[0-9]{6}", "[-0-9.eE]{0,8}", "(NM|ST|)", "(R|F|X|)", "[0-9]{8,14}"), 0..10),
        ) {
            let mut msg = String::from("MSH|^~\\&|A^0011223344556677^EUI-64|B|C|D|20240517103015||ORU^R01|Z|P|2.6\r");
            for (code, value, kind, status, time) in rows {
                msg.push_str(&format!("OBX|1|{kind}|{code}^X^MDC|1.1.1.1|{value}||||||{status}|||{time}\r"));
            }
            let m = decode(msg.as_bytes(), NOW);
            for r in &m.decoded.readings {
                assert_well_formed(r);
            }
        }
    }
}
