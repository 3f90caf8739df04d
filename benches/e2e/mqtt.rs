//! The smallest MQTT 3.1.1 client the benchmark needs: CONNECT, QoS 1 PUBLISH and its PUBACK,
//! SUBSCRIBE, on the gateway's own packet encoders (`ingest::mqtt::wire`). Not rumqttc, so
//! that the load generator and the counting subscriber cost as little CPU as possible on a
//! machine they share with the broker, the database and the gateway: what they cost is CPU
//! the measured parties lose.

use std::io;

pub use heartguard_gateway::ingest::mqtt::wire::puback;
use heartguard_gateway::ingest::mqtt::wire::{self, remaining_length, string};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const SUBACK: u8 = 9;

pub fn connect(client_id: &str, clean_session: bool, keep_alive_secs: u16) -> Vec<u8> {
    wire::connect(&wire::Login { client_id, clean_session, keep_alive_secs, username: None, password: None })
}

/// Appends one QoS 1 PUBLISH.
pub fn publish_qos1(out: &mut Vec<u8>, topic: &[u8], packet_id: u16, payload: &[u8]) {
    out.push(0x32);
    remaining_length(out, 2 + topic.len() + 2 + payload.len());
    string(out, topic);
    out.extend_from_slice(&packet_id.to_be_bytes());
    out.extend_from_slice(payload);
}

/// SUBSCRIBE to one filter at QoS 1.
pub fn subscribe(packet_id: u16, filter: &str) -> Vec<u8> {
    wire::subscribe(packet_id, &[filter.to_owned()])
}

/// Packet ids 1..=65535, wrapping (0 is not a valid id).
pub fn next_packet_id(id: &mut u16) -> u16 {
    *id = id.wrapping_add(1);
    if *id == 0 {
        *id = 1;
    }
    *id
}

/// Splits a byte stream into packets. `handle` gets each packet's type (the high nibble of
/// its first byte), its flags (the low nibble) and its body.
pub struct Reader {
    buf: Vec<u8>,
    start: usize,
}

impl Reader {
    pub fn new() -> Self {
        Reader { buf: Vec::with_capacity(64 * 1024), start: 0 }
    }

    /// Reads once from `r` and hands every complete packet to `handle`. Returns false at
    /// end of stream.
    pub async fn read_some<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        mut handle: impl FnMut(u8, u8, &[u8]),
    ) -> io::Result<bool> {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + 64 * 1024, 0);
        let n = r.read(&mut self.buf[len..]).await?;
        self.buf.truncate(len + n);
        if n == 0 {
            return Ok(false);
        }
        loop {
            let avail = &self.buf[self.start..];
            if avail.len() < 2 {
                break;
            }
            let (mut body_len, mut shift, mut i) = (0usize, 0u32, 1usize);
            let complete_header = loop {
                let Some(&b) = avail.get(i) else { break false };
                body_len |= ((b & 0x7f) as usize) << shift;
                i += 1;
                if b & 0x80 == 0 {
                    break true;
                }
                shift += 7;
                if shift > 21 {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "malformed remaining length"));
                }
            };
            if !complete_header || avail.len() < i + body_len {
                break;
            }
            handle(avail[0] >> 4, avail[0] & 0x0f, &avail[i..i + body_len]);
            self.start += i + body_len;
        }
        Ok(true)
    }
}

/// The packet id of a QoS 1 PUBLISH body.
pub fn publish_packet_id(body: &[u8]) -> Option<u16> {
    let topic_len = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    let at = 2 + topic_len;
    Some(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]))
}
