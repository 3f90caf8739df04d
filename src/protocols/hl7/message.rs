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

pub(super) fn parse_msh(seg: &str) -> Option<(Delims, Vec<&str>)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_resolved() {
        let d = Delims { field: '|', component: '^', repetition: '~', escape: '\\', subcomponent: '&' };
        assert_eq!(unescape("A\\F\\B\\S\\C\\T\\D\\R\\E\\E\\E\\X41\\", d), "A|B^C&D~E\\EA");
    }
}
