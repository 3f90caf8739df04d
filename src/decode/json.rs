//! The MQTT JSON payload format.
//!
//! A payload is one reading object or an array of them:
//! `{"serial": "ABC-001", "ts": 1700000000123, "heart_rate": 72, "temperature": 36.5}`.
//! - `serial`: from the payload or the topic; when both are given they must agree (a reading
//!   that names another device than its topic is refused, never guessed).
//! - `ts` (alias `timestamp`): epoch milliseconds (integer or fractional) or an RFC 3339
//!   string; the time of receipt when absent. A time further ahead of the gateway clock than
//!   `clock.future_tolerance_ms` is a device clock that is wrong: the reading is refused and
//!   its device reported ([`Decoded::clock_ahead`]).
//! - `signal_type`: optional, routes readings of a device with several streams.
//! - every other key is looked up in [`crate::fields`]; unknown keys are counted and skipped,
//!   `null` means "no value". A wrong type rejects the whole reading; a negative count (a
//!   device's "no value" sentinel) drops only that field.

use serde_json::{Map, Value};

use super::{ClockAhead, MIN_TS_NS, Now, RejectReason, Rejection};
use crate::fields::{self, FieldKind, FieldSpec, FieldValue};
use crate::model::{Reading, valid_serial};

/// What one payload yielded.
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    pub readings: Vec<Reading>,
    pub rejected: Vec<Rejection>,
    /// Keys that are neither reserved nor canonical fields nor aliases (skipped).
    pub unknown_fields: u32,
    /// Fields dropped for an out-of-range value while the rest of the reading was kept.
    pub dropped_fields: u32,
    /// Readings refused (also in `rejected`) because their device's clock is ahead.
    pub clock_ahead: Vec<ClockAhead>,
}

/// Decodes one MQTT payload. `topic_serial` is the `{serial}` level of the topic, if the
/// subscription has one; `now` stamps readings without `ts` and bounds future stamps.
pub fn decode(payload: &[u8], topic_serial: Option<&str>, now: Now, max_bytes: usize) -> Decoded {
    let mut out = Decoded::default();
    if payload.len() > max_bytes {
        out.rejected.push(Rejection::new(RejectReason::Oversized, format!("{} bytes", payload.len())));
        return out;
    }
    if payload.iter().all(u8::is_ascii_whitespace) {
        out.rejected.push(Rejection::new(RejectReason::Empty, "empty payload"));
        return out;
    }
    let value: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => {
            // serde_json's message names a line and column, not the content.
            out.rejected.push(Rejection::new(RejectReason::InvalidJson, e.to_string()));
            return out;
        }
    };
    match value {
        Value::Object(obj) => decode_one(&obj, topic_serial, now, &mut out),
        Value::Array(items) if items.is_empty() => {
            out.rejected.push(Rejection::new(RejectReason::Empty, "empty array"));
        }
        Value::Array(items) => {
            for item in &items {
                match item {
                    Value::Object(obj) => decode_one(obj, topic_serial, now, &mut out),
                    other => out.rejected.push(Rejection::new(
                        RejectReason::NotAnObject,
                        format!("array element is {}", type_name(other)),
                    )),
                }
            }
        }
        other => {
            out.rejected.push(Rejection::new(RejectReason::NotAnObject, format!("payload is {}", type_name(&other))))
        }
    }
    out
}

fn decode_one(obj: &Map<String, Value>, topic_serial: Option<&str>, now: Now, out: &mut Decoded) {
    match reading_from(obj, topic_serial, now, out) {
        Ok(r) => out.readings.push(r),
        Err(rej) => out.rejected.push(rej),
    }
}

/// One reading object (module docs): its device, time, signal type and fields, read in that
/// order; the first problem refuses the reading.
fn reading_from(
    obj: &Map<String, Value>,
    topic_serial: Option<&str>,
    now: Now,
    out: &mut Decoded,
) -> Result<Reading, Rejection> {
    let serial = serial_of(obj, topic_serial)?;
    let ts_ns = time_of(obj, now)?;
    if let Some(ahead_ns) = now.too_far_ahead(ts_ns) {
        out.clock_ahead.push(ClockAhead { serial, ahead_ns });
        return Err(Rejection::new(
            RejectReason::TimestampOutOfRange,
            "ahead of the gateway clock by more than clock.future_tolerance_ms",
        ));
    }
    let signal_type = signal_type_of(obj)?;
    let fields = fields_of(obj, out)?;
    Ok(Reading { serial, ts_ns, signal_type, fields })
}

/// The payload's `serial`, else the topic's; when both are given they must agree.
fn serial_of(obj: &Map<String, Value>, topic_serial: Option<&str>) -> Result<String, Rejection> {
    match (obj.get("serial"), topic_serial) {
        (Some(Value::String(s)), topic) => {
            if !valid_serial(s) {
                return Err(Rejection::new(RejectReason::InvalidSerial, "serial in payload"));
            }
            if topic.is_some_and(|t| t != s) {
                return Err(Rejection::new(RejectReason::SerialMismatch, "payload serial differs from topic"));
            }
            Ok(s.clone())
        }
        (Some(Value::Null) | None, Some(t)) => {
            if !valid_serial(t) {
                return Err(Rejection::new(RejectReason::InvalidSerial, "serial in topic"));
            }
            Ok(t.to_owned())
        }
        (Some(Value::Null) | None, None) => {
            Err(Rejection::new(RejectReason::MissingSerial, "no serial in payload or topic"))
        }
        (Some(other), _) => Err(Rejection::new(RejectReason::InvalidSerial, format!("serial is {}", type_name(other)))),
    }
}

/// `ts` or `timestamp` in ns, else the time of receipt; never before [`MIN_TS_NS`].
fn time_of(obj: &Map<String, Value>, now: Now) -> Result<i64, Rejection> {
    let ts_value = match (obj.get("ts"), obj.get("timestamp")) {
        (Some(_), Some(_)) => {
            return Err(Rejection::new(RejectReason::InvalidTimestamp, "both ts and timestamp given"));
        }
        (Some(v), None) | (None, Some(v)) => Some(v),
        (None, None) => None,
    };
    let ts_ns = match ts_value {
        None | Some(Value::Null) => now.ns,
        Some(v) => timestamp_ns(v)?,
    };
    if ts_ns < MIN_TS_NS {
        return Err(Rejection::new(RejectReason::TimestampOutOfRange, "before 2000"));
    }
    Ok(ts_ns)
}

/// `signal_type`, when given: 1 to 60 characters, none of them a control character.
fn signal_type_of(obj: &Map<String, Value>) -> Result<Option<String>, Rejection> {
    match obj.get("signal_type") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 60 && !s.chars().any(char::is_control) => {
            Ok(Some(s.clone()))
        }
        Some(_) => Err(Rejection::new(RejectReason::InvalidField, "signal_type")),
    }
}

/// The canonical fields of a reading object, sorted by name. Unknown keys are counted in
/// `out.unknown_fields`, values dropped in `out.dropped_fields`.
fn fields_of(obj: &Map<String, Value>, out: &mut Decoded) -> Result<Vec<(&'static FieldSpec, FieldValue)>, Rejection> {
    let mut fields: Vec<(&'static FieldSpec, FieldValue)> = Vec::with_capacity(obj.len());
    for (key, value) in obj {
        if matches!(key.as_str(), "serial" | "ts" | "timestamp" | "signal_type") {
            continue;
        }
        let Some(spec) = fields::lookup(key) else {
            out.unknown_fields += 1;
            continue;
        };
        let Some(v) = field_value(spec, value, &mut out.dropped_fields)? else {
            continue;
        };
        if let Some((_, prev)) = fields.iter().find(|(s, _)| s.name == spec.name) {
            if *prev != v {
                return Err(Rejection::new(
                    RejectReason::InvalidField,
                    format!("{} given twice with different values (alias)", spec.name),
                ));
            }
            continue;
        }
        fields.push((spec, v));
    }
    if fields.is_empty() {
        return Err(Rejection::new(RejectReason::NoFields, "no known field with a value"));
    }
    fields.sort_by_key(|(s, _)| s.name);
    Ok(fields)
}

/// `value` as a value of `spec`: `None` for `null`, and for a value dropped (counted in
/// `dropped`) as a negative count or outside the field's range; a wrong type is refused.
fn field_value(spec: &FieldSpec, value: &Value, dropped: &mut u32) -> Result<Option<FieldValue>, Rejection> {
    let v = match (spec.kind, value) {
        (_, Value::Null) => return Ok(None),
        (FieldKind::Int, Value::Number(n)) => {
            let int =
                n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| f as i64));
            match int {
                Some(i) if i < 0 => {
                    *dropped += 1;
                    return Ok(None);
                }
                Some(i) => FieldValue::Int(i),
                None => {
                    return Err(Rejection::new(
                        RejectReason::InvalidField,
                        format!("{} must be a whole number", spec.name),
                    ));
                }
            }
        }
        (FieldKind::Float, Value::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() => FieldValue::Float(f),
            _ => {
                return Err(Rejection::new(RejectReason::InvalidField, format!("{} out of range", spec.name)));
            }
        },
        (FieldKind::Bool, Value::Bool(b)) => FieldValue::Bool(*b),
        (FieldKind::Bool, other) => {
            return Err(Rejection::new(
                RejectReason::InvalidField,
                format!("{} is {}, expected a boolean", spec.name, type_name(other)),
            ));
        }
        (_, other) => {
            return Err(Rejection::new(
                RejectReason::InvalidField,
                format!("{} is {}, expected a number", spec.name, type_name(other)),
            ));
        }
    };
    // Outside the field's plausible range: a device sentinel or fault, never a reading.
    if !spec.accepts(v) {
        *dropped += 1;
        return Ok(None);
    }
    Ok(Some(v))
}

fn timestamp_ns(v: &Value) -> Result<i64, Rejection> {
    let bad = |d: &str| Rejection::new(RejectReason::InvalidTimestamp, d.to_owned());
    match v {
        Value::Number(n) => {
            if let Some(ms) = n.as_i64() {
                ms.checked_mul(1_000_000).ok_or_else(|| bad("ts out of range"))
            } else if let Some(ms) = n.as_f64().filter(|f| f.is_finite() && f.abs() < 9.0e12) {
                // Whole and fractional milliseconds apart: their product would lose the
                // sub-millisecond digits to f64 rounding.
                Ok(ms.trunc() as i64 * 1_000_000 + (ms.fract() * 1_000_000.0).round() as i64)
            } else {
                Err(bad("ts out of range"))
            }
        }
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
            .ok_or_else(|| bad("ts is not RFC 3339")),
        other => Err(bad(&format!("ts is {}", type_name(other)))),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_NS: i64 = 1_764_000_000_000_000_000;
    const NOW: Now = Now { ns: NOW_NS, future_tolerance_ns: 120_000_000_000 };
    const MAX: usize = 64 * 1024;

    fn one(p: &str, topic: Option<&str>) -> Result<Reading, RejectReason> {
        let d = decode(p.as_bytes(), topic, NOW, MAX);
        match (d.readings.len(), d.rejected.first()) {
            (1, None) => Ok(d.readings.into_iter().next().expect("one")),
            (0, Some(r)) => Err(r.reason),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn field(r: &Reading, name: &str) -> Option<FieldValue> {
        r.fields.iter().find(|(s, _)| s.name == name).map(|(_, v)| *v)
    }

    #[test]
    fn decodes_the_documented_example_with_types() {
        let r = one(
            r#"{"serial":"ABC-001","ts":1700000000123,"heart_rate":72,"spo2":98,"systolic_bp":120,"diastolic_bp":80,"temperature":36.5}"#,
            None,
        )
        .expect("valid");
        assert_eq!(r.serial, "ABC-001");
        assert_eq!(r.ts_ns, 1_700_000_000_123_000_000);
        assert_eq!(field(&r, "heart_rate"), Some(FieldValue::Int(72)));
        assert_eq!(field(&r, "temperature"), Some(FieldValue::Float(36.5)));
        let names: Vec<_> = r.fields.iter().map(|(s, _)| s.name).collect();
        assert_eq!(names, ["diastolic_bp", "heart_rate", "spo2", "systolic_bp", "temperature"]);
    }

    #[test]
    fn whole_temperature_stays_float_and_whole_float_count_becomes_int() {
        let r = one(r#"{"serial":"A","temperature":37,"heart_rate":72.0}"#, None).expect("valid");
        assert_eq!(field(&r, "temperature"), Some(FieldValue::Float(37.0)));
        assert_eq!(field(&r, "heart_rate"), Some(FieldValue::Int(72)));
        assert_eq!(one(r#"{"serial":"A","heart_rate":72.5}"#, None), Err(RejectReason::InvalidField));
    }

    #[test]
    fn legacy_alias_is_normalized() {
        let r = one(r#"{"serial":"A","body_temperature":36.6}"#, None).expect("valid");
        assert_eq!(field(&r, "temperature"), Some(FieldValue::Float(36.6)));
        assert_eq!(
            one(r#"{"serial":"A","body_temperature":36.6,"temperature":37.0}"#, None),
            Err(RejectReason::InvalidField)
        );
    }

    #[test]
    fn serial_comes_from_topic_or_payload_and_must_agree() {
        assert_eq!(one(r#"{"heart_rate":1}"#, Some("T-1")).expect("topic").serial, "T-1");
        assert_eq!(one(r#"{"serial":"T-1","heart_rate":1}"#, Some("T-1")).expect("same").serial, "T-1");
        assert_eq!(one(r#"{"serial":"X","heart_rate":1}"#, Some("T-1")), Err(RejectReason::SerialMismatch));
        assert_eq!(one(r#"{"heart_rate":1}"#, None), Err(RejectReason::MissingSerial));
        assert_eq!(one(r#"{"serial":7,"heart_rate":1}"#, None), Err(RejectReason::InvalidSerial));
        assert_eq!(one(r#"{"serial":"","heart_rate":1}"#, None), Err(RejectReason::InvalidSerial));
    }

    #[test]
    fn timestamps_in_every_accepted_form() {
        let ms = one(r#"{"serial":"A","ts":1700000000123,"spo2":1}"#, None).expect("ms");
        let rfc = one(r#"{"serial":"A","ts":"2023-11-14T22:13:20.123Z","spo2":1}"#, None).expect("rfc");
        let frac = one(r#"{"serial":"A","timestamp":1700000000123.5,"spo2":1}"#, None).expect("frac");
        assert_eq!(ms.ts_ns, rfc.ts_ns);
        assert_eq!(frac.ts_ns, 1_700_000_000_123_500_000);
        assert_eq!(one(r#"{"serial":"A","spo2":1}"#, None).expect("now").ts_ns, NOW_NS);
        assert_eq!(one(r#"{"serial":"A","ts":"yesterday","spo2":1}"#, None), Err(RejectReason::InvalidTimestamp));
        assert_eq!(one(r#"{"serial":"A","ts":1700000000,"spo2":1}"#, None), Err(RejectReason::TimestampOutOfRange));
        assert_eq!(one(r#"{"serial":"A","ts":true,"spo2":1}"#, None), Err(RejectReason::InvalidTimestamp));
    }

    #[test]
    fn a_device_clock_ahead_of_the_gateways_is_refused_and_reported() {
        let at = |ms: i64| format!(r#"{{"serial":"A","ts":{ms},"spo2":97}}"#);
        let now_ms = NOW_NS / 1_000_000;
        assert!(one(&at(now_ms + 120_000), None).is_ok(), "at the tolerance");
        let d = decode(at(now_ms + 180_000).as_bytes(), None, NOW, MAX);
        assert_eq!(d.rejected[0].reason, RejectReason::TimestampOutOfRange);
        assert_eq!(d.clock_ahead, [ClockAhead { serial: "A".into(), ahead_ns: 180_000_000_000 }]);
        let lenient = Now { future_tolerance_ns: 3_600_000_000_000, ..NOW };
        assert_eq!(decode(at(now_ms + 180_000).as_bytes(), None, lenient, MAX).readings.len(), 1);
        // Too old is no clock that runs ahead.
        let d = decode(at(1_000).as_bytes(), None, NOW, MAX);
        assert_eq!((d.rejected[0].reason, d.clock_ahead.len()), (RejectReason::TimestampOutOfRange, 0));
    }

    #[test]
    fn unknown_fields_are_counted_not_written() {
        let d = decode(br#"{"serial":"A","seq":17,"debug":"x","spo2":97}"#, None, NOW, MAX);
        assert_eq!(d.unknown_fields, 2);
        assert_eq!(d.readings[0].fields.len(), 1);
    }

    #[test]
    fn bad_payloads_are_rejected_with_reasons() {
        let reason = |p: &[u8]| decode(p, None, NOW, MAX).rejected.first().map(|r| r.reason);
        assert_eq!(reason(b""), Some(RejectReason::Empty));
        assert_eq!(reason(b"null"), Some(RejectReason::NotAnObject));
        assert_eq!(reason(b"[]"), Some(RejectReason::Empty));
        assert_eq!(reason(b"{\"serial\":"), Some(RejectReason::InvalidJson));
        assert_eq!(reason(b"\xff\xfe"), Some(RejectReason::InvalidJson));
        assert_eq!(reason(br#"{"serial":"A","spo2":"97"}"#), Some(RejectReason::InvalidField));
        assert_eq!(reason(br#"{"serial":"A","spo2":null}"#), Some(RejectReason::NoFields));
        assert_eq!(reason(&vec![b' '; MAX + 1]), Some(RejectReason::Oversized));
    }

    #[test]
    fn array_keeps_good_readings_next_to_bad_ones() {
        let d = decode(
            br#"[{"serial":"A","spo2":97},7,{"serial":"B","spo2":"x"},{"serial":"C","spo2":-1,"heart_rate":60},{"serial":"D","spo2":250,"temperature":36.6}]"#,
            None,
            NOW,
            MAX,
        );
        assert_eq!(d.readings.len(), 3);
        assert_eq!(d.rejected.len(), 2);
        assert_eq!(d.dropped_fields, 2, "a negative and an out-of-range value dropped, their readings kept");
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode(&bytes, Some("T"), NOW, MAX);
        }

        #[test]
        fn accepted_readings_are_always_well_typed(
            hr in proptest::num::f64::ANY, t in proptest::num::f64::ANY, ts in proptest::num::i64::ANY,
        ) {
            let p = serde_json::json!({"serial": "A", "heart_rate": hr, "temperature": t, "ts": ts});
            let d = decode(p.to_string().as_bytes(), None, NOW, MAX);
            for r in &d.readings {
                proptest::prop_assert!(r.ts_ns >= MIN_TS_NS);
                for (spec, v) in &r.fields {
                    match (spec.kind, v) {
                        (FieldKind::Int, FieldValue::Int(i)) => proptest::prop_assert!(*i >= 0),
                        (FieldKind::Float, FieldValue::Float(f)) => proptest::prop_assert!(f.is_finite()),
                        (FieldKind::Bool, FieldValue::Bool(_)) => {}
                        _ => proptest::prop_assert!(false, "type mismatch"),
                    }
                }
            }
        }
    }
}
