//! The text of a message (module docs of [`super`], "Read"): the delimiters from MSH-1/2,
//! fields and components, escape sequences, and what an ACK echoes of the header.

/// The delimiters of a message (MSH-1 and MSH-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Delims {
    pub(super) field: char,
    pub(super) component: char,
    pub(super) repetition: char,
    pub(super) escape: char,
    pub(super) subcomponent: char,
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

/// Splits on a delimiter, without allocating.
pub(super) fn part(s: &str, sep: char, i: usize) -> &str {
    s.split(sep).nth(i).unwrap_or("")
}

/// Resolves HL7 escape sequences (`\F\ \S\ \T\ \R\ \E\ \Xhh..\`); unknown ones are dropped.
pub(super) fn unescape(s: &str, d: Delims) -> String {
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

/// The MSH segment: the message's delimiters and its fields.
pub(super) struct Msh<'a> {
    pub(super) delims: Delims,
    /// `fields[0]` = "MSH", `fields[1]` = MSH-2, `fields[i]` = MSH-(i+1): MSH-1 is the field
    /// separator itself.
    fields: Vec<&'a str>,
}

impl<'a> Msh<'a> {
    /// Reads the delimiters from MSH-1 and MSH-2; `None` when `seg` is no MSH segment.
    pub(super) fn parse(seg: &'a str) -> Option<Self> {
        let rest = seg.strip_prefix("MSH")?;
        let mut chars = rest.chars();
        let field = chars.next()?;
        let enc: Vec<char> = chars.take_while(|c| *c != field).collect();
        if enc.len() < 3 || field.is_alphanumeric() || enc.contains(&field) {
            return None;
        }
        let delims = Delims {
            field,
            component: enc[0],
            repetition: enc[1],
            escape: enc[2],
            subcomponent: enc.get(3).copied().unwrap_or('&'),
        };
        Some(Self { delims, fields: seg.split(field).collect() })
    }

    /// MSH-`i`, when the segment has it.
    pub(super) fn get(&self, i: usize) -> Option<&'a str> {
        self.fields.get(i - 1).copied()
    }

    /// MSH-`i`, empty when the segment does not have it.
    pub(super) fn field(&self, i: usize) -> &'a str {
        self.get(i).unwrap_or("")
    }

    /// What an ACK echoes: the raw fields, but for the control id (unescaped: it is compared
    /// and logged) and the version (its first component).
    pub(super) fn header(&self) -> Header {
        let f = |i| self.field(i);
        Header {
            sending_app: f(3).to_owned(),
            sending_facility: f(4).to_owned(),
            receiving_app: f(5).to_owned(),
            receiving_facility: f(6).to_owned(),
            control_id: unescape(f(10), self.delims),
            message_type: f(9).to_owned(),
            processing_id: f(11).to_owned(),
            version: part(f(12), self.delims.component, 0).to_owned(),
        }
    }
}

/// The OBX segments of a message, split into fields; an OBX without OBX-14 takes the OBR-7 of
/// the closest OBR before it (the observation time falls back to the request's).
pub(super) fn observations<'a>(segments: impl Iterator<Item = &'a str>, d: Delims) -> Vec<Vec<&'a str>> {
    let mut obr7 = "";
    let mut obx: Vec<Vec<&str>> = Vec::new();
    for seg in segments {
        let fields: Vec<&str> = seg.split(d.field).collect();
        match fields[0].trim() {
            "OBR" => obr7 = fields.get(7).copied().unwrap_or(""),
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
    obx
}

/// Field `i` of an OBX split into fields, trimmed; empty when the segment does not have it.
pub(super) fn obx_field<'a>(f: &[&'a str], i: usize) -> &'a str {
    f.get(i).copied().unwrap_or("").trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_resolved() {
        let d = Delims { field: '|', component: '^', repetition: '~', escape: '\\', subcomponent: '&' };
        assert_eq!(unescape("A\\F\\B\\S\\C\\T\\D\\R\\E\\E\\E\\X41\\", d), "A|B^C&D~E\\EA");
    }
}
