//! The canonical field table: one name and one type per quantity, forever.
//!
//! InfluxDB fixes a field's type per series (per shard on 1.x/2.x): a point whose field type
//! differs from what the series already holds is rejected. So every field the gateway writes
//! has exactly one type, decided here and nowhere else, and devices' legacy names are mapped
//! onto these before anything is encoded.

/// A typed field value. The type always matches the field's [`crate::fields::FieldKind`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValue {
    Int(i64),
    /// Always finite: decoders refuse NaN and ±inf (line protocol cannot carry them).
    Float(f64),
    /// Device status flags (written `true` / `false`).
    Bool(bool),
}

/// How a field's value is written in line protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Count-like vitals (beats, percent saturation, mmHg): always an integer (`72i`).
    Int,
    /// Measured quantities: always a float, even when the value is whole (`36.0`).
    Float,
    /// Device status flags (sensor off, artifact, low perfusion): `true` / `false`.
    Bool,
}

/// One canonical field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FieldSpec {
    pub name: &'static str,
    pub kind: FieldKind,
    /// Human unit, for the README table and operators.
    pub unit: &'static str,
    /// Plausible range (inclusive) for numbers from device protocols: a value outside it is a
    /// sentinel or a decoding fault, never a reading. Unused for booleans.
    pub min: f64,
    pub max: f64,
    /// IEEE 11073-10101 (MDC) codes of this quantity, the first one preferred. HL7 PCD-01
    /// observations are mapped to fields through these; one canonical table serves every
    /// protocol (protocols.md §0).
    pub mdc: &'static [u32],
}

impl FieldSpec {
    /// `v` as this field's value, when it is a finite number inside the field's range.
    /// Integers are rounded to the nearest whole number.
    pub fn number(&'static self, v: f64) -> Option<(&'static FieldSpec, FieldValue)> {
        if !v.is_finite() || v < self.min || v > self.max {
            return None;
        }
        let value = match self.kind {
            FieldKind::Int => FieldValue::Int(v.round() as i64),
            FieldKind::Float => FieldValue::Float(v),
            FieldKind::Bool => return None,
        };
        Some((self, value))
    }

    /// Whether `v` has this field's type and lies inside its range.
    pub fn accepts(&self, v: FieldValue) -> bool {
        match (self.kind, v) {
            (FieldKind::Int, FieldValue::Int(i)) => (self.min..=self.max).contains(&(i as f64)),
            (FieldKind::Float, FieldValue::Float(f)) => f.is_finite() && (self.min..=self.max).contains(&f),
            (FieldKind::Bool, FieldValue::Bool(_)) => true,
            _ => false,
        }
    }
}

const fn int(name: &'static str, unit: &'static str, max: f64, mdc: &'static [u32]) -> FieldSpec {
    FieldSpec { name, kind: FieldKind::Int, unit, min: 0.0, max, mdc }
}

const fn float(name: &'static str, unit: &'static str, min: f64, max: f64, mdc: &'static [u32]) -> FieldSpec {
    FieldSpec { name, kind: FieldKind::Float, unit, min, max, mdc }
}

const fn flag(name: &'static str) -> FieldSpec {
    FieldSpec { name, kind: FieldKind::Bool, unit: "", min: 0.0, max: 0.0, mdc: &[] }
}

/// Artifact or interference on the signal (Nonin ARTF/OOT, Masimo interference / low SIQ).
pub const ARTIFACT: FieldSpec = flag("artifact");
/// MDC_PRESS_BLD_NONINV_DIA, MDC_PRESS_CUFF_DIA.
pub const DIASTOLIC_BP: FieldSpec = int("diastolic_bp", "mmHg", 400.0, &[150022, 150302]);
/// End-tidal CO2 (Datex: et % × ambient pressure).
pub const ETCO2: FieldSpec = float("etco2", "mmHg", 0.0, 150.0, &[]);
pub const GPS_LATITUDE: FieldSpec = float("gps_latitude", "degrees", -90.0, 90.0, &[]);
pub const GPS_LONGITUDE: FieldSpec = float("gps_longitude", "degrees", -180.0, 180.0, &[]);
/// ECG heart rate (MDC_ECG_HEART_RATE). An oximeter's rate is [`PULSE_RATE`].
pub const HEART_RATE: FieldSpec = int("heart_rate", "/min", 400.0, &[147842]);
/// The device reports a low or critical battery.
pub const LOW_BATTERY: FieldSpec = flag("low_battery");
/// Low (or no) perfusion at the oximeter sensor.
pub const LOW_PERFUSION: FieldSpec = flag("low_perfusion");
/// MDC_PRESS_BLD_NONINV_MEAN, MDC_PRESS_CUFF_MEAN.
pub const MEAN_BP: FieldSpec = int("mean_bp", "mmHg", 400.0, &[150023, 150303]);
/// MDC_BLD_PERF_INDEX.
pub const PERFUSION_INDEX: FieldSpec = float("perfusion_index", "%", 0.0, 100.0, &[150488]);
/// Oximeter pulse rate: MDC_PULS_OXIM_PULS_RATE, and Philips' pleth rate (term 0x4822).
pub const PULSE_RATE: FieldSpec = int("pulse_rate", "/min", 400.0, &[149530, 149538]);
/// Masimo pleth variability index.
pub const PVI: FieldSpec = int("pvi", "%", 100.0, &[]);
/// MDC_RESP_RATE.
pub const RESP_RATE: FieldSpec = int("resp_rate", "/min", 200.0, &[151562]);
/// No sensor, sensor off the patient or finger out: the device's numbers are not valid.
pub const SENSOR_OFF: FieldSpec = flag("sensor_off");
/// Masimo carboxyhaemoglobin.
pub const SPCO: FieldSpec = float("spco", "%", 0.0, 100.0, &[]);
/// Masimo total haemoglobin.
pub const SPHB: FieldSpec = float("sphb", "g/dL", 0.0, 30.0, &[]);
/// Masimo methaemoglobin.
pub const SPMET: FieldSpec = float("spmet", "%", 0.0, 100.0, &[]);
/// MDC_PULS_OXIM_SAT_O2.
pub const SPO2: FieldSpec = int("spo2", "%", 100.0, &[150456]);
/// MDC_PRESS_BLD_NONINV_SYS, MDC_PRESS_CUFF_SYS.
pub const SYSTOLIC_BP: FieldSpec = int("systolic_bp", "mmHg", 400.0, &[150021, 150301]);
/// MDC_TEMP, MDC_TEMP_BODY, MDC_TEMP_AXIL (one field; the site is not kept).
pub const TEMPERATURE: FieldSpec = float("temperature", "°C", 0.0, 50.0, &[150344, 150364, 188496]);

/// Every field the gateway can write. Kept sorted by name so encoded points are stable.
pub const CANONICAL: &[FieldSpec] = &[
    ARTIFACT,
    DIASTOLIC_BP,
    ETCO2,
    GPS_LATITUDE,
    GPS_LONGITUDE,
    HEART_RATE,
    LOW_BATTERY,
    LOW_PERFUSION,
    MEAN_BP,
    PERFUSION_INDEX,
    PULSE_RATE,
    PVI,
    RESP_RATE,
    SENSOR_OFF,
    SPCO,
    SPHB,
    SPMET,
    SPO2,
    SYSTOLIC_BP,
    TEMPERATURE,
];

/// The canonical field of an IEEE 11073-10101 (MDC) code, if the gateway knows it.
pub fn by_mdc(code: u32) -> Option<&'static FieldSpec> {
    CANONICAL.iter().find(|f| f.mdc.contains(&code))
}

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

    #[test]
    fn mdc_codes_are_unique_and_map_back() {
        let mut all: Vec<u32> = CANONICAL.iter().flat_map(|f| f.mdc.iter().copied()).collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "an MDC code maps to two fields");
        assert_eq!(by_mdc(147842).map(|f| f.name), Some("heart_rate"));
        assert_eq!(by_mdc(150364).map(|f| f.name), Some("temperature"));
        assert!(by_mdc(1).is_none());
    }

    #[test]
    fn numbers_outside_the_range_are_refused() {
        assert_eq!(SPO2.number(97.4).map(|(_, v)| v), Some(FieldValue::Int(97)));
        assert!(SPO2.number(101.0).is_none() && SPO2.number(-1.0).is_none());
        assert!(TEMPERATURE.number(f64::NAN).is_none());
        assert_eq!(TEMPERATURE.number(36.8).map(|(_, v)| v), Some(FieldValue::Float(36.8)));
        assert!(SENSOR_OFF.number(1.0).is_none());
        assert!(SENSOR_OFF.accepts(FieldValue::Bool(true)) && !SPO2.accepts(FieldValue::Int(101)));
    }
}
