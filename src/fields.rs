//! The canonical field table: one name and one type per quantity, forever.
//!
//! InfluxDB fixes a field's type per series (per shard on 1.x/2.x): a point whose field type
//! differs from what the series already holds is rejected. So every field the gateway writes
//! has exactly one type, decided here and nowhere else, and devices' legacy names are mapped
//! onto these before anything is encoded.

/// How a field's value is written in line protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Count-like vitals (beats, percent saturation, mmHg): always an integer (`72i`).
    Int,
    /// Measured quantities: always a float, even when the value is whole (`36.0`).
    Float,
}

/// One canonical field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    pub name: &'static str,
    pub kind: FieldKind,
    /// Human unit, for the README table and operators.
    pub unit: &'static str,
}

/// Every field the gateway can write. Kept sorted by name so encoded points are stable.
pub const CANONICAL: &[FieldSpec] = &[
    FieldSpec { name: "diastolic_bp", kind: FieldKind::Int, unit: "mmHg" },
    FieldSpec { name: "gps_latitude", kind: FieldKind::Float, unit: "degrees" },
    FieldSpec { name: "gps_longitude", kind: FieldKind::Float, unit: "degrees" },
    FieldSpec { name: "heart_rate", kind: FieldKind::Int, unit: "/min" },
    FieldSpec { name: "mean_bp", kind: FieldKind::Int, unit: "mmHg" },
    FieldSpec { name: "perfusion_index", kind: FieldKind::Float, unit: "%" },
    FieldSpec { name: "pulse_rate", kind: FieldKind::Int, unit: "/min" },
    FieldSpec { name: "resp_rate", kind: FieldKind::Int, unit: "/min" },
    FieldSpec { name: "spo2", kind: FieldKind::Int, unit: "%" },
    FieldSpec { name: "systolic_bp", kind: FieldKind::Int, unit: "mmHg" },
    FieldSpec { name: "temperature", kind: FieldKind::Float, unit: "°C" },
];

/// Legacy names from older HeartGuard services and common device spellings → canonical name.
/// Every alias here is documented in the README ("Field names and aliases").
pub const ALIASES: &[(&str, &str)] = &[
    // The platform's user service wrote `patient_vitals.body_temperature`.
    ("body_temperature", "temperature"),
    ("latitude", "gps_latitude"),
    ("longitude", "gps_longitude"),
    ("respiratory_rate", "resp_rate"),
    ("map", "mean_bp"),
];

/// Looks a payload key up: a canonical name or an alias.
pub fn lookup(name: &str) -> Option<&'static FieldSpec> {
    let canonical = ALIASES.iter().find(|(alias, _)| *alias == name).map(|(_, c)| *c).unwrap_or(name);
    CANONICAL.iter().find(|f| f.name == canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique() {
        for pair in CANONICAL.windows(2) {
            assert!(pair[0].name < pair[1].name, "{} / {}", pair[0].name, pair[1].name);
        }
    }

    #[test]
    fn every_alias_points_at_a_canonical_field_and_shadows_none() {
        for (alias, target) in ALIASES {
            assert!(lookup(alias).is_some_and(|f| f.name == *target), "{alias}");
            assert!(CANONICAL.iter().all(|f| f.name != *alias), "{alias} shadows a field");
        }
    }

    #[test]
    fn body_temperature_is_temperature_and_float() {
        let f = lookup("body_temperature").expect("alias");
        assert_eq!((f.name, f.kind), ("temperature", FieldKind::Float));
        assert_eq!(lookup("heart_rate").map(|f| f.kind), Some(FieldKind::Int));
        assert!(lookup("seq").is_none());
    }
}
