//! One message, without MLLP framing → readings, and the answer it deserves.

use std::collections::BTreeMap;

use super::ack::AckCode;
use super::identity::Devices;
use super::message::{Header, parse_msh, part, unescape};
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

impl Message {
    fn refuse(header: Option<Header>, ack: AckCode, reason: RejectReason, text: &'static str) -> Self {
        let mut decoded = Decoded::default();
        decoded.rejected.push(Rejection::new(reason, text));
        Self { header, decoded, ack, reason: Some(text), retry_key: None }
    }
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
