//! The MQTT 3.1.1 packets of a QoS 1 subscriber (OASIS MQTT Version 3.1.1, section 3): what
//! the gateway sends (CONNECT, SUBSCRIBE, PUBACK, PINGREQ, DISCONNECT) and what a broker sends
//! it (CONNACK, PUBLISH, SUBACK, PINGRESP). The parser takes bytes from the network as they
//! come and never panics on what it is given (`fuzz/fuzz_targets/mqtt_wire.rs`).

use bytes::{Buf, Bytes, BytesMut};

/// A packet from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    ConnAck {
        session_present: bool,
        code: u8,
    },
    Publish(Publish),
    SubAck {
        packet_id: u16,
        codes: Vec<u8>,
    },
    PingResp,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP or UNSUBACK: answers to requests a subscriber never
    /// makes. Harmless, so ignored rather than treated as an error.
    Ignored(u8),
}

impl Incoming {
    /// The MQTT packet type, for messages that must not show a packet's contents.
    pub fn kind(&self) -> u8 {
        match self {
            Incoming::ConnAck { .. } => CONNACK,
            Incoming::Publish(_) => PUBLISH,
            Incoming::SubAck { .. } => SUBACK,
            Incoming::PingResp => PINGRESP,
            Incoming::Ignored(kind) => *kind,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// 0 or 1 (a broker never delivers above the subscription's QoS 1).
    pub qos: u8,
    pub dup: bool,
    pub retain: bool,
    /// 0 for QoS 0.
    pub packet_id: u16,
    pub topic: String,
    pub payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("the remaining length of a packet is longer than 4 bytes")]
    BadLength,
    #[error("a packet of {0} bytes is larger than the {1} bytes the gateway reads")]
    TooLarge(usize, usize),
    #[error("malformed {0} packet")]
    Malformed(&'static str),
    #[error("a QoS 2 PUBLISH, though every subscription asked for QoS 1")]
    QoS2,
    #[error("packet type {0}, which a broker never sends to a client")]
    Unexpected(u8),
}

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;
const SUBACK: u8 = 9;
const UNSUBACK: u8 = 11;
const PINGRESP: u8 = 13;

/// CONNACK return codes (3.2.2.3), for the log.
pub fn connack_reason(code: u8) -> &'static str {
    match code {
        0 => "accepted",
        1 => "unacceptable protocol version",
        2 => "client identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorized",
        _ => "unknown return code",
    }
}

/// Takes one complete packet off the front of `buf`: `Ok(None)` when more bytes are needed
/// (nothing is consumed then). A packet larger than `max_packet` is an error before its body
/// arrives, so a hostile length cannot make the gateway buffer it.
pub fn parse(buf: &mut BytesMut, max_packet: usize) -> Result<Option<Incoming>, WireError> {
    let Some(&first) = buf.first() else { return Ok(None) };
    let mut len = 0usize;
    let mut header = 1;
    loop {
        let Some(&b) = buf.get(header) else { return Ok(None) };
        len |= usize::from(b & 0x7f) << (7 * (header - 1));
        header += 1;
        if b & 0x80 == 0 {
            break;
        }
        if header == 5 {
            return Err(WireError::BadLength);
        }
    }
    if header + len > max_packet {
        return Err(WireError::TooLarge(header + len, max_packet));
    }
    if buf.len() < header + len {
        buf.reserve(header + len - buf.len());
        return Ok(None);
    }
    buf.advance(header);
    let mut body = buf.split_to(len).freeze();
    let (kind, flags) = (first >> 4, first & 0x0f);
    let packet = match kind {
        CONNACK => {
            if body.len() != 2 {
                return Err(WireError::Malformed("CONNACK"));
            }
            Incoming::ConnAck { session_present: body[0] & 1 == 1, code: body[1] }
        }
        PUBLISH => {
            let qos = (flags >> 1) & 3;
            match qos {
                2 => return Err(WireError::QoS2),
                3 => return Err(WireError::Malformed("PUBLISH")),
                _ => {}
            }
            let topic_len = usize::from(take_u16(&mut body).ok_or(WireError::Malformed("PUBLISH"))?);
            if body.len() < topic_len {
                return Err(WireError::Malformed("PUBLISH"));
            }
            let topic = String::from_utf8(body.split_to(topic_len).to_vec())
                .map_err(|_| WireError::Malformed("PUBLISH (topic not UTF-8)"))?;
            let packet_id = if qos == 0 {
                0
            } else {
                match take_u16(&mut body) {
                    Some(id) if id != 0 => id,
                    _ => return Err(WireError::Malformed("PUBLISH (packet id)")),
                }
            };
            Incoming::Publish(Publish {
                qos,
                dup: flags & 8 != 0,
                retain: flags & 1 != 0,
                packet_id,
                topic,
                payload: body,
            })
        }
        SUBACK => {
            let packet_id = take_u16(&mut body).ok_or(WireError::Malformed("SUBACK"))?;
            if body.is_empty() {
                return Err(WireError::Malformed("SUBACK"));
            }
            Incoming::SubAck { packet_id, codes: body.to_vec() }
        }
        PINGRESP => Incoming::PingResp,
        PUBACK | PUBREC | PUBREL | PUBCOMP | UNSUBACK => Incoming::Ignored(kind),
        other => return Err(WireError::Unexpected(other)),
    };
    Ok(Some(packet))
}

fn take_u16(b: &mut Bytes) -> Option<u16> {
    (b.len() >= 2).then(|| b.get_u16())
}

/// Appends MQTT's variable-length "remaining length" (2.2.3).
pub fn remaining_length(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

/// Appends an MQTT string: two bytes of length, then the bytes (1.5.3).
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// What CONNECT carries besides the protocol fields.
pub struct Login<'a> {
    pub client_id: &'a str,
    pub clean_session: bool,
    pub keep_alive_secs: u16,
    pub username: Option<&'a str>,
    /// Sent only with a user name (3.1.2.9).
    pub password: Option<&'a str>,
}

pub fn connect(l: &Login<'_>) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    string(&mut body, b"MQTT");
    body.push(4); // protocol level: 3.1.1
    let mut flags = if l.clean_session { 0x02 } else { 0 };
    if l.username.is_some() {
        flags |= 0x80;
        if l.password.is_some() {
            flags |= 0x40;
        }
    }
    body.push(flags);
    body.extend_from_slice(&l.keep_alive_secs.to_be_bytes());
    string(&mut body, l.client_id.as_bytes());
    if let Some(user) = l.username {
        string(&mut body, user.as_bytes());
        if let Some(pw) = l.password {
            string(&mut body, pw.as_bytes());
        }
    }
    let mut out = vec![CONNECT << 4];
    remaining_length(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// One SUBSCRIBE for every filter, each at QoS 1.
pub fn subscribe(packet_id: u16, filters: &[String]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    for f in filters {
        string(&mut body, f.as_bytes());
        body.push(1);
    }
    let mut out = vec![0x82];
    remaining_length(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

pub fn puback(out: &mut Vec<u8>, packet_id: u16) {
    out.extend_from_slice(&[PUBACK << 4, 2]);
    out.extend_from_slice(&packet_id.to_be_bytes());
}

pub const PINGREQ: [u8; 2] = [0xc0, 0];
pub const DISCONNECT: [u8; 2] = [0xe0, 0];

/// Fuzz entry (`fuzz/fuzz_targets/mqtt_wire.rs`, `tests/fuzz_corpus.rs`): arbitrary bytes
/// parsed whole and in two pieces (cut where the first byte says) must give the same packets,
/// and a packet is only ever taken whole.
pub fn fuzz(data: &[u8]) {
    const MAX: usize = 1 << 16;
    let run = |pieces: &[&[u8]]| {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for p in pieces {
            buf.extend_from_slice(p);
            loop {
                let before = buf.len();
                match parse(&mut buf, MAX) {
                    Ok(Some(pkt)) => {
                        assert!(buf.len() < before, "a packet was returned without consuming bytes");
                        out.push(Ok(pkt));
                    }
                    Ok(None) => {
                        assert_eq!(buf.len(), before, "bytes consumed without a packet");
                        break;
                    }
                    Err(e) => {
                        out.push(Err(e));
                        return out;
                    }
                }
            }
        }
        out
    };
    let whole = run(&[data]);
    let cut = data.first().map_or(0, |b| usize::from(*b) * data.len() / 256);
    let split = run(&[&data[..cut], &data[cut..]]);
    // A split may only delay an error found in a packet's header (its length) until more
    // bytes arrive, never change a packet.
    assert_eq!(whole, split, "a split changed the packets");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish_bytes(qos: u8, topic: &str, id: u16, payload: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        string(&mut body, topic.as_bytes());
        if qos > 0 {
            body.extend_from_slice(&id.to_be_bytes());
        }
        body.extend_from_slice(payload);
        let mut out = vec![0x30 | (qos << 1)];
        remaining_length(&mut out, body.len());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn packets_are_taken_whole_from_a_stream_cut_anywhere() {
        let payload = vec![b'x'; 300]; // a two-byte remaining length
        let mut stream = vec![0x20, 2, 1, 0];
        stream.extend(publish_bytes(1, "heartguard/ABC-001/vitals", 7, &payload));
        stream.extend(publish_bytes(0, "t", 0, b"{}"));
        stream.extend([0x90, 3, 0, 1, 1, 0xd0, 0]);
        let want = vec![
            Incoming::ConnAck { session_present: true, code: 0 },
            Incoming::Publish(Publish {
                qos: 1,
                dup: false,
                retain: false,
                packet_id: 7,
                topic: "heartguard/ABC-001/vitals".into(),
                payload: Bytes::from(payload),
            }),
            Incoming::Publish(Publish {
                qos: 0,
                dup: false,
                retain: false,
                packet_id: 0,
                topic: "t".into(),
                payload: Bytes::from_static(b"{}"),
            }),
            Incoming::SubAck { packet_id: 1, codes: vec![1] },
            Incoming::PingResp,
        ];
        for cut in 0..=stream.len() {
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in [&stream[..cut], &stream[cut..]] {
                buf.extend_from_slice(piece);
                while let Some(p) = parse(&mut buf, 1024).expect("valid") {
                    got.push(p);
                }
            }
            assert_eq!(got, want, "cut at {cut}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn bad_packets_are_errors_not_panics() {
        let cases: [(&[u8], WireError); 7] = [
            (&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], WireError::BadLength),
            (&[0x30, 0xff, 0xff, 0x7f], WireError::TooLarge(2_097_155, 1024)),
            (&[0x20, 1, 0], WireError::Malformed("CONNACK")),
            (&[0x32, 3, 0, 1, b't'], WireError::Malformed("PUBLISH (packet id)")),
            (&[0x32, 5, 0, 1, b't', 0, 0], WireError::Malformed("PUBLISH (packet id)")),
            (&[0x34, 5, 0, 1, b't', 0, 1], WireError::QoS2),
            (&[0x10, 0], WireError::Unexpected(1)),
        ];
        for (bytes, want) in cases {
            let mut buf = BytesMut::from(bytes);
            assert_eq!(parse(&mut buf, 1024), Err(want), "{bytes:?}");
        }
        let mut not_utf8 = BytesMut::from(&[0x30, 4, 0, 2, 0xff, 0xfe][..]);
        assert_eq!(parse(&mut not_utf8, 1024), Err(WireError::Malformed("PUBLISH (topic not UTF-8)")));
    }

    #[test]
    fn connect_carries_the_session_flags_and_credentials() {
        let c = connect(&Login {
            client_id: "gw",
            clean_session: false,
            keep_alive_secs: 30,
            username: Some("u"),
            password: Some("p"),
        });
        assert_eq!(
            c,
            [0x10, 20, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xc0, 0, 30, 0, 2, b'g', b'w', 0, 1, b'u', 0, 1, b'p']
        );
        let anonymous = connect(&Login {
            client_id: "gw",
            clean_session: true,
            keep_alive_secs: 5,
            username: None,
            password: None,
        });
        assert_eq!(anonymous[9], 0x02);
        assert_eq!(subscribe(1, &["a/+".into()]), [0x82, 8, 0, 1, 0, 3, b'a', b'/', b'+', 1]);
        let mut acks = Vec::new();
        puback(&mut acks, 1);
        puback(&mut acks, 0x1234);
        assert_eq!(acks, [0x40, 2, 0, 1, 0x40, 2, 0x12, 0x34]);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            fuzz(&data);
        }
    }
}
