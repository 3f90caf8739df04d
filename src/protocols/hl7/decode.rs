//! One message, without MLLP framing → readings, and the answer it deserves.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;

use super::ack::AckCode;
use super::identity::Devices;
use super::message::{Delims, Header, Msh, observations, obx_field, part};
use super::retry::retry_key;
use super::time::{Stamp, Zone, instant, parse_time};
use super::values::{convert, field_of};
use crate::decode::{ClockAhead, MIN_TS_NS, Now, RejectReason, Rejection};
use crate::protocols::decoded::{Decoded, FieldSet, PortIdentity};

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

/// Why a message is answered without reading its observations: the answer, the reason
/// counted and a fixed text for the log and MSA-3 (module docs, "ACK").
#[derive(Debug, Clone, Copy)]
struct Refusal {
    ack: AckCode,
    reason: RejectReason,
    text: &'static str,
}

const fn refusal(ack: AckCode, reason: RejectReason, text: &'static str) -> Refusal {
    Refusal { ack, reason, text }
}

const NOT_HL7: Refusal = refusal(AckCode::Reject, RejectReason::BadFrame, "not an HL7 message: no MSH segment");
const NO_CONTROL_ID: Refusal =
    refusal(AckCode::Reject, RejectReason::BadFrame, "MSH-10 (message control id) missing or invalid");
const NOT_ORU_R01: Refusal = refusal(AckCode::Reject, RejectReason::Unsupported, "only ORU^R01 is accepted");
const NO_OBX: Refusal = refusal(AckCode::Error, RejectReason::NoFields, "no OBX segment");
/// Accepted, so the sender does not retry, and not stored.
const DEMO_DATA: Refusal = refusal(AckCode::Accept, RejectReason::DemoData, "demo or test data");
const NO_DEVICE: Refusal =
    refusal(AckCode::Reject, RejectReason::MissingSerial, "no device identity in OBX-18 or MSH-3");

impl Message {
    fn refuse(header: Option<Header>, r: Refusal) -> Self {
        let mut decoded = Decoded::default();
        decoded.rejected.push(Rejection::new(r.reason, r.text));
        // MSA-3 explains an AE or AR; an accepted message needs no reason.
        let reason = (r.ack != AckCode::Accept).then_some(r.text);
        Self { header, decoded, ack: r.ack, reason, retry_key: None }
    }
}

/// Readings being assembled: the fields of each device serial and instant.
type Groups = BTreeMap<(String, i64), FieldSet>;

/// Decodes one message (without MLLP framing). `now` is the receive time; times without an
/// offset are read in `zone`.
pub fn decode_message(msg: &[u8], now: Now, zone: Zone) -> Message {
    let text = String::from_utf8_lossy(msg);
    let mut segments = text.split(['\r', '\n']).filter(|s| !s.trim().is_empty());
    let Some(msh) = segments.next().and_then(Msh::parse) else {
        return Message::refuse(None, NOT_HL7);
    };
    let header = msh.header();
    if let Some(refusal) = check_header(&header, &msh) {
        return Message::refuse(Some(header), refusal);
    }
    let obx = observations(segments, msh.delims);
    if let Some(refusal) = check_observations(&header, &obx, msh.delims) {
        return Message::refuse(Some(header), refusal);
    }
    let devices = Devices::of(&obx, msh.field(3), msh.delims);
    if devices.named == 0 && devices.message.is_none() {
        return Message::refuse(Some(header), NO_DEVICE);
    }
    let mut out = Decoded::default();
    let groups = group(&obx, &msh, &devices, now, zone, &mut out);
    out.frames = 1;
    into_readings(groups, now, &mut out);
    // MSH-7's place in `text` is its place in `msg` unless the message is not UTF-8 (`text`
    // is then a repaired copy).
    let msh7 = match &text {
        Cow::Borrowed(t) => msh7_range(t, &msh),
        Cow::Owned(_) => None,
    };
    let retry_key = (!out.readings.is_empty()).then(|| retry_key(msg, msh7, &out.readings));
    Message { header: Some(header), decoded: out, ack: AckCode::Accept, reason: None, retry_key }
}

/// What the header alone refuses: a control id an ACK cannot name, or a type but ORU^R01.
fn check_header(header: &Header, msh: &Msh<'_>) -> Option<Refusal> {
    if header.control_id.is_empty() || header.control_id.chars().any(|c| c.is_control()) {
        return Some(NO_CONTROL_ID);
    }
    let (kind, c) = (msh.field(9), msh.delims.component);
    (part(kind, c, 0) != "ORU" || part(kind, c, 1) != "R01").then_some(NOT_ORU_R01)
}

/// What the observations refuse before any is read: there are none, or the message is demo
/// or test data (module docs, "Demo and test data").
fn check_observations(header: &Header, obx: &[Vec<&str>], d: Delims) -> Option<Refusal> {
    if obx.is_empty() {
        return Some(NO_OBX);
    }
    let processing = part(&header.processing_id, d.component, 0);
    let demo = matches!(processing, "T" | "D") || obx.iter().any(|f| obx_field(f, 8).contains("DEMO"));
    demo.then_some(DEMO_DATA)
}

/// The numeric observations by device and instant (module docs, "Values" and "Time"). An
/// observation tied to no one device, or whose time is no one instant, is refused into `out`.
fn group(obx: &[Vec<&str>], msh: &Msh<'_>, devices: &Devices, now: Now, zone: Zone, out: &mut Decoded) -> Groups {
    let d = msh.delims;
    let msh_time = parse_time(msh.field(7), zone);
    let mut groups = Groups::new();
    for o in obx {
        if obx_field(o, 2) != "NM" || matches!(obx_field(o, 11), "X" | "D" | "W") {
            continue;
        }
        let Some(spec) = field_of(obx_field(o, 3), d) else {
            continue;
        };
        let Some(serial) = devices.of_obx(o, d) else {
            out.rejected.push(Rejection::new(
                RejectReason::AmbiguousDevice,
                "observation not tied to one device of a multi-device message",
            ));
            continue;
        };
        let stamp = parse_time(obx_field(o, 14), zone).or(msh_time).unwrap_or(Stamp::At(now.ns));
        let ts = match instant(stamp, now) {
            Ok(ts) => ts,
            Err(rejection) => {
                out.rejected.push(rejection);
                continue;
            }
        };
        let set = groups.entry((serial, ts)).or_default();
        let value = obx_field(o, 5).parse::<f64>().ok().and_then(|v| convert(spec, v, obx_field(o, 6), d));
        match value {
            Some(v) => set.number(spec, v),
            None => set.dropped += 1,
        }
    }
    groups
}

/// One reading per group, but for groups stamped before 2000 or further ahead of the gateway
/// clock than `clock.future_tolerance_ms` (their device is then reported as a clock ahead).
fn into_readings(groups: Groups, now: Now, out: &mut Decoded) {
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
        set.into_reading(Some(&serial), &id, ts, out);
    }
}

/// MSH-7's byte range in `text`, the text `msh` was read from.
fn msh7_range(text: &str, msh: &Msh<'_>) -> Option<Range<usize>> {
    let f7 = msh.get(7)?;
    (f7.as_ptr() as usize).checked_sub(text.as_ptr() as usize).map(|start| start..start + f7.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::FieldValue;
    use crate::protocols::framer::Framer;
    use crate::protocols::hl7::ack::build_ack;
    use crate::protocols::hl7::build::{Vitals, build_oru};
    use crate::protocols::hl7::mllp::{frame_mllp, scan_mllp};
    use crate::protocols::hl7::testutil::*;
    use crate::protocols::testutil::*;

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
