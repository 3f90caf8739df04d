//! The worked example of the module docs and helpers the HL7 tests share.

use super::decode::{Message, decode_message};
use super::time::Zone;
use crate::decode::Now;
use crate::model::Reading;

pub const EXAMPLE: &[&str] = &[
    "MSH|^~\\&|MON^0123456789ABCDEF^EUI-64|ACME|GW|HOSP|20240517103015+0000||ORU^R01^ORU_R01|MSG00001|P|2.6|||NE|AL||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO",
    "PID|||12345^^^HOSP^MR||DOE^JOHN^^^^^L",
    "PV1||I|ICU^^BED12",
    "OBR|1|MSG00001^MON^0123456789ABCDEF^EUI-64|MSG00001^MON^0123456789ABCDEF^EUI-64|182777000^monitoring of patient^SCT|||20240517103015+0000",
    "OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||0123456789ABCDEF^ACME_MON^0123456789ABCDEF^EUI-64",
    "OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|72|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R|||20240517103015+0000",
    "OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|97|262688^MDC_DIM_PERCENT^MDC|||||R|||20240517103015+0000",
    "OBX|4|NM|149530^MDC_PULS_OXIM_PULS_RATE^MDC|1.2.1.2|71|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R|||20240517103015+0000",
    "OBX|5|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.3.1.1|120|266016^MDC_DIM_MMHG^MDC|||||R|||20240517102900+0000",
    "OBX|6|NM|150022^MDC_PRESS_BLD_NONINV_DIA^MDC|1.3.1.2|80|266016^MDC_DIM_MMHG^MDC|||||R|||20240517102900+0000",
    "OBX|7|NM|150023^MDC_PRESS_BLD_NONINV_MEAN^MDC|1.3.1.3|93|266016^MDC_DIM_MMHG^MDC|||||R|||20240517102900+0000",
    "OBX|8|NM|150364^MDC_TEMP_BODY^MDC|1.4.1.1|36.8|268192^MDC_DIM_DEGC^MDC|||||R|||20240517103015+0000",
];
pub const T_VITALS: i64 = 1_715_941_815_000_000_000; // 2024-05-17T10:30:15Z
pub const T_NIBP: i64 = 1_715_941_740_000_000_000; // 2024-05-17T10:29:00Z

/// Decodes as received at `ns`, times without offset in UTC, a 2 min clock tolerance.
pub fn decode(msg: &[u8], ns: i64) -> Message {
    decode_message(msg, now(ns), Zone::utc())
}

pub fn now(ns: i64) -> Now {
    Now { ns, future_tolerance_ns: 120_000_000_000 }
}

pub fn example() -> Vec<u8> {
    EXAMPLE.iter().flat_map(|s| s.bytes().chain([b'\r'])).collect()
}

pub fn at(readings: &[Reading], ts: i64) -> &Reading {
    readings.iter().find(|r| r.ts_ns == ts).expect("reading at that time")
}
