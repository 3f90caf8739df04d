//! Decoding of a PUBLISH: a message of the topic handler's topic goes to the handler; any
//! other is decoded (JSON) into an envelope for intake, with the acknowledgement of its
//! connection. A QoS 1 message is stamped with its receipt time, the first one for a
//! redelivery ([`Receipts`]).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use crate::decode::json;
use crate::ingest::mqtt::ack::{MqttAck, TopicHandler};
use crate::ingest::mqtt::config::TopicPattern;
use crate::ingest::mqtt::receipts::Receipts;
use crate::ingest::mqtt::wire;
use crate::ingest::mqtt::writer::Out;
use crate::ingest::{Ack, Envelope};
use crate::model::loggable;
use crate::telemetry::logging::RateLimited;
use crate::telemetry::{Counters, PROTOCOL_JSON, SourceCounters};

/// Turns the PUBLISH packets of every session into envelopes; kept for the life of the
/// source, so that its receipt memory outlives reconnects.
pub(crate) struct Publishes {
    /// Takes the messages of its topic (the signed binding pushes, when enabled).
    pub handler: Option<Arc<dyn TopicHandler>>,
    patterns: Vec<TopicPattern>,
    max_payload: usize,
    counters: Arc<Counters>,
    /// Messages, readings and rejections of the `mqtt`/`json` source.
    stats: Arc<SourceCounters>,
    reject_log: RateLimited,
    receipts: Receipts,
}

impl Publishes {
    pub fn new(
        patterns: Vec<TopicPattern>,
        max_payload: usize,
        counters: Arc<Counters>,
        stats: Arc<SourceCounters>,
    ) -> Self {
        Self {
            handler: None,
            patterns,
            max_payload,
            counters,
            stats,
            reject_log: RateLimited::new(Duration::from_secs(10)),
            receipts: Receipts::default(),
        }
    }

    /// The topic filters to subscribe to: the readings' and the handler's.
    pub fn filters(&self) -> Vec<String> {
        let mut f: Vec<String> = self.patterns.iter().map(|p| p.filter.clone()).collect();
        if let Some(h) = &self.handler {
            f.push(h.topic().to_owned());
        }
        f
    }

    /// A new session: nothing of the old one will be delivered again.
    pub fn new_session(&mut self) {
        self.receipts.clear();
    }

    /// A PUBLISH: one of the handler's topic goes to it, anything else is decoded into an
    /// envelope for intake.
    pub fn publish(&mut self, p: wire::Publish, out: &mpsc::UnboundedSender<Out>) -> Option<Envelope> {
        let ack = (p.qos > 0).then(|| MqttAck::new(out.clone(), p.packet_id));
        if let Some(h) = &self.handler
            && h.topic() == p.topic
        {
            h.take(&p.payload, ack);
            return None;
        }
        let ack = ack.map(Ack::Mqtt);
        if p.qos == 0 {
            return Some(self.decode(&p.topic, &p.payload, ack, crate::now_ns()));
        }
        let (received_ns, digest) = self.receipts.receive(&p, crate::now_ns());
        let env = self.decode(&p.topic, &p.payload, ack, received_ns);
        // A device's own `ts` equal to the receipt time to the nanosecond only costs an entry.
        let stamped = env.readings.iter().any(|r| r.ts_ns == received_ns);
        self.receipts.remember(&p, received_ns, digest, stamped);
        Some(env)
    }

    /// `received_ns` stamps readings without `ts`.
    fn decode(&mut self, topic: &str, payload: &[u8], ack: Option<Ack>, received_ns: i64) -> Envelope {
        self.stats.messages.fetch_add(1, Relaxed);
        let topic_serial = self.patterns.iter().find_map(|p| p.serial_of(topic));
        let now = crate::decode::Now { ns: received_ns, ..self.counters.clocks.now() };
        let d = json::decode(payload, topic_serial, now, self.max_payload);
        self.counters.clocks.report(PROTOCOL_JSON, &d.clock_ahead);
        self.stats.readings.fetch_add(d.readings.len() as u64, Relaxed);
        self.stats.unknown_fields.fetch_add(u64::from(d.unknown_fields), Relaxed);
        self.stats.dropped_fields.fetch_add(u64::from(d.dropped_fields), Relaxed);
        for r in &d.rejected {
            self.stats.reject(r.reason.as_str());
            if self.reject_log.allow(r.reason.as_str()) {
                warn!(
                    topic = %loggable(topic),
                    reason = r.reason.as_str(),
                    detail = %r.detail,
                    "Rejected a reading (counted; logged at most every 10 s per reason)."
                );
            }
        }
        Envelope { readings: d.readings, ack }
    }
}
