//! Which canonical field an observation's OBX-3 names, and the units its OBX-6 may give
//! (module docs of [`super`], "Values"). [`convert`] is a table of unit codes per field unit,
//! clearer whole.

use super::message::{Delims, part};
use crate::fields::{self, FieldSpec};

/// MDC reference ids the gateway knows, for OBX-3 rows that name the code only.
const MDC_NAMES: &[(&str, u32)] = &[
    ("MDC_ECG_HEART_RATE", 147842),
    ("MDC_PULS_OXIM_SAT_O2", 150456),
    ("MDC_PULS_OXIM_PULS_RATE", 149530),
    ("MDC_BLD_PERF_INDEX", 150488),
    ("MDC_PRESS_BLD_NONINV_SYS", 150021),
    ("MDC_PRESS_BLD_NONINV_DIA", 150022),
    ("MDC_PRESS_BLD_NONINV_MEAN", 150023),
    ("MDC_PRESS_CUFF_SYS", 150301),
    ("MDC_PRESS_CUFF_DIA", 150302),
    ("MDC_PRESS_CUFF_MEAN", 150303),
    ("MDC_TEMP", 150344),
    ("MDC_TEMP_BODY", 150364),
    ("MDC_TEMP_AXIL", 188496),
    ("MDC_RESP_RATE", 151562),
];

/// The canonical field of an OBX-3 value.
pub(super) fn field_of(obx3: &str, d: Delims) -> Option<&'static FieldSpec> {
    let c = |i| part(obx3, d.component, i).trim();
    for (code, name, system) in [(c(0), c(1), c(2)), (c(3), c(4), c(5))] {
        if !system.is_empty() && system != "MDC" {
            continue;
        }
        if let Some(f) = code.parse::<u32>().ok().and_then(fields::by_mdc) {
            return Some(f);
        }
        if let Some((_, code)) = MDC_NAMES.iter().find(|(n, _)| *n == name) {
            return fields::by_mdc(*code);
        }
    }
    None
}

/// Converts `v` in the OBX-6 unit to the field's unit; `None` when the unit is not one the
/// field can be given in. An empty unit is taken as the field's own.
pub(super) fn convert(spec: &FieldSpec, v: f64, obx6: &str, d: Delims) -> Option<f64> {
    let unit = part(obx6, d.component, 0).trim();
    let name = part(obx6, d.component, 1).trim();
    if unit.is_empty() && name.is_empty() {
        return Some(v);
    }
    let is = |codes: &[&str]| codes.contains(&unit) || codes.contains(&name);
    match spec.unit {
        "/min"
            if is(&[
                "264864",
                "264928",
                "/min",
                "{beats}/min",
                "{beat}/min",
                "{breaths}/min",
                "{resp}/min",
                "bpm",
                "MDC_DIM_BEAT_PER_MIN",
                "MDC_DIM_RESP_PER_MIN",
            ]) =>
        {
            Some(v)
        }
        "%" if is(&["262688", "%", "MDC_DIM_PERCENT"]) => Some(v),
        "mmHg" if is(&["266016", "mm[Hg]", "mmHg", "MDC_DIM_MMHG"]) => Some(v),
        "°C" if is(&["268192", "Cel", "°C", "degC", "MDC_DIM_DEGC"]) => Some(v),
        "°C" if is(&["266560", "[degF]", "degF", "MDC_DIM_FAHR"]) => Some((v - 32.0) * 5.0 / 9.0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use crate::fields::FieldValue;
    use crate::protocols::hl7::ack::AckCode;
    use crate::protocols::hl7::testutil::{T_VITALS, decode};
    use crate::protocols::testutil::NOW;
    use crate::protocols::testutil::field;

    #[test]
    fn sentinels_units_and_dialects() {
        let msg = "MSH|^~\\&|CMS^00A0B1FFFEC2D3E4^EUI-64|M|GW|H|20240517103015+0800||ORU^R01^ORU_R01|X9|P|2.6\r\
            OBR|1||||||20240517103015+0800\r\
            OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|-999|/min|||||R\r\
            OBX|2|NM|8867-4^Heart rate^LN^149530^MDC_PULS_OXIM_PULS_RATE^MDC|1.2.1.2|88|{beats}/min^^UCUM|||||F\r\
            OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1||%|||||X\r\
            OBX|4|NM|^MDC_TEMP^MDC|1.4.1.1|98.6|[degF]^^UCUM|||||F\r\
            OBX|5|NM|150301^MDC_PRESS_CUFF_SYS^MDC|1.3.1.1|118|mm[Hg]^^UCUM|||||F\r\
            OBX|6|NM|150302^MDC_PRESS_CUFF_DIA^MDC|1.3.1.2|76|kPa^^UCUM|||||F\r\
            OBX|7|NM|151562^MDC_RESP_RATE^MDC|1.5.1.1|NaN|/min|||||F\r";
        let m = decode(msg.as_bytes(), NOW);
        assert_eq!(m.ack, AckCode::Accept);
        let r = &m.decoded.readings[0];
        assert_eq!(r.serial, "00A0B1FFFEC2D3E4", "EUI-64 from MSH-3");
        assert_eq!(r.ts_ns, T_VITALS - 8 * 3600 * 1_000_000_000, "+0800 offset, time from OBR-7");
        assert_eq!(field(r, "heart_rate"), None, "-999 sentinel");
        assert_eq!(field(r, "pulse_rate"), Some(FieldValue::Int(88)), "LOINC first, MDC alternate");
        assert_eq!(field(r, "spo2"), None, "OBX-11 X");
        assert!(matches!(field(r, "temperature"), Some(FieldValue::Float(t)) if (t - 37.0).abs() < 1e-9));
        assert_eq!(field(r, "systolic_bp"), Some(FieldValue::Int(118)), "cuff variant code");
        assert_eq!(field(r, "diastolic_bp"), None, "kPa is not converted");
        assert_eq!(field(r, "resp_rate"), None);
        assert_eq!(m.decoded.dropped_fields, 3);
    }
}
