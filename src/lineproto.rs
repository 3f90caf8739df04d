//! InfluxDB line protocol: the only module that knows its syntax.
//!
//! `measurement,tag_a=1,tag_b=2 field_a=72i,field_b=36.5 1700000000123000000`
//!
//! Rules (see `docs/influxdb.md` §3 and the README, "How names and values are written"):
//! - measurement: `,` and space are escaped with `\`; tag keys, tag values and field keys:
//!   `,`, `=` and space. Tags are sorted by key; a tag with an empty value is omitted.
//! - Backslashes are written as they are. InfluxDB 1.x/2.x treat a separator right after a
//!   backslash as escaped and never unescape `\\`, so a backslash in the middle of a value
//!   arrives intact.
//! - **The one rule for what line protocol cannot carry:** a line break or other control
//!   character (tab excepted) becomes a space (a raw newline would split the point in two),
//!   and a tag key or value that ends in a backslash gets its last backslash written as `/`
//!   (a trailing backslash would escape the separator after it, and the server rejects the
//!   line). In a measurement name every backslash is written as `/`. Nothing else is changed,
//!   no line is ever broken, no point is ever lost to this.
//! - integers carry `i`; floats are finite and always written with a decimal point; booleans
//!   are `true` / `false`.

use crate::fields::FieldValue;

const MEASUREMENT_SPECIALS: &[char] = &[',', ' '];
const TAG_SPECIALS: &[char] = &[',', '=', ' '];

/// True for the characters line protocol cannot carry in any name or value: line breaks
/// (a raw one splits the point in two) and other control characters (InfluxDB 1.x echoes a
/// rejected line into a response header, where a control character makes the answer
/// unreadable). Tab is carried as it is.
fn uncarriable(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// Applies the one rule for what line protocol cannot carry (module docs) to a tag key, tag
/// value or field key: control characters other than tab → space, a trailing backslash → `/`.
/// This is exactly what a reader gets back for `s`.
pub fn carried(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(uncarriable) && !s.ends_with('\\') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out: String = s.chars().map(|c| if uncarriable(c) { ' ' } else { c }).collect();
    if out.ends_with('\\') {
        out.pop();
        out.push('/');
    }
    std::borrow::Cow::Owned(out)
}

/// The rule for measurement names: as [`carried`], and every backslash becomes `/` (InfluxDB
/// 1.x unescapes measurement names differently from tags, so no backslash survives reliably).
pub fn carried_measurement(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(uncarriable) && !s.contains('\\') {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| {
                if uncarriable(c) {
                    ' '
                } else if c == '\\' {
                    '/'
                } else {
                    c
                }
            })
            .collect(),
    )
}

fn push_escaped(out: &mut String, s: &str, specials: &[char]) {
    for c in s.chars() {
        if specials.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Appends an escaped measurement name.
pub fn push_measurement(out: &mut String, s: &str) {
    push_escaped(out, &carried_measurement(s), MEASUREMENT_SPECIALS);
}

/// Appends an escaped tag key, tag value or field key.
pub fn push_key(out: &mut String, s: &str) {
    push_escaped(out, &carried(s), TAG_SPECIALS);
}

/// The series part of a line (`measurement,k=v,…`), built once per binding so that encoding a
/// point is a copy plus the fields. `tags` need not be sorted; empty values are skipped.
pub fn series_prefix<'a>(measurement: &str, tags: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut tags: Vec<_> = tags.into_iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (carried(k), v)).collect();
    // InfluxDB sorts by the key it reads back, so sort by the carried key.
    tags.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out = String::with_capacity(64 + tags.len() * 48);
    push_measurement(&mut out, measurement);
    for (k, v) in tags {
        out.push(',');
        push_key(&mut out, &k);
        out.push('=');
        push_key(&mut out, v);
    }
    out
}

/// Appends one field value.
pub fn push_value(out: &mut String, v: FieldValue) {
    use std::fmt::Write;
    match v {
        FieldValue::Int(i) => {
            let _ = write!(out, "{i}i");
        }
        FieldValue::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        FieldValue::Float(f) => {
            // Display never uses an exponent; add ".0" so a whole number stays a float to
            // every reader, not only to InfluxDB (which would also take a bare `36`).
            let start = out.len();
            let _ = write!(out, "{f}");
            if !out[start..].contains('.') {
                out.push_str(".0");
            }
        }
    }
}

/// Encodes one complete line (without the trailing newline). `fields` must be non-empty and
/// its values finite; callers guarantee both (decoders refuse anything else).
pub fn encode_line<'a>(
    out: &mut String,
    prefix: &str,
    fields: impl IntoIterator<Item = (&'a str, FieldValue)>,
    ts_ns: i64,
) {
    use std::fmt::Write;
    out.push_str(prefix);
    let mut sep = ' ';
    for (k, v) in fields {
        out.push(sep);
        sep = ',';
        push_key(out, k);
        out.push('=');
        push_value(out, v);
    }
    let _ = write!(out, " {ts_ns}");
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A reference reader with InfluxDB 1.x/2.x semantics (`models/points.go`): a separator
    /// is escaped when the byte before it is a backslash, and only `\,` `\=` `\ ` (tags) or
    /// `\,` `\ ` (measurement) are unescaped. Returns (measurement, tags, rest).
    /// (measurement, tags, rest of the line)
    type Series = (String, Vec<(String, String)>, String);

    pub(crate) fn parse_series(line: &str) -> Option<Series> {
        let b = line.as_bytes();
        let split = |from: usize, stops: &[u8]| -> usize {
            let mut i = from;
            while i < b.len() {
                if stops.contains(&b[i]) && (i == 0 || b[i - 1] != b'\\') {
                    return i;
                }
                i += 1;
            }
            i
        };
        let unescape = |s: &str, specials: &[char]| {
            let mut s = s.to_owned();
            for c in specials {
                s = s.replace(&format!("\\{c}"), &c.to_string());
            }
            s
        };
        let m_end = split(0, b",  ");
        let measurement = unescape(&line[..m_end], MEASUREMENT_SPECIALS);
        let mut tags = Vec::new();
        let mut i = m_end;
        while i < b.len() && b[i] == b',' {
            let k_end = split(i + 1, b"=, ");
            if k_end >= b.len() || b[k_end] != b'=' {
                return None;
            }
            let v_end = split(k_end + 1, b", =");
            if v_end < b.len() && b[v_end] == b'=' {
                return None;
            }
            tags.push((unescape(&line[i + 1..k_end], TAG_SPECIALS), unescape(&line[k_end + 1..v_end], TAG_SPECIALS)));
            i = v_end;
        }
        if i >= b.len() || b[i] != b' ' {
            return None;
        }
        Some((measurement, tags, line[i + 1..].to_owned()))
    }

    #[test]
    fn encodes_the_design_example() {
        let prefix = series_prefix(
            "vital_signs",
            [("stream_id", "s-789"), ("patient_id", "p-456"), ("location", "ICU-5"), ("empty", "")],
        );
        let mut line = String::new();
        encode_line(
            &mut line,
            &prefix,
            [("heart_rate", FieldValue::Int(72)), ("temperature", FieldValue::Float(36.0))],
            1_700_000_000_000_000_000,
        );
        assert_eq!(
            line,
            "vital_signs,location=ICU-5,patient_id=p-456,stream_id=s-789 heart_rate=72i,temperature=36.0 1700000000000000000"
        );
    }

    #[test]
    fn escapes_specials_and_applies_the_rule() {
        let p =
            series_prefix("vital signs,x", [("location", "Ward 3, bed=7"), ("path", "C:\\dir\\"), ("note", "a\nb")]);
        assert_eq!(p, "vital\\ signs\\,x,location=Ward\\ 3\\,\\ bed\\=7,note=a\\ b,path=C:\\dir/");
    }

    #[test]
    fn floats_always_carry_a_decimal_point() {
        let enc = |f| {
            let mut s = String::new();
            push_value(&mut s, FieldValue::Float(f));
            s
        };
        assert_eq!(enc(36.0), "36.0");
        assert_eq!(enc(-0.0), "-0.0");
        assert_eq!(enc(36.55), "36.55");
        assert_eq!(enc(1e21), "1000000000000000000000.0");
        assert_eq!(enc(1e-7), "0.0000001");
    }

    #[test]
    fn booleans_are_words() {
        let mut s = String::new();
        push_value(&mut s, FieldValue::Bool(true));
        s.push(',');
        push_value(&mut s, FieldValue::Bool(false));
        assert_eq!(s, "true,false");
    }

    proptest! {
        #[test]
        fn any_names_and_values_round_trip_through_the_reference_reader(
            m in "\\PC{1,12}",
            tags in proptest::collection::btree_map("[a-z][a-z0-9 ,=\\\\_\t\\n\"é]{0,8}", "\\PC{0,16}", 0..6),
        ) {
            let m = format!("m{m}");
            let prefix = series_prefix(&m, tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let mut line = String::new();
            encode_line(&mut line, &prefix, [("heart_rate", FieldValue::Int(1))], 1);
            prop_assert!(!line.contains('\n') && !line.contains('\r'));
            let (pm, ptags, rest) = parse_series(&line).expect("parses");
            prop_assert_eq!(pm, carried_measurement(&m).into_owned());
            let expected: Vec<(String, String)> = {
                let mut e: Vec<_> = tags.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (carried(k).into_owned(), carried(v).into_owned())).collect();
                e.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                e
            };
            prop_assert_eq!(ptags, expected);
            prop_assert_eq!(rest, "heart_rate=1i 1");
        }
    }
}
