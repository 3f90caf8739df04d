//! ORU^R01 messages for the simulator and the tests.

/// Values for [`build_oru`].
#[derive(Debug, Clone, Default)]
pub struct Vitals {
    pub heart_rate: Option<u16>,
    pub spo2: Option<u8>,
    pub pulse_rate: Option<u16>,
    pub nibp: Option<(u16, u16, u16)>,
    pub temperature: Option<f64>,
    pub resp_rate: Option<u16>,
}

/// A PCD-01 ORU^R01 message in the shape of the worked example, for the simulator and
/// tests. `time` and `nibp_time` are HL7 times. No patient data: PID carries nothing.
pub fn build_oru(eui64: &str, control_id: &str, time: &str, nibp_time: &str, v: &Vitals) -> Vec<u8> {
    let mut s = format!(
        "MSH|^~\\&|MON^{eui64}^EUI-64|ACME|GW|HOSP|{time}||ORU^R01^ORU_R01|{control_id}|P|2.6|||NE|AL||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO\r\
         PID|||\r\
         OBR|1|{control_id}^MON^{eui64}^EUI-64|{control_id}^MON^{eui64}^EUI-64|182777000^monitoring of patient^SCT|||{time}\r\
         OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||{eui64}^ACME_MON^{eui64}^EUI-64\r"
    );
    let mut n = 1;
    let mut obx = |code: &str, sub: &str, value: String, unit: &str, t: &str| {
        n += 1;
        s.push_str(&format!("OBX|{n}|NM|{code}^MDC|{sub}|{value}|{unit}^MDC|||||R|||{t}\r"));
    };
    if let Some(x) = v.heart_rate {
        obx("147842^MDC_ECG_HEART_RATE", "1.1.1.1", x.to_string(), "264864^MDC_DIM_BEAT_PER_MIN", time);
    }
    if let Some(x) = v.spo2 {
        obx("150456^MDC_PULS_OXIM_SAT_O2", "1.2.1.1", x.to_string(), "262688^MDC_DIM_PERCENT", time);
    }
    if let Some(x) = v.pulse_rate {
        obx("149530^MDC_PULS_OXIM_PULS_RATE", "1.2.1.2", x.to_string(), "264864^MDC_DIM_BEAT_PER_MIN", time);
    }
    if let Some((sys, dia, mean)) = v.nibp {
        obx("150021^MDC_PRESS_BLD_NONINV_SYS", "1.3.1.1", sys.to_string(), "266016^MDC_DIM_MMHG", nibp_time);
        obx("150022^MDC_PRESS_BLD_NONINV_DIA", "1.3.1.2", dia.to_string(), "266016^MDC_DIM_MMHG", nibp_time);
        obx("150023^MDC_PRESS_BLD_NONINV_MEAN", "1.3.1.3", mean.to_string(), "266016^MDC_DIM_MMHG", nibp_time);
    }
    if let Some(x) = v.temperature {
        obx("150364^MDC_TEMP_BODY", "1.4.1.1", format!("{x:.1}"), "268192^MDC_DIM_DEGC", time);
    }
    if let Some(x) = v.resp_rate {
        obx("151562^MDC_RESP_RATE", "1.5.1.1", x.to_string(), "264928^MDC_DIM_RESP_PER_MIN", time);
    }
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::FieldValue;
    use crate::protocols::hl7::ack::AckCode;
    use crate::protocols::hl7::testutil::{T_NIBP, T_VITALS, at, decode};
    use crate::protocols::testutil::NOW;
    use crate::protocols::testutil::field;

    #[test]
    fn built_messages_round_trip() {
        let v = Vitals {
            heart_rate: Some(130),
            spo2: Some(95),
            pulse_rate: Some(129),
            nibp: Some((121, 79, 93)),
            temperature: Some(37.2),
            resp_rate: Some(18),
        };
        let m = decode(&build_oru("0123456789ABCDEF", "C7", "20240517103015+0000", "20240517102900+0000", &v), NOW);
        assert_eq!(m.ack, AckCode::Accept);
        let r = at(&m.decoded.readings, T_VITALS);
        assert_eq!(field(r, "heart_rate"), Some(FieldValue::Int(130)));
        assert_eq!(field(r, "resp_rate"), Some(FieldValue::Int(18)));
        assert_eq!(field(at(&m.decoded.readings, T_NIBP), "mean_bp"), Some(FieldValue::Int(93)));
    }
}
