//! GE Datex-Ohmeda S/5 and CARESCAPE Bx50 "computer interface": displayed values
//! (protocols.md §4). The GE specification was not available; offsets follow two independent
//! implementations and are checked against the worked record. Verify on a real monitor.
//!
//! - Frame: `7E` + escaped(record + checksum) + `7E`; `7E`/`7D` inside are sent as `7D`,
//!   byte XOR 0x20. Checksum = 8-bit sum of the *unescaped* record bytes.
//! - Record: 40-byte header (little-endian; `r_len`, `r_maintype` 0 = physiological,
//!   subrecord descriptors ending with type 0xFF), then subrecords. A displayed-values
//!   subrecord (type 1) is 278 bytes; its class comes from `cl_drilvl_subt` bits 8–11, never
//!   from its position. Only the basic class is decoded.
//! - Values are i16; anything ≤ −32001 is a control code (no data, not updated, under or
//!   over range, …) and never a number. A group whose "module present" bit is clear is
//!   skipped.
//! - Fields: ECG `heart_rate` (impedance RR as `resp_rate` when there is no CO2 rate), NIBP
//!   `systolic_bp`/`diastolic_bp`/`mean_bp`, T1 `temperature`, SpO2 `spo2` and
//!   `pulse_rate`, CO2 `resp_rate` and `etco2` (et % × ambient pressure).
//! - NIBP repeats in every record until the next cuff cycle: it is written only when it
//!   differs from the last one written on this connection and its "older than 60 s" bit is
//!   clear. No identity in the stream: the serial comes from the port's configuration.
//! - The monitor clock (`r_time`) is not trusted: readings carry the receive time.

use super::decoded::{Decoded, FieldSet, PortIdentity};
use super::framer::{Framer, Scan, report_noise};
use crate::decode::{RejectReason, Rejection};
use crate::fields;

pub const FLAG: u8 = 0x7E;
pub const ESC: u8 = 0x7D;
/// Displayed values every this many seconds (implementations enforce at least 5).
pub const DEFAULT_INTERVAL_SECS: i16 = 5;
/// Basic class plus ext1, ext2 and ext3.
pub const ALL_CLASSES: u32 = 0x0E;
/// DRI level 9 (2005); configurable monitors ignore levels they do not speak.
pub const DEFAULT_DRI_LEVEL: u8 = 9;
/// Longest record accepted (unescaped).
pub const MAX_RECORD: usize = 1600;

const HEADER_LEN: usize = 40;
const SR_DISPLAYED: u8 = 1;
const SR_END: u8 = 0xFF;
const SUBRECORD_LEN: usize = 278;
/// Offset of the class block in a displayed-values subrecord (after its u32 time).
const BLOCK: usize = 4;
/// Values at or below this are control codes.
const LAST_CONTROL_CODE: i16 = -32001;
const NO_DATA: i16 = -32767;
const NIBP_OLDER_THAN_60S: u32 = 1 << 8;

/// Escapes `record` + its checksum and wraps it in flags.
pub fn frame(record: &[u8]) -> Vec<u8> {
    let sum = record.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    let mut out = Vec::with_capacity(record.len() + 8);
    out.push(FLAG);
    for &b in record.iter().chain(std::iter::once(&sum)) {
        if b == FLAG || b == ESC {
            out.extend([ESC, b ^ 0x20]);
        } else {
            out.push(b);
        }
    }
    out.push(FLAG);
    out
}

/// A PHDB transmission request for displayed values: every `interval_secs` (0 stops,
/// −1 sends once), for the classes in `class_bf`, at DRI level `dri_level`.
pub fn request_frame(interval_secs: i16, class_bf: u32, dri_level: u8) -> Vec<u8> {
    let mut r = vec![0u8; HEADER_LEN + 9];
    r[0..2].copy_from_slice(&((HEADER_LEN + 9) as u16).to_le_bytes());
    r[3] = dri_level;
    // r_maintype 0 (PHDB); sr_desc[0] = {offset 0, type 0: request}; sr_desc[1] ends the list.
    r[21] = SR_END;
    r[40] = SR_DISPLAYED;
    r[41..43].copy_from_slice(&interval_secs.to_le_bytes());
    r[43..47].copy_from_slice(&class_bf.to_le_bytes());
    frame(&r)
}

/// Finds a frame at the front of `b`; yields the unescaped record with a valid checksum.
pub fn scan(b: &[u8]) -> Scan<Vec<u8>> {
    if b[0] != FLAG {
        let skip = b.iter().position(|&c| c == FLAG).unwrap_or(b.len());
        return Scan::Skip(skip, RejectReason::Noise);
    }
    let limit = 2 * (MAX_RECORD + 1) + 2;
    let Some(end) = b.iter().skip(1).take(limit).position(|&c| c == FLAG).map(|i| i + 1) else {
        return if b.len() > limit { Scan::Skip(limit, RejectReason::Oversized) } else { Scan::Incomplete };
    };
    if end == 1 {
        // Two flags in a row: the end of one frame and the start of the next.
        return Scan::Skip(1, RejectReason::Noise);
    }
    let mut record = Vec::with_capacity(end);
    let mut escaped = false;
    for &c in &b[1..end] {
        if escaped {
            record.push(c ^ 0x20);
            escaped = false;
        } else if c == ESC {
            escaped = true;
        } else {
            record.push(c);
        }
    }
    let Some(chk) = record.pop().filter(|_| !escaped) else {
        return Scan::Skip(end, RejectReason::BadFrame);
    };
    if record.iter().fold(0u8, |a, x| a.wrapping_add(*x)) != chk {
        return Scan::Skip(end, RejectReason::BadChecksum);
    }
    Scan::Frame(record, end + 1)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2).map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    u16_at(b, at) as i16
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// The basic-class displayed values of one subrecord, as raw i16s (`None`: control code or
/// module absent).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Displayed {
    pub ecg_hr: Option<i16>,
    pub ecg_imp_rr: Option<i16>,
    /// sys, dia, mean in 0.01 mmHg.
    pub nibp: Option<[i16; 3]>,
    pub nibp_old: bool,
    /// The cuff's pulse rate (not written: the ECG and oximeter rates are).
    pub nibp_hr: Option<i16>,
    /// 0.01 °C.
    pub t1: Option<i16>,
    /// 0.01 %.
    pub spo2: Option<i16>,
    pub spo2_pr: Option<i16>,
    /// et in 0.01 %, ambient pressure in 0.1 mmHg.
    pub co2_et: Option<i16>,
    pub co2_rr: Option<i16>,
    pub co2_amb: Option<i16>,
}

/// Reads the basic class of a displayed-values subrecord.
fn basic_class(sr: &[u8]) -> Displayed {
    let group = |off: usize| -> Option<u32> {
        let status = u32_at(sr, BLOCK + off);
        (status & 1 != 0).then_some(status)
    };
    let val = |off: usize| -> Option<i16> {
        let v = i16_at(sr, BLOCK + off);
        (v > LAST_CONTROL_CODE).then_some(v)
    };
    let mut d = Displayed::default();
    if group(0).is_some() {
        d.ecg_hr = val(6);
        d.ecg_imp_rr = val(14);
    }
    if let Some(status) = group(72) {
        if let (Some(s), Some(di), Some(m)) = (val(78), val(80), val(82)) {
            d.nibp = Some([s, di, m]);
        }
        d.nibp_old = status & NIBP_OLDER_THAN_60S != 0;
        d.nibp_hr = val(84);
    }
    if group(86).is_some() {
        d.t1 = val(92);
    }
    if group(118).is_some() {
        d.spo2 = val(124);
        d.spo2_pr = val(126);
    }
    if group(132).is_some() {
        d.co2_et = val(138);
        d.co2_rr = val(142);
        d.co2_amb = val(144);
    }
    d
}

/// The basic-class displayed values in a record; `Ok(None)` for records of other kinds.
pub fn parse_record(r: &[u8]) -> Result<Option<Displayed>, Rejection> {
    if r.len() < HEADER_LEN || usize::from(u16_at(r, 0)) != r.len() {
        return Err(Rejection::new(RejectReason::BadFrame, "record length"));
    }
    if u16_at(r, 14) != 0 {
        return Ok(None); // waveform, alarm or network record
    }
    for i in 0..8 {
        let at = 16 + 3 * i;
        let (offset, kind) = (i16_at(r, at), r[at + 2]);
        if kind == SR_END {
            break;
        }
        if kind != SR_DISPLAYED {
            continue;
        }
        let start = HEADER_LEN as i64 + i64::from(offset);
        let Some(sr) = usize::try_from(start).ok().and_then(|s| r.get(s..s + SUBRECORD_LEN)) else {
            return Err(Rejection::new(RejectReason::BadFrame, "subrecord outside the record"));
        };
        let class = (u16_at(sr, 276) >> 8) & 0x0F;
        if class == 0 {
            return Ok(Some(basic_class(sr)));
        }
    }
    Ok(None)
}

/// A Datex decoder for one connection.
#[derive(Debug)]
pub struct Decoder {
    framer: Framer,
    /// The NIBP triple last written, so repeats between cuff cycles are not written again.
    last_nibp: Option<[i16; 3]>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self { framer: Framer::new(2 * (2 * MAX_RECORD + 4)), last_nibp: None }
    }

    pub fn feed(&mut self, bytes: &[u8], id: &PortIdentity, now_ns: i64, out: &mut Decoded) {
        self.framer.push(bytes);
        while let Some(r) = self.framer.next(scan) {
            let parsed = r.and_then(|rec| parse_record(&rec));
            match parsed {
                Ok(Some(d)) => {
                    out.frames += 1;
                    self.fields(d).into_reading(None, id, now_ns, out);
                }
                Ok(None) => out.frames += 1,
                Err(rej) => out.rejected.push(rej),
            }
        }
        report_noise(&mut self.framer, out);
    }

    fn fields(&mut self, d: Displayed) -> FieldSet {
        let mut f = FieldSet::default();
        let n = |v: i16| f64::from(v);
        if let Some(hr) = d.ecg_hr {
            f.number(&fields::HEART_RATE, n(hr));
        }
        if let Some(nibp) = d.nibp
            && !d.nibp_old
            && self.last_nibp != Some(nibp)
        {
            self.last_nibp = Some(nibp);
            f.number(&fields::SYSTOLIC_BP, n(nibp[0]) / 100.0);
            f.number(&fields::DIASTOLIC_BP, n(nibp[1]) / 100.0);
            f.number(&fields::MEAN_BP, n(nibp[2]) / 100.0);
        }
        if let Some(t) = d.t1 {
            f.number(&fields::TEMPERATURE, n(t) / 100.0);
        }
        if let Some(s) = d.spo2 {
            f.number(&fields::SPO2, n(s) / 100.0);
        }
        if let Some(pr) = d.spo2_pr {
            f.number(&fields::PULSE_RATE, n(pr));
        }
        if let Some(rr) = d.co2_rr.or(d.ecg_imp_rr) {
            f.number(&fields::RESP_RATE, n(rr));
        }
        if let (Some(et), Some(amb)) = (d.co2_et, d.co2_amb) {
            // 0.01 % × 0.1 mmHg → mmHg; exact in f64 for every i16 pair.
            f.number(&fields::ETCO2, n(et) * n(amb) / 100_000.0);
        }
        f
    }
}

/// A displayed-values record (318 bytes) in the layout of the worked example; for the
/// simulator and tests. Absent values are sent as "no data".
pub fn build_displayed_record(r_time: u32, d: &Displayed) -> Vec<u8> {
    let mut r = vec![0u8; HEADER_LEN + SUBRECORD_LEN];
    let len = r.len() as u16;
    r[0..2].copy_from_slice(&len.to_le_bytes());
    r[2] = 1;
    r[3] = DEFAULT_DRI_LEVEL;
    r[6..10].copy_from_slice(&r_time.to_le_bytes());
    r[18] = SR_DISPLAYED;
    r[21] = SR_END;
    let sr = HEADER_LEN;
    r[sr..sr + 4].copy_from_slice(&r_time.to_le_bytes());
    let b = sr + BLOCK;
    let mut put = |off: usize, v: Option<i16>| {
        r[b + off..b + off + 2].copy_from_slice(&v.unwrap_or(NO_DATA).to_le_bytes());
    };
    // (block offset, values) of every group with a header; then the header-less ECG extra.
    let groups: [(usize, usize); 18] = [
        (0, 5),
        (16, 4),
        (30, 4),
        (44, 4),
        (58, 4),
        (72, 4),
        (86, 1),
        (94, 1),
        (102, 1),
        (110, 1),
        (118, 4),
        (132, 4),
        (146, 2),
        (156, 2),
        (166, 3),
        (178, 8),
        (200, 4),
        (214, 3),
    ];
    for (off, n) in groups.iter().chain(&[(232, 1), (240, 4), (254, 4)]) {
        for i in 0..*n {
            put(off + 6 + 2 * i, None);
        }
    }
    for i in 0..3 {
        put(226 + 2 * i, None);
    }
    put(6, d.ecg_hr);
    put(14, d.ecg_imp_rr);
    put(226, d.ecg_hr);
    if let Some([s, di, m]) = d.nibp {
        put(78, Some(s));
        put(80, Some(di));
        put(82, Some(m));
    }
    put(84, d.nibp_hr);
    put(92, d.t1);
    put(124, d.spo2);
    put(126, d.spo2_pr);
    put(138, d.co2_et);
    put(142, d.co2_rr);
    put(144, d.co2_amb);
    let mut header = |off: usize, present: bool, label: u16, extra: u32| {
        if present {
            r[b + off..b + off + 4].copy_from_slice(&(3 | extra).to_le_bytes());
            r[b + off + 4..b + off + 6].copy_from_slice(&label.to_le_bytes());
        }
    };
    header(0, d.ecg_hr.is_some(), 0x12, 0);
    header(72, d.nibp.is_some(), 3, if d.nibp_old { NIBP_OLDER_THAN_60S } else { 0 });
    header(86, d.t1.is_some(), 6, 0);
    header(118, d.spo2.is_some(), 0, 0);
    header(132, d.co2_rr.is_some() || d.co2_et.is_some(), 0, 0);
    r[sr + 276] = 1; // subtype 1, class 0 (basic)
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::FieldValue;
    use crate::protocols::Protocol;
    use crate::protocols::testutil::*;

    const REQUEST: &str =
        "7E 31 00 00 09 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 FF 00 00 00 00 00 00 00 00 00
        00 00 00 00 00 00 00 00 00 01 05 00 0E 00 00 00 00 00 4D 7E";

    const RECORD: &str = "
        3E 01 01 09 00 00 B7 31 47 66 00 00 00 00 00 00 00 00 01 00 00 FF 00 00
        00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 B7 31 47 66 03 00 00 00
        12 00 7E 00 01 80 01 80 01 80 01 80 00 00 00 00 00 00 01 80 01 80 01 80
        01 80 00 00 00 00 00 00 01 80 01 80 01 80 01 80 00 00 00 00 00 00 01 80
        01 80 01 80 01 80 00 00 00 00 00 00 01 80 01 80 01 80 01 80 03 00 00 00
        03 00 E0 2E 40 1F 54 24 46 00 03 00 00 00 06 00 60 0E 00 00 00 00 00 00
        01 80 00 00 00 00 00 00 01 80 00 00 00 00 00 00 01 80 03 00 00 00 00 00
        E4 25 7E 00 01 80 01 80 00 00 00 00 00 00 01 80 01 80 01 80 01 80 00 00
        00 00 00 00 01 80 01 80 00 00 00 00 00 00 01 80 01 80 00 00 00 00 00 00
        01 80 01 80 01 80 00 00 00 00 00 00 01 80 01 80 01 80 01 80 01 80 01 80
        01 80 01 80 00 00 00 00 00 00 01 80 01 80 01 80 01 80 00 00 00 00 00 00
        01 80 01 80 01 80 7E 00 01 80 01 80 00 00 00 00 00 00 01 80 00 00 00 00
        00 00 01 80 01 80 01 80 01 80 00 00 00 00 00 00 01 80 01 80 01 80 01 80
        00 00 00 00 01 00";

    fn example() -> Displayed {
        Displayed {
            ecg_hr: Some(126),
            nibp: Some([12000, 8000, 9300]),
            nibp_hr: Some(70),
            t1: Some(3680),
            spo2: Some(9700),
            spo2_pr: Some(126),
            ..Displayed::default()
        }
    }

    #[test]
    fn request_frames_are_byte_exact() {
        assert_eq!(request_frame(5, ALL_CLASSES, 9), hex(REQUEST));
        let mut stop = hex(REQUEST);
        stop[42] = 0; // interval 0
        stop[44] = 0; // classes 0
        stop[50] = 0x3A;
        assert_eq!(request_frame(0, 0, 9), stop);
        assert_eq!(Protocol::DatexS5.on_connect(), hex(REQUEST));
    }

    #[test]
    fn worked_record_decodes_and_frames_byte_exact() {
        let record = hex(RECORD);
        assert_eq!(record.len(), 318);
        assert_eq!(record.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0xF5);
        assert_eq!(build_displayed_record(0x6647_31B7, &example()), record);
        let wire = frame(&record);
        assert_eq!(wire.len(), 324);
        assert_eq!(&wire[wire.len() - 2..], [0xF5, 0x7E]);
        assert_eq!(wire.iter().filter(|&&b| b == ESC).count(), 3);

        assert_eq!(parse_record(&record), Ok(Some(example())));
        let d = Protocol::DatexS5.decoder(port("GE-B650-1")).feed(&wire, NOW);
        assert!(d.rejected.is_empty(), "{:?}", d.rejected);
        let r = &d.readings[0];
        assert_eq!(r.serial, "GE-B650-1");
        assert_eq!(field(r, "heart_rate"), Some(FieldValue::Int(126)));
        assert_eq!(field(r, "systolic_bp"), Some(FieldValue::Int(120)));
        assert_eq!(field(r, "diastolic_bp"), Some(FieldValue::Int(80)));
        assert_eq!(field(r, "mean_bp"), Some(FieldValue::Int(93)));
        assert_eq!(field(r, "temperature"), Some(FieldValue::Float(36.8)));
        assert_eq!(field(r, "spo2"), Some(FieldValue::Int(97)));
        assert_eq!(field(r, "pulse_rate"), Some(FieldValue::Int(126)));
        assert_eq!(field(r, "resp_rate"), None, "0x8001 is no data");
        assert_eq!(field(r, "etco2"), None);
        assert_well_formed(r);
        assert_split_invariant(Protocol::DatexS5, &wire);
    }

    #[test]
    fn nibp_is_written_once_per_cuff_cycle() {
        let wire = frame(&hex(RECORD));
        let mut dec = Protocol::DatexS5.decoder(port("GE"));
        let first = dec.feed(&wire, NOW).readings;
        let second = dec.feed(&wire, NOW + 5_000_000_000).readings;
        assert_eq!(field(&first[0], "systolic_bp"), Some(FieldValue::Int(120)));
        assert_eq!(field(&second[0], "systolic_bp"), None);
        assert_eq!(field(&second[0], "heart_rate"), Some(FieldValue::Int(126)));
        let old = Displayed { nibp: Some([13000, 8500, 10000]), nibp_old: true, ..example() };
        let r = dec.feed(&frame(&build_displayed_record(1, &old)), NOW).readings;
        assert_eq!(field(&r[0], "systolic_bp"), None, "older than 60 s");
    }

    #[test]
    fn co2_gives_resp_rate_and_etco2() {
        let d = Displayed { co2_et: Some(500), co2_rr: Some(14), co2_amb: Some(7600), ..example() };
        let r = Protocol::DatexS5.decoder(port("GE")).feed(&frame(&build_displayed_record(1, &d)), NOW).readings;
        assert_eq!(field(&r[0], "resp_rate"), Some(FieldValue::Int(14)));
        assert_eq!(field(&r[0], "etco2"), Some(FieldValue::Float(38.0)));
    }

    #[test]
    fn bad_checksum_truncation_and_noise_resync() {
        let good = frame(&hex(RECORD));
        let mut bad = good.clone();
        bad[100] ^= 0x01;
        let mut cut = good[..150].to_vec(); // the rest lost on unplug
        cut.push(FLAG);
        let mut bytes = b"\x00\x7D\x55noise".to_vec();
        bytes.extend(&bad);
        bytes.extend(&cut);
        bytes.extend(&good);
        let d = Protocol::DatexS5.decoder(port("GE")).feed(&bytes, NOW);
        assert_eq!(d.readings.len(), 1);
        let reasons: Vec<_> = d.rejected.iter().map(|r| r.reason).collect();
        assert!(reasons.contains(&RejectReason::BadChecksum), "{reasons:?}");
        assert!(reasons.contains(&RejectReason::Noise), "{reasons:?}");
        assert!(d.rejected.len() >= 3, "{reasons:?}");
        assert_split_invariant(Protocol::DatexS5, &bytes);
    }

    #[test]
    fn control_codes_never_become_numbers() {
        for code in [-32767i16, -32766, -32765, -32764, -32763, -32762, -32001] {
            let d = Displayed { ecg_hr: Some(code), spo2: Some(code), t1: Some(code), ..Displayed::default() };
            let rec = build_displayed_record(1, &d);
            assert_eq!(parse_record(&rec).ok().flatten().and_then(|d| d.ecg_hr), None);
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_or_yield_out_of_range_values(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..1200),
        ) {
            let d = Protocol::DatexS5.decoder(port("GE")).feed(&bytes, NOW);
            for r in &d.readings {
                assert_well_formed(r);
            }
        }

        #[test]
        fn arbitrary_values_in_a_valid_record_stay_in_range(
            v in proptest::collection::vec(proptest::num::i16::ANY, 10),
        ) {
            let d = Displayed {
                ecg_hr: Some(v[0]), ecg_imp_rr: Some(v[1]), nibp: Some([v[2], v[3], v[4]]),
                nibp_old: false, nibp_hr: None, t1: Some(v[5]), spo2: Some(v[6]), spo2_pr: Some(v[7]),
                co2_et: Some(v[8]), co2_rr: Some(v[9]), co2_amb: Some(v[0]),
            };
            let out = Protocol::DatexS5.decoder(port("GE")).feed(&frame(&build_displayed_record(1, &d)), NOW);
            for r in &out.readings {
                assert_well_formed(r);
            }
        }
    }
}
