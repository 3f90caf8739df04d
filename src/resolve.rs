//! Resolution: a [`Reading`] plus the binding table → one encoded line for one destination.
//!
//! The binding in force when the reading was *taken* decides: a stream covers a reading when
//! `started_at <= ts < ended_at`. A reading no binding covers, or that two bindings cover
//! (several signal types and none named), is never guessed: it is unbound.

use crate::bindings::table::{BindingTable, Compiled};
use crate::lineproto;
use crate::model::Reading;

/// Why a reading found no stream. The string form is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unbound {
    /// No binding at all for this serial.
    UnknownSerial,
    /// Bindings exist, but none whose stream covers the reading's time (and signal type).
    NotCovered,
    /// Several streams cover it and the reading does not say which signal type it is.
    Ambiguous,
}

impl Unbound {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownSerial => "unknown_serial",
            Self::NotCovered => "no_stream_at_time",
            Self::Ambiguous => "ambiguous_signal_type",
        }
    }
}

/// Finds the bindings of the one stream that covers `r` (a stream may have several
/// bindings, e.g. two buckets; the reading is written to each) and puts them in `out`.
pub fn resolve<'a>(table: &'a BindingTable, r: &Reading, out: &mut Vec<&'a Compiled>) -> Result<(), Unbound> {
    out.clear();
    let all = table.for_serial(&r.serial);
    if all.is_empty() {
        return Err(Unbound::UnknownSerial);
    }
    for c in all {
        if !c.binding.covers(r.ts_ns) {
            continue;
        }
        if r.signal_type.as_deref().is_some_and(|t| t != c.binding.signal_type) {
            continue;
        }
        if out.first().is_some_and(|f| f.binding.stream_id != c.binding.stream_id) {
            out.clear();
            return Err(Unbound::Ambiguous);
        }
        out.push(c);
    }
    if out.is_empty() { Err(Unbound::NotCovered) } else { Ok(()) }
}

/// As [`resolve`], for callers that expect exactly one binding (tests, tools).
pub fn resolve_one<'a>(table: &'a BindingTable, r: &Reading) -> Result<&'a Compiled, Unbound> {
    let mut out = Vec::new();
    resolve(table, r, &mut out)?;
    Ok(out[0])
}

/// Appends the line for `r` under binding `c` (no trailing newline).
pub fn encode(c: &Compiled, r: &Reading, out: &mut String) {
    lineproto::encode_line(out, &c.prefix, r.fields.iter().map(|(s, v)| (s.name, *v)), r.ts_ns);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::source::BindingSource;
    use crate::fields;
    use crate::fields::FieldValue;
    use crate::model::Binding;

    fn compiled(b: Binding) -> Compiled {
        Compiled { prefix: b.series_prefix(), binding: b, dest_id: 1, stream_key: 1 }
    }

    fn binding(stream: &str, signal: &str, start: Option<i64>, end: Option<i64>) -> Binding {
        Binding {
            serial: "DEV".into(),
            device_id: "d".into(),
            stream_id: stream.into(),
            patient_id: format!("patient-of-{stream}"),
            org_id: "o".into(),
            signal_type: signal.into(),
            influx_org: String::new(),
            influx_bucket: "b".into(),
            measurement: "vital_signs".into(),
            started_at: start,
            ended_at: end,
            sample_rate_hz: None,
            tags: Default::default(),
        }
    }

    fn reading(ts: i64, signal: Option<&str>) -> Reading {
        Reading {
            serial: "DEV".into(),
            ts_ns: ts,
            signal_type: signal.map(str::to_owned),
            fields: vec![(fields::lookup("spo2").expect("spo2"), FieldValue::Int(97))],
        }
    }

    #[test]
    fn the_stream_in_force_at_the_reading_time_wins() {
        let t = BindingTable::new(
            vec![
                compiled(binding("old", "spo2", Some(0), Some(100))),
                compiled(binding("new", "spo2", Some(100), None)),
            ],
            BindingSource::None,
            "1".into(),
        );
        assert_eq!(resolve_one(&t, &reading(99, None)).map(|c| c.binding.stream_id.as_str()), Ok("old"));
        assert_eq!(resolve_one(&t, &reading(100, None)).map(|c| c.binding.stream_id.as_str()), Ok("new"));
        assert_eq!(resolve_one(&t, &reading(-1, None)).err(), Some(Unbound::NotCovered));
        let mut other = reading(5, None);
        other.serial = "OTHER".into();
        assert_eq!(resolve_one(&t, &other).err(), Some(Unbound::UnknownSerial));
    }

    #[test]
    fn several_signal_types_route_by_type_and_never_guess() {
        let t = BindingTable::new(
            vec![compiled(binding("a", "spo2", None, None)), compiled(binding("b", "ecg", None, None))],
            BindingSource::None,
            "1".into(),
        );
        assert_eq!(resolve_one(&t, &reading(5, Some("ecg"))).map(|c| c.binding.stream_id.as_str()), Ok("b"));
        assert_eq!(resolve_one(&t, &reading(5, None)).err(), Some(Unbound::Ambiguous));
        assert_eq!(resolve_one(&t, &reading(5, Some("x"))).err(), Some(Unbound::NotCovered));
    }

    #[test]
    fn encodes_with_the_binding_prefix() {
        let c = compiled(binding("s", "spo2", None, None));
        let mut line = String::new();
        encode(&c, &reading(1_700_000_000_000_000_000, None), &mut line);
        assert_eq!(
            line,
            "vital_signs,device_id=d,org_id=o,patient_id=patient-of-s,signal_type=spo2,stream_id=s spo2=97i 1700000000000000000"
        );
    }
}
