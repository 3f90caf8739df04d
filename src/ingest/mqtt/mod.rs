//! MQTT source: a persistent session whose QoS 1 messages are acknowledged only after their
//! readings are committed (by intake, through [`super::Ack`]).
//!
//! - `clean_session = false` with a fixed client id: while the gateway is down or has not
//!   acknowledged, the broker keeps the messages and redelivers them ([MQTT-3.1.2-4]).
//! - Subscriptions are (re)sent on every ConnAck, so a broker that lost the session still
//!   delivers.
//! - The event loop is never blocked by acknowledgements: they are queued with `try_ack` on a
//!   request channel larger than any inflight window a broker can grant.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter, SubscribeReasonCode};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Ack, Envelope, RateLimited};
use crate::backoff::Backoff;
use crate::config::{Config, TopicPattern, broker_addr, read_secret};
use crate::decode::json;
use crate::model::loggable;
use crate::telemetry::{Counters, PROTOCOL_JSON, SOURCE_MQTT, SourceCounters, health};

/// Above MQTT's 65,535 packet ids: outstanding acknowledgements can never fill it.
pub const REQUEST_CHANNEL: usize = 65_536 + 64;

/// Largest packet the client reads. A larger one would break the connection on every
/// redelivery, so this is generous; cap the broker's `message_size_limit` below it.
pub const MAX_INCOMING_PACKET: usize = 64 * 1024 * 1024;

pub struct MqttSource {
    options: MqttOptions,
    /// Topic of signed binding snapshots, and where they go, when pushes are enabled.
    push: Option<(String, mpsc::Sender<crate::bindings::push::PushMsg>)>,
    patterns: Vec<TopicPattern>,
    max_payload: usize,
    counters: Arc<Counters>,
    stats: Arc<SourceCounters>,
}

impl MqttSource {
    /// Builds the client options from a validated configuration.
    pub fn new(cfg: &Config, counters: Arc<Counters>) -> Result<Self, String> {
        let addr = broker_addr(&cfg.mqtt.url)?;
        let mut options = MqttOptions::new(cfg.mqtt_client_id(), addr.host, addr.port);
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(Duration::from_secs(cfg.mqtt.keep_alive_secs))
            .set_max_packet_size(MAX_INCOMING_PACKET, 1024 * 1024)
            .set_request_channel_capacity(REQUEST_CHANNEL);
        if addr.tls {
            let m = &cfg.mqtt;
            let ca = m.ca_file.as_deref().ok_or("mqtt.ca_file: required for mqtts://")?;
            let client = m.client_cert_file.as_deref().zip(m.client_key_file.as_deref());
            let tls = crate::tls::client_config(ca, client).map_err(|e| format!("mqtt TLS: {e}"))?;
            options
                .set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(tls))));
        }
        if let Some(user) = &cfg.mqtt.username {
            let password = match &cfg.mqtt.password_file {
                Some(f) => read_secret(f)?,
                None => String::new(),
            };
            options.set_credentials(user, password);
        }
        let patterns = cfg.mqtt.topics.iter().map(|t| TopicPattern::parse(t)).collect::<Result<_, _>>()?;
        let stats = counters.source(SOURCE_MQTT, PROTOCOL_JSON);
        Ok(Self { options, push: None, patterns, max_payload: cfg.mqtt.max_payload_bytes, counters, stats })
    }

    /// Also takes signed binding snapshots from `topic` and hands them to `tx`.
    pub fn with_push(mut self, topic: String, tx: mpsc::Sender<crate::bindings::push::PushMsg>) -> Self {
        self.push = Some((topic, tx));
        self
    }

    /// Runs until `shutdown`; then stops taking messages, lets intake commit and acknowledge
    /// what it holds (`intake_done`), flushes those acknowledgements and disconnects.
    pub async fn run(self, tx: mpsc::Sender<Envelope>, shutdown: CancellationToken, intake_done: CancellationToken) {
        let (client, mut eventloop) = AsyncClient::new(self.options.clone(), REQUEST_CHANNEL);
        let mut filters: Vec<SubscribeFilter> =
            self.patterns.iter().map(|p| SubscribeFilter::new(p.filter.clone(), QoS::AtLeastOnce)).collect();
        if let Some((topic, _)) = &self.push {
            filters.push(SubscribeFilter::new(topic.clone(), QoS::AtLeastOnce));
        }
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut connected = false;
        let mut reject_log = RateLimited::new(Duration::from_secs(10));
        let broker = format!("{}:{}", self.options.broker_address().0, self.options.broker_address().1);
        let heartbeat = self.counters.health.register(health::STAGE_MQTT);

        loop {
            // The poll future is kept across heartbeats (never dropped half-way) until it
            // yields an event.
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = heartbeat.while_waiting(eventloop.poll()) => ev,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    connected = true;
                    self.stats.set_connected(true);
                    backoff.reset();
                    info!(%broker, session_present = ack.session_present, "Connected to the MQTT broker.");
                    if let Err(e) = client.try_subscribe_many(filters.clone()) {
                        warn!(error = %e, "Could not queue the MQTT subscription.");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    for (code, f) in ack.return_codes.iter().zip(&filters) {
                        match code {
                            SubscribeReasonCode::Success(qos) => {
                                info!(topic = %f.path, qos = ?qos, "Subscribed.");
                            }
                            SubscribeReasonCode::Failure => {
                                tracing::error!(topic = %f.path, "The broker refused the subscription; check its ACL.");
                            }
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish)))
                    if self.push.as_ref().is_some_and(|(t, _)| *t == publish.topic) =>
                {
                    let Some((_, push_tx)) = &self.push else { continue };
                    let payload = publish.payload.to_vec();
                    let ack = (publish.qos != QoS::AtMostOnce).then(|| Ack::Mqtt { client: client.clone(), publish });
                    if push_tx.try_send(crate::bindings::push::PushMsg { payload, ack }).is_err() {
                        warn!(
                            "A binding snapshot arrived while the previous one is still being applied; the broker will redeliver it."
                        );
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let env = self.decode(&client, publish, &mut reject_log);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        r = heartbeat.while_waiting(tx.send(env)) => if r.is_err() { break },
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.stats.set_connected(false);
                    if connected {
                        warn!(%broker, error = %e, "MQTT connection lost; reconnecting with back-off.");
                        connected = false;
                    } else {
                        debug!(%broker, error = %e, "MQTT connection attempt failed.");
                        if backoff.attempts == 3 {
                            warn!(%broker, error = %e, "Cannot reach the MQTT broker; still trying.");
                        }
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = heartbeat.while_waiting(tokio::time::sleep(backoff.next_delay())) => {}
                    }
                }
            }
        }

        // Stop feeding intake, let it commit and queue the acknowledgements, then keep the
        // event loop turning until they are written and the DISCONNECT is sent. Messages that
        // arrive meanwhile stay unacknowledged: the broker redelivers them next session.
        drop(tx);
        if connected {
            let drain = async {
                let mut done = false;
                loop {
                    tokio::select! {
                        _ = intake_done.cancelled(), if !done => {
                            done = true;
                            let _ = client.try_disconnect();
                        }
                        ev = eventloop.poll() => match ev {
                            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                            _ => {}
                        },
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(5), drain).await.is_err() {
                warn!("MQTT session did not close in time; unacknowledged messages will be redelivered.");
            }
        }
        self.stats.set_connected(false);
        self.counters.health.deregister(health::STAGE_MQTT);
        info!("MQTT source stopped.");
    }

    fn decode(&self, client: &AsyncClient, publish: rumqttc::Publish, reject_log: &mut RateLimited) -> Envelope {
        self.stats.messages.fetch_add(1, Relaxed);
        let topic_serial = self.patterns.iter().find_map(|p| p.serial_of(&publish.topic));
        let d = json::decode(&publish.payload, topic_serial, crate::now_ns(), self.max_payload);
        self.stats.readings.fetch_add(d.readings.len() as u64, Relaxed);
        self.stats.unknown_fields.fetch_add(u64::from(d.unknown_fields), Relaxed);
        self.stats.dropped_fields.fetch_add(u64::from(d.dropped_fields), Relaxed);
        for r in &d.rejected {
            self.stats.reject(r.reason.as_str());
            if reject_log.allow(r.reason.as_str()) {
                warn!(
                    topic = %loggable(&publish.topic),
                    reason = r.reason.as_str(),
                    detail = %r.detail,
                    "Rejected a reading (counted; logged at most every 10 s per reason)."
                );
            }
        }
        let ack = (publish.qos != QoS::AtMostOnce).then(|| Ack::Mqtt { client: client.clone(), publish });
        Envelope { readings: d.readings, ack }
    }
}
