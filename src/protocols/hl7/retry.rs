//! Telling a resend from a new message: the MLLP listener answers a resend as it answered
//! the first copy and stores its readings once.

/// What tells a resend from a new message: SHA-256 over the message without MSH-7 (a sender
/// may stamp a message anew each time it sends it) and over the times of its readings. MSH-10
/// alone cannot: monitors number messages with counters that restart after a reboot or wrap,
/// and two monitors may share MSH-3. The reading times keep apart two messages alike in every
/// byte but whose readings took their time from MSH-7 or from the receipt. `msh7` is the byte
/// range of MSH-7 in `msg`, when known; without it the whole message counts (a restamped resend
/// is then stored again, which InfluxDB takes as an overwrite of the same point).
pub fn retry_key(msg: &[u8], msh7: Option<std::ops::Range<usize>>, readings: &[crate::model::Reading]) -> [u8; 32] {
    let mut d = ring::digest::Context::new(&ring::digest::SHA256);
    match msh7.filter(|r| r.start <= r.end && r.end <= msg.len()) {
        Some(r) => {
            d.update(&((msg.len() - r.len()) as u64).to_be_bytes());
            d.update(&msg[..r.start]);
            d.update(&msg[r.end..]);
        }
        None => {
            d.update(&(msg.len() as u64).to_be_bytes());
            d.update(msg);
        }
    }
    for r in readings {
        d.update(&r.ts_ns.to_be_bytes());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(d.finish().as_ref());
    key
}

#[cfg(test)]
mod tests {
    use crate::protocols::hl7::build::{Vitals, build_oru};
    use crate::protocols::hl7::testutil::decode;
    use crate::protocols::testutil::NOW;

    #[test]
    fn resends_share_a_retry_key_and_new_messages_do_not() {
        let key = |m: &str, now: i64| decode(m.as_bytes(), now).retry_key.expect("readings, so a key");
        let v = Vitals { heart_rate: Some(72), ..Default::default() };
        let text = |control: &str, time: &str, v: &Vitals| {
            String::from_utf8(build_oru("0123456789ABCDEF", control, time, time, v)).expect("utf8")
        };
        let first = text("7", "20240517103015+0000", &v);
        assert_eq!(key(&first, NOW), key(&first, NOW + 5_000_000_000), "an exact resend");
        let restamped = first.replacen("|20240517103015+0000||ORU", "|20240517103115+0000||ORU", 1);
        assert_ne!(restamped, first);
        assert_eq!(key(&restamped, NOW), key(&first, NOW), "a resend stamped anew in MSH-7");
        let reused = text("7", "20240517103115+0000", &Vitals { heart_rate: Some(80), ..Default::default() });
        assert_ne!(key(&reused, NOW), key(&first, NOW), "a new message under a control id seen before");

        // Readings that take their time from MSH-7 or from the receipt are never merged.
        let no_times = "MSH|^~\\&|MON^0123456789ABCDEF^EUI-64|A|GW|H|{msh7}||ORU^R01|7|P|2.6\r\
            OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|72|/min|||||R\r";
        let at = |msh7: &str| no_times.replace("{msh7}", msh7);
        assert_ne!(key(&at("20240517103015"), NOW), key(&at("20240517103115"), NOW));
        assert_ne!(key(&at(""), NOW), key(&at(""), NOW + 1));
        assert_eq!(key(&at(""), NOW), key(&at(""), NOW));
    }
}
