//! Acknowledgements of QoS 1 messages: each bound to the connection its message came in on,
//! handed to that connection's writer (`writer`) and never to another. After a
//! reconnect the broker may give a freed packet id to a new message; an old acknowledgement
//! sent on the new connection could acknowledge a message not yet committed. One that is
//! dropped only costs a redelivery.

use tokio::sync::mpsc;
use tracing::debug;

use crate::ingest::mqtt::writer::Out;

/// The acknowledgement of one QoS 1 message, bound to the connection it arrived on.
pub struct MqttAck {
    out: mpsc::UnboundedSender<Out>,
    packet_id: u16,
}

/// The messages of one topic that carry no readings (the signed binding pushes): the source
/// hands each, with its acknowledgement, to the handler of that topic and reads on. The
/// handler decides when to acknowledge; it must not hold the reader up.
pub trait TopicHandler: Send + Sync {
    /// The topic, exactly (no wildcards); it is subscribed to beside the readings' topics.
    fn topic(&self) -> &str;
    /// Takes one message (`ack` is `None` at QoS 0). Dropping the acknowledgement unsent
    /// has the broker deliver the message again after the next reconnect.
    fn take(&self, payload: &[u8], ack: Option<MqttAck>);
}

impl MqttAck {
    /// The acknowledgement of message `packet_id`, to be written by the writer behind `out`.
    pub(crate) fn new(out: mpsc::UnboundedSender<Out>, packet_id: u16) -> Self {
        Self { out, packet_id }
    }

    /// An acknowledgement whose PUBACK shows up on the returned receiver, for tests of what
    /// acknowledges when.
    #[cfg(test)]
    pub(crate) fn observed(packet_id: u16) -> (Self, mpsc::UnboundedReceiver<Out>) {
        let (out, rx) = mpsc::unbounded_channel();
        (Self { out, packet_id }, rx)
    }

    /// Queues the PUBACK; the writer sends what has gathered in one write. If the connection
    /// is gone, nothing is sent and the broker redelivers the message.
    pub fn send(self) {
        if self.out.send(Out::Ack(self.packet_id)).is_err() {
            debug!("MQTT acknowledgement not sent (connection gone); the broker will redeliver.");
        }
    }
}

/// The acknowledgements of one commit, handed to each connection's writer as one message:
/// one wake-up and one write per commit, however the runtime schedules the writer.
#[derive(Default)]
pub struct AckBatch {
    current: Option<(mpsc::UnboundedSender<Out>, Vec<u16>)>,
}

impl AckBatch {
    pub fn push(&mut self, ack: MqttAck) {
        match &mut self.current {
            Some((out, ids)) if out.same_channel(&ack.out) => ids.push(ack.packet_id),
            _ => {
                self.send();
                self.current = Some((ack.out, vec![ack.packet_id]));
            }
        }
    }

    /// Sends what was pushed (also done on drop).
    pub fn send(&mut self) {
        if let Some((out, ids)) = self.current.take()
            && out.send(Out::Acks(ids)).is_err()
        {
            debug!("MQTT acknowledgements not sent (connection gone); the broker will redeliver.");
        }
    }
}

impl Drop for AckBatch {
    fn drop(&mut self) {
        self.send();
    }
}
