//! The bindings file (TOML): `[[binding]]` tables, each with a `[binding.tags]` table.
//! Also the export format of the other binding sources.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::Binding;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingsFile {
    #[serde(default, rename = "binding")]
    pub bindings: Vec<Binding>,
}

/// Reads and validates a bindings file. Every problem is reported, each with the binding's
/// position and serial, so one pass fixes the file.
pub fn load(path: &Path) -> Result<Vec<Binding>, Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    parse(&text).map_err(|p| p.into_iter().map(|m| format!("{}: {m}", path.display())).collect())
}

pub fn parse(text: &str) -> Result<Vec<Binding>, Vec<String>> {
    let file: BindingsFile = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
    let mut problems = Vec::new();
    for (i, b) in file.bindings.iter().enumerate() {
        for p in b.problems() {
            problems.push(format!("binding[{i}] (serial {:?}): {p}", crate::model::loggable(&b.serial)));
        }
    }
    for (i, a) in file.bindings.iter().enumerate() {
        for b in &file.bindings[i + 1..] {
            if a.serial == b.serial && a.signal_type == b.signal_type && overlaps(a, b) {
                problems.push(format!(
                    "serial {:?}: two bindings for signal type {:?} overlap in time; a reading would be ambiguous",
                    crate::model::loggable(&a.serial),
                    a.signal_type
                ));
            }
        }
    }
    if problems.is_empty() { Ok(file.bindings) } else { Err(problems) }
}

fn overlaps(a: &Binding, b: &Binding) -> bool {
    let start = |x: &Binding| x.started_at.unwrap_or(i64::MIN);
    let end = |x: &Binding| x.ended_at.unwrap_or(i64::MAX);
    start(a) < end(b) && start(b) < end(a)
}

/// Serializes bindings in the file format (the export format).
pub fn to_toml(bindings: &[Binding]) -> String {
    toml::to_string(&BindingsFile { bindings: bindings.to_vec() }).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[[binding]]
serial = "ABC-001"
device_id = "00000000-0000-4000-8000-000000000123"
stream_id = "00000000-0000-4000-8000-000000000789"
patient_id = "00000000-0000-4000-8000-000000000456"
org_id = "00000000-0000-4000-8000-000000000999"
signal_type = "vital_signs"
influx_org = "heartguard"
influx_bucket = "heartguard_vitals"
measurement = "vital_signs"
started_at = "2026-11-01 08:00:00"
[binding.tags]
location = "ICU-5"
priority = "high"
"#;

    #[test]
    fn parses_and_round_trips_the_export_format() {
        let b = parse(SAMPLE).expect("valid");
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].started_at, Some(1_793_520_000_000_000_000));
        assert_eq!(b[0].tags["location"], "ICU-5");
        assert_eq!(parse(&to_toml(&b)).expect("round trip"), b);
    }

    #[test]
    fn unknown_keys_and_overlaps_are_refused() {
        let bad = SAMPLE.replace("measurement =", "patient_name = \"x\"\nmeasurement =");
        assert!(parse(&bad).is_err());
        let twice = format!("{SAMPLE}{}", SAMPLE.replace("[binding.tags]", "[binding.tags]\nx = \"1\""));
        let err = parse(&twice).expect_err("overlap");
        assert!(err[0].contains("overlap"), "{err:?}");
    }
}
