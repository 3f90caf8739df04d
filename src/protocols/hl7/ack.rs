//! Original-mode acknowledgements (module docs of [`super`], "ACK").

use super::message::Header;
use super::mllp::frame_mllp;

/// MSA-1 acknowledgement codes (original mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Accepted: the readings are committed (or there was nothing to store).
    Accept,
    /// Error: the message was understood but is wrong; the sender may retry.
    Error,
    /// Reject: retrying the same message cannot help.
    Reject,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "AA",
            Self::Error => "AE",
            Self::Reject => "AR",
        }
    }
}

/// An original-mode ACK for `header` (or for an unreadable message), MLLP-framed.
/// `control_id` is the ACK's own MSH-10; `time` its MSH-7 (`YYYYMMDDHHMMSS+ZZZZ`).
pub fn build_ack(
    header: Option<&Header>,
    code: AckCode,
    reason: Option<&str>,
    control_id: &str,
    time: &str,
) -> Vec<u8> {
    let empty = Header::default();
    let h = header.unwrap_or(&empty);
    let version = if h.version.is_empty() { "2.6" } else { h.version.as_str() };
    let processing = if h.processing_id.is_empty() { "P" } else { h.processing_id.as_str() };
    let mut msg = format!(
        "MSH|^~\\&|{}|{}|{}|{}|{time}||ACK^R01^ACK|{control_id}|{processing}|{version}\rMSA|{}|{}",
        h.receiving_app,
        h.receiving_facility,
        h.sending_app,
        h.sending_facility,
        code.as_str(),
        h.control_id,
    );
    if let Some(r) = reason {
        msg.push('|');
        msg.push_str(r);
    }
    msg.push('\r');
    frame_mllp(msg.as_bytes())
}

/// Reads the MSA segment of an ACK: (code, MSA-2 control id). For the simulator and tests.
pub fn parse_ack(msg: &[u8]) -> Option<(String, String)> {
    let text = String::from_utf8_lossy(msg);
    let msa = text.split(['\r', '\n']).find(|s| s.starts_with("MSA"))?;
    let f: Vec<&str> = msa.split('|').collect();
    Some((f.get(1)?.to_string(), f.get(2).unwrap_or(&"").to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::hl7::testutil::{decode, example};
    use crate::protocols::testutil::NOW;

    #[test]
    fn ack_is_byte_exact() {
        let m = decode(&example(), NOW);
        let ack = build_ack(m.header.as_ref(), AckCode::Accept, None, "ACK00001", "20240517103016+0000");
        let expected = b"\x0bMSH|^~\\&|GW|HOSP|MON^0123456789ABCDEF^EUI-64|ACME|20240517103016+0000||ACK^R01^ACK|ACK00001|P|2.6\rMSA|AA|MSG00001\r\x1c\r";
        assert_eq!(String::from_utf8_lossy(&ack), String::from_utf8_lossy(expected));
        assert_eq!(ack.len(), 117);
        assert_eq!(parse_ack(&ack[1..ack.len() - 2]), Some(("AA".into(), "MSG00001".into())));
    }
}
