//! The receipt memory for redeliveries: a redelivered message gets the receipt time of its
//! first delivery. A reading without `ts` is stamped with it, and a message committed whose
//! PUBACK was lost comes again (DUP set, same packet id): stamped anew, it would be a second
//! point.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use crate::ingest::mqtt::wire;

/// When each packet id's last message was first received, if a reading was stamped with that
/// time, so that a redelivery of it is stamped alike. Kept across reconnects for the life of
/// the process (a crash loses it: the redelivery is then stored at its new receipt time), and
/// bounded by the 65,535 packet ids.
///
/// A PUBLISH with DUP set whose packet id, topic and payload match the message remembered
/// under that id is that message again. The broker reuses an id only once the message under
/// it is acknowledged, and any new message (DUP clear) replaces what an id remembers.
#[derive(Default)]
pub(crate) struct Receipts {
    by_id: HashMap<u16, Receipt>,
    /// Keyed per process: nobody can make two messages collide on purpose.
    hasher: RandomState,
}

#[derive(Clone, Copy)]
struct Receipt {
    /// Of the topic and payload.
    digest: u64,
    received_ns: i64,
}

impl Receipts {
    fn digest(&self, p: &wire::Publish) -> u64 {
        self.hasher.hash_one((p.topic.as_str(), &p.payload[..]))
    }

    /// The receipt time of a QoS 1 message: `now_ns`, or for a redelivery of the message
    /// remembered under its packet id, the time that message was first received. Also the
    /// digest, when it was computed.
    pub fn receive(&self, p: &wire::Publish, now_ns: i64) -> (i64, Option<u64>) {
        if !p.dup {
            return (now_ns, None);
        }
        let digest = self.digest(p);
        match self.by_id.get(&p.packet_id) {
            Some(r) if r.digest == digest => (r.received_ns, Some(digest)),
            _ => (now_ns, Some(digest)),
        }
    }

    /// Forgets every message: a new session delivers none of the old one again.
    pub fn clear(&mut self) {
        self.by_id.clear();
    }

    /// Remembers the message's receipt if a reading was stamped with it; otherwise forgets the
    /// message the packet id held before (a redelivery of this one needs no time of ours).
    pub fn remember(&mut self, p: &wire::Publish, received_ns: i64, digest: Option<u64>, stamped: bool) {
        if stamped {
            let digest = digest.unwrap_or_else(|| self.digest(p));
            self.by_id.insert(p.packet_id, Receipt { digest, received_ns });
        } else {
            self.by_id.remove(&p.packet_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(id: u16, dup: bool, payload: &'static [u8]) -> wire::Publish {
        wire::Publish {
            qos: 1,
            dup,
            retain: false,
            packet_id: id,
            topic: "devices/A/vitals".into(),
            payload: bytes::Bytes::from_static(payload),
        }
    }

    /// `receive`, then `remember` as `publish` does for a message whose readings have no `ts`.
    fn stamp(r: &mut Receipts, p: &wire::Publish, now: i64) -> i64 {
        let (t, digest) = r.receive(p, now);
        r.remember(p, t, digest, true);
        t
    }

    #[test]
    fn a_redelivery_gets_the_first_receipt_time_and_nothing_else_does() {
        let mut r = Receipts::default();
        assert_eq!(stamp(&mut r, &publish(7, false, b"{\"hr\":1}"), 100), 100);
        assert_eq!(stamp(&mut r, &publish(7, true, b"{\"hr\":1}"), 200), 100, "the same message again");
        assert_eq!(stamp(&mut r, &publish(7, true, b"{\"hr\":2}"), 300), 300, "another payload under the id");
        assert_eq!(stamp(&mut r, &publish(7, true, b"{\"hr\":2}"), 400), 300);
        assert_eq!(stamp(&mut r, &publish(8, true, b"{\"hr\":2}"), 500), 500, "another id");
        // A new message under the id replaces the one remembered, even with the same payload.
        assert_eq!(stamp(&mut r, &publish(7, false, b"{\"hr\":2}"), 600), 600);
        assert_eq!(stamp(&mut r, &publish(7, true, b"{\"hr\":2}"), 700), 600);
        // A message with its own `ts` leaves nothing to remember under its id.
        let p = publish(7, false, b"{\"hr\":2}");
        let (t, digest) = r.receive(&p, 800);
        r.remember(&p, t, digest, false);
        assert_eq!(stamp(&mut r, &publish(7, true, b"{\"hr\":2}"), 900), 900);
    }
}
