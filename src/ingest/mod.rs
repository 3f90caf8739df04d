//! Ingest: sources hand decoded readings to the intake stage, which resolves them, commits
//! them to the queue and only then acknowledges them to their source.
//!
//! ```text
//! source ──Envelope{readings, ack}──► intake: resolve + encode ─► queue.append (commit) ─► ack, in order
//! ```
//! Shutdown flows with the data: when every source has dropped its sender, intake commits what
//! it holds, acknowledges it and returns.
//!
//! Parts:
//! - the sources: [`mqtt`] (QoS 1 messages of a persistent session), [`serial`] (bedside
//!   devices on serial ports), [`mllp`] (HL7 v2 over TCP);
//! - [`intake`]: batches, resolution, the commit, and the acknowledgements after it;
//! - [`parking`]: readings committed without a binding, resolved once one covers them.
//!
//! This file holds what every source shares: the [`Envelope`] it hands to intake and the
//! [`Ack`] that tells it its message is safely stored.

pub mod intake;
pub mod mllp;
pub mod mqtt;
pub mod parking;
pub mod serial;

use crate::ingest::mqtt::ack::MqttAck;
use crate::model::Reading;

/// What a source hands to intake: the readings of one message and how to acknowledge it.
pub struct Envelope {
    pub readings: Vec<Reading>,
    /// `None` for sources without acknowledgement; a message that yielded no reading still
    /// carries its ack, so acknowledgements stay in arrival order.
    pub ack: Option<Ack>,
}

/// How to tell a source that its message is safely committed.
pub enum Ack {
    /// A QoS 1 MQTT message, acknowledged on the connection it came in on.
    Mqtt(MqttAck),
    /// An HL7 message over MLLP: its connection writes the ACK once this fires.
    Mllp(tokio::sync::oneshot::Sender<()>),
}

impl Ack {
    pub fn send(self) {
        match self {
            Ack::Mqtt(ack) => ack.send(),
            // The connection may be gone; its sender then resends the message.
            Ack::Mllp(done) => {
                let _ = done.send(());
            }
        }
    }
}
