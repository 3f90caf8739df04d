//! The MQTT reader's side of pushes: every message of the push topic is taken at once, so
//! that none waits for a place in a channel while holding one of the broker's in-flight
//! slots. A refused message is acknowledged now; an authenticated one waits in the [`Slot`].
//! Refusals of both stages are counted and logged by [`refuse`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use super::envelope::{Authenticated, authenticate};
use super::refused::Refused;
use crate::ingest::mqtt::ack::{MqttAck, TopicHandler};
use crate::telemetry::Counters;
use crate::telemetry::logging::RateLimited;

/// Refusals of one reason are logged at most this often (they are all counted).
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Counts a refusal and logs it, at most every [`REFUSAL_LOG_EVERY`] per reason.
pub fn refuse(why: &Refused, counters: &Counters, log: &Mutex<RateLimited>) {
    counters.push_refused(why.label());
    if !log.lock().unwrap_or_else(|e| e.into_inner()).allow(why.label()) {
        return;
    }
    if let Refused::Superseded { .. } = why {
        info!(reason = why.label(), detail = %why, "A signed binding snapshot gave way to a newer one; only the newest waiting is applied (counted; logged at most every 10 s).");
    } else {
        warn!(reason = why.label(), detail = %why, "Refused a pushed binding snapshot; the bindings in force stay (counted; logged at most every 10 s per reason).");
    }
}

/// An authenticated snapshot and how to acknowledge its message.
pub struct PushMsg {
    pub auth: Authenticated,
    pub ack: Option<MqttAck>,
}

/// Sends its acknowledgement when dropped: a message the push task took is acknowledged
/// whatever happens to it (refused, applied, failed to apply). A retained snapshot comes back
/// with the next subscription anyway.
pub struct AckOnDrop(pub Option<MqttAck>);

impl Drop for AckOnDrop {
    fn drop(&mut self) {
        if let Some(ack) = self.0.take() {
            ack.send();
        }
    }
}

fn send(ack: Option<MqttAck>) {
    drop(AckOnDrop(ack));
}

/// The one authenticated snapshot waiting for the push task: the highest version offered.
#[derive(Default)]
pub struct Slot {
    waiting: Mutex<Option<PushMsg>>,
    ready: tokio::sync::Notify,
}

impl Slot {
    /// Keeps the higher version of `msg` and the one waiting, `msg` on a tie (a redelivery
    /// after a reconnect: only its acknowledgement can still reach the broker); returns the
    /// other, which nobody will apply, with the version kept.
    pub fn offer(&self, msg: PushMsg) -> Option<(PushMsg, u64)> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let loser = match waiting.take() {
            Some(w) if w.auth.snapshot.version > msg.auth.snapshot.version => {
                let kept = w.auth.snapshot.version;
                *waiting = Some(w);
                Some((msg, kept))
            }
            w => {
                let kept = msg.auth.snapshot.version;
                *waiting = Some(msg);
                w.map(|w| (w, kept))
            }
        };
        drop(waiting);
        self.ready.notify_one();
        loser
    }

    /// Waits for a snapshot and takes it.
    pub async fn take(&self) -> PushMsg {
        loop {
            if let Some(m) = self.waiting.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return m;
            }
            // `notify_one` leaves a permit when nobody waits, so an offer made between the
            // check above and this wait is not missed.
            self.ready.notified().await;
        }
    }
}

/// The push topic's handler in the MQTT source.
pub struct Inbox {
    pub topic: String,
    trusted: Vec<String>,
    slot: Arc<Slot>,
    counters: Arc<Counters>,
    log: Mutex<RateLimited>,
}

impl Inbox {
    pub fn new(topic: String, trusted: Vec<String>, slot: Arc<Slot>, counters: Arc<Counters>) -> Self {
        Self { topic, trusted, slot, counters, log: Mutex::new(RateLimited::new(REFUSAL_LOG_EVERY)) }
    }
}

impl TopicHandler for Inbox {
    fn topic(&self) -> &str {
        &self.topic
    }

    /// Authenticates one message: refused, it is acknowledged now; authenticated, it waits in
    /// the slot (and whichever snapshot it displaces is acknowledged now).
    fn take(&self, payload: &[u8], ack: Option<MqttAck>) {
        match authenticate(payload, &self.trusted) {
            Err(why) => {
                refuse(&why, &self.counters, &self.log);
                send(ack);
            }
            Ok(auth) => {
                if let Some((loser, by)) = self.slot.offer(PushMsg { auth, ack }) {
                    refuse(&Refused::Superseded { got: loser.auth.snapshot.version, by }, &self.counters, &self.log);
                    send(loser.ack);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::push::envelope::{Snapshot, generate_key, sign};
    use crate::bindings::push::topic;

    fn snapshot(version: u64, gateway: &str) -> Snapshot {
        Snapshot { gateway: gateway.into(), version, created_at: "2026-11-28T00:00:00Z".into(), bindings: vec![] }
    }

    /// An acknowledgement whose PUBACK can be seen.
    fn ack() -> (Option<MqttAck>, tokio::sync::mpsc::UnboundedReceiver<crate::ingest::mqtt::writer::Out>) {
        let (ack, rx) = MqttAck::observed(1);
        (Some(ack), rx)
    }

    #[tokio::test]
    async fn the_inbox_acknowledges_everything_but_the_highest_snapshot_waiting() {
        let (private, public) = generate_key().expect("key");
        let (stranger, _) = generate_key().expect("key");
        let counters = Arc::new(Counters::default());
        let slot = Arc::new(Slot::default());
        let inbox = Inbox::new(topic("gw"), vec![public], slot.clone(), counters.clone());
        let signed = |v: u64, key: &str| sign(&snapshot(v, "gw"), key).expect("sign").into_bytes();
        let mut acks = Vec::new();
        for payload in [
            b"junk".to_vec(),
            signed(10, &private),
            signed(11, &stranger),
            signed(30, &private),
            b"{}".to_vec(),
            signed(20, &private),
        ] {
            let (a, rx) = ack();
            inbox.take(&payload, a);
            acks.push(rx);
        }
        // v10 was acknowledged when v30 replaced it; v20 at once, being older than v30.
        let waiting: Vec<usize> =
            acks.iter_mut().enumerate().filter_map(|(i, rx)| rx.try_recv().is_err().then_some(i)).collect();
        assert_eq!(waiting, [3], "only v30 holds its message");
        assert_eq!(slot.take().await.auth.snapshot.version, 30);
        let refused = counters.push_refused_by_reason();
        assert_eq!(refused, [("malformed", 2), ("superseded", 2), ("untrusted_key", 1)]);
    }
}
