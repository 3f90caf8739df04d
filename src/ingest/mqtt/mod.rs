//! MQTT source: a persistent session whose QoS 1 messages are acknowledged only after their
//! readings are committed (by intake, through [`super::Ack`]).
//!
//! - `clean_session = false` with a fixed client id: while the gateway is down or has not
//!   acknowledged, the broker keeps the messages and redelivers them ([MQTT-3.1.2-4]).
//! - Subscriptions are (re)sent on every CONNACK, so a broker that lost the session still
//!   delivers.
//! - The client is the gateway's own ([`wire`]) rather than a general-purpose library's, for
//!   three properties a general client does not give a subscriber that acknowledges late:
//!   - acknowledgements are written in bulk: a commit of 500 readings costs one `write`, not
//!     500 (the library this replaces wrote and flushed each PUBACK alone);
//!   - the keep-alive does not fail while intake holds the reader back (a full intake channel
//!     is back-pressure, not a dead broker): the writer pings on its own, and the connection
//!     is only judged dead when the broker is silent while the reader waits for it;
//!   - an acknowledgement goes out on the connection its message came in on, or not at all.
//!     After a reconnect the broker redelivers unacknowledged messages under their packet ids
//!     and may give a freed id to a new message; an old ack sent on the new connection could
//!     acknowledge a message not yet committed. A dropped ack only costs a redelivery.
//! - A redelivered message gets the receipt time of its first delivery (`Receipts`): a
//!   reading without `ts` is stamped with it, and a message committed whose PUBACK was lost
//!   comes again (DUP set, same packet id). Stamped anew, it would be a second point.

pub mod config;
pub mod wire;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{Ack, Envelope};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::config::secrets::read_secret;
use crate::decode::json;
use crate::model::loggable;
use crate::telemetry::health::Heartbeat;
use crate::telemetry::logging::RateLimited;
use crate::telemetry::{Counters, PROTOCOL_JSON, SOURCE_MQTT, SourceCounters, health};
use config::{TopicPattern, broker_addr};

/// Largest packet the client reads. A larger one would break the connection on every
/// redelivery, so this is generous; cap the broker's `message_size_limit` below it.
pub const MAX_INCOMING_PACKET: usize = 64 * 1024 * 1024;

/// Connecting (TCP, TLS, CONNACK) and writing must finish within this.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(10);

/// Read-buffer growth step: at full load one read takes a few hundred messages.
const READ_CHUNK: usize = 64 * 1024;

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// What the writer task of one connection sends.
pub(crate) enum Out {
    Ack(u16),
    Acks(Vec<u16>),
    Bytes(Vec<u8>),
    Disconnect,
}

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

pub struct MqttSource {
    host: String,
    port: u16,
    tls: Option<(tokio_rustls::TlsConnector, rustls_pki_types::ServerName<'static>)>,
    client_id: String,
    username: Option<String>,
    password: Option<String>,
    keep_alive: Duration,
    /// Takes the messages of its topic (the signed binding pushes, when enabled).
    handler: Option<Arc<dyn TopicHandler>>,
    patterns: Vec<TopicPattern>,
    max_payload: usize,
    counters: Arc<Counters>,
    stats: Arc<SourceCounters>,
}

/// When each packet id's last message was first received, if a reading was stamped with that
/// time, so that a redelivery of it is stamped alike. Kept across reconnects for the life of
/// the process (a crash loses it: the redelivery is then stored at its new receipt time), and
/// bounded by the 65,535 packet ids.
///
/// A PUBLISH with DUP set whose packet id, topic and payload match the message remembered
/// under that id is that message again. The broker reuses an id only once the message under
/// it is acknowledged, and any new message (DUP clear) replaces what an id remembers.
#[derive(Default)]
struct Receipts {
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
    fn receive(&self, p: &wire::Publish, now_ns: i64) -> (i64, Option<u64>) {
        if !p.dup {
            return (now_ns, None);
        }
        let digest = self.digest(p);
        match self.by_id.get(&p.packet_id) {
            Some(r) if r.digest == digest => (r.received_ns, Some(digest)),
            _ => (now_ns, Some(digest)),
        }
    }

    /// Remembers the message's receipt if a reading was stamped with it; otherwise forgets the
    /// message the packet id held before (a redelivery of this one needs no time of ours).
    fn remember(&mut self, p: &wire::Publish, received_ns: i64, digest: Option<u64>, stamped: bool) {
        if stamped {
            let digest = digest.unwrap_or_else(|| self.digest(p));
            self.by_id.insert(p.packet_id, Receipt { digest, received_ns });
        } else {
            self.by_id.remove(&p.packet_id);
        }
    }
}

/// How a session ended.
enum Ended {
    /// Shutdown: the reader stopped; the writer is still up for the last acknowledgements.
    Shutdown,
    /// The connection failed: why.
    Lost(String),
}

impl MqttSource {
    /// Builds the client settings from a validated configuration.
    pub fn new(cfg: &Config, counters: Arc<Counters>) -> Result<Self, String> {
        let addr = broker_addr(&cfg.mqtt.url)?;
        let tls = if addr.tls {
            let m = &cfg.mqtt;
            let ca = m.ca_file.as_deref().ok_or("mqtt.ca_file: required for mqtts://")?;
            let client = m.client_cert_file.as_deref().zip(m.client_key_file.as_deref());
            let config = crate::tls::client_config(ca, client).map_err(|e| format!("mqtt TLS: {e}"))?;
            let name = rustls_pki_types::ServerName::try_from(addr.host.clone())
                .map_err(|e| format!("mqtt.url: {:?} is not a valid TLS server name: {e}", addr.host))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let password = match &cfg.mqtt.password_file {
            Some(f) => Some(read_secret(f)?),
            None => None,
        };
        let patterns = cfg.mqtt.topics.iter().map(|t| TopicPattern::parse(t)).collect::<Result<_, _>>()?;
        let stats = counters.source(SOURCE_MQTT, PROTOCOL_JSON);
        Ok(Self {
            host: addr.host,
            port: addr.port,
            tls,
            client_id: cfg.mqtt_client_id(),
            username: cfg.mqtt.username.clone(),
            password,
            keep_alive: Duration::from_secs(cfg.mqtt.keep_alive_secs),
            handler: None,
            patterns,
            max_payload: cfg.mqtt.max_payload_bytes,
            counters,
            stats,
        })
    }

    /// Also subscribes to `handler`'s topic and hands its messages to it.
    pub fn with_topic_handler(mut self, handler: Arc<dyn TopicHandler>) -> Self {
        self.handler = Some(handler);
        self
    }

    fn filters(&self) -> Vec<String> {
        let mut f: Vec<String> = self.patterns.iter().map(|p| p.filter.clone()).collect();
        if let Some(h) = &self.handler {
            f.push(h.topic().to_owned());
        }
        f
    }

    /// Runs until `shutdown`; then stops taking messages, lets intake commit and acknowledge
    /// what it holds (`intake_done`), sends those acknowledgements and disconnects.
    pub async fn run(self, tx: mpsc::Sender<Envelope>, shutdown: CancellationToken, intake_done: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut reject_log = RateLimited::new(Duration::from_secs(10));
        let mut receipts = Receipts::default();
        let broker = format!("{}:{}", self.host, self.port);
        let heartbeat = self.counters.health.register(health::STAGE_MQTT);
        let filters = self.filters();
        // The live session when shutdown came: its writer is still up for the last acks.
        let mut closing = None;

        loop {
            let connected = tokio::select! {
                _ = shutdown.cancelled() => break,
                c = heartbeat.while_waiting(self.connect()) => c,
            };
            let (reader, writer, buf, session_present) = match connected {
                Ok(c) => c,
                Err(e) => {
                    if backoff.attempts == 3 {
                        warn!(%broker, error = %e, "Cannot reach the MQTT broker; still trying.");
                    } else {
                        debug!(%broker, error = %e, "MQTT connection attempt failed.");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = heartbeat.while_waiting(tokio::time::sleep(backoff.next_delay())) => {}
                    }
                    continue;
                }
            };
            self.stats.set_connected(true);
            backoff.reset();
            if !session_present {
                // A new session: nothing of the old one will be delivered again.
                receipts.by_id.clear();
            }
            info!(%broker, session_present, "Connected to the MQTT broker.");

            let (out, out_rx) = mpsc::unbounded_channel();
            let dead = CancellationToken::new();
            let writer = tokio::spawn(write_loop(writer, out_rx, self.keep_alive, dead.clone()));
            let _ = out.send(Out::Bytes(wire::subscribe(1, &filters)));
            let ended = self
                .session(reader, buf, &out, &filters, &tx, &shutdown, &dead, &heartbeat, &mut reject_log, &mut receipts)
                .await;
            match ended {
                Ended::Lost(why) => {
                    // A writer that failed has cancelled `dead` and is ending: its reason is the
                    // better one. Any other writer may be stuck in a write to a broker that no
                    // longer reads; it is not waited for.
                    let why = if dead.is_cancelled() {
                        match writer.await {
                            Ok(Err(w)) => w,
                            _ => why,
                        }
                    } else {
                        dead.cancel();
                        writer.abort();
                        why
                    };
                    self.stats.set_connected(false);
                    warn!(%broker, error = %why, "MQTT connection lost; reconnecting with back-off.");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = heartbeat.while_waiting(tokio::time::sleep(backoff.next_delay())) => {}
                    }
                }
                Ended::Shutdown => {
                    closing = Some((out, writer, dead));
                    break;
                }
            }
        }
        // Stop feeding intake, let it commit and queue the acknowledgements (they go to `out`,
        // ahead of the DISCONNECT), then close the session. Messages that arrived meanwhile
        // stay unacknowledged: the broker redelivers them.
        drop(tx);
        if let Some((out, writer, dead)) = closing {
            let close = async {
                intake_done.cancelled().await;
                let _ = out.send(Out::Disconnect);
                drop(out);
                let _ = writer.await;
            };
            if tokio::time::timeout(Duration::from_secs(5), close).await.is_err() {
                warn!("MQTT session did not close in time; unacknowledged messages will be redelivered.");
            }
            dead.cancel();
        }
        self.stats.set_connected(false);
        self.counters.health.deregister(health::STAGE_MQTT);
        info!("MQTT source stopped.");
    }

    /// TCP (and TLS), CONNECT, CONNACK: the two halves of the connection, the bytes read past
    /// the CONNACK, and whether the broker kept the session.
    async fn connect(&self) -> Result<(Reader, Writer, BytesMut, bool), String> {
        let connect = async {
            let tcp =
                tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await.map_err(|e| e.to_string())?;
            // Acknowledgements are gathered by the writer already; Nagle would only delay them.
            let _ = tcp.set_nodelay(true);
            let (mut reader, mut writer): (Reader, Writer) = match &self.tls {
                None => {
                    let (r, w) = tcp.into_split();
                    (Box::new(r), Box::new(w))
                }
                Some((connector, name)) => {
                    let s = connector.connect(name.clone(), tcp).await.map_err(|e| e.to_string())?;
                    let (r, w) = tokio::io::split(s);
                    (Box::new(r), Box::new(w))
                }
            };
            let login = wire::Login {
                client_id: &self.client_id,
                clean_session: false,
                keep_alive_secs: self.keep_alive.as_secs().min(u64::from(u16::MAX)) as u16,
                username: self.username.as_deref(),
                password: self.username.as_ref().and(self.password.as_deref()),
            };
            writer.write_all(&wire::connect(&login)).await.map_err(|e| e.to_string())?;
            writer.flush().await.map_err(|e| e.to_string())?;
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            loop {
                match wire::parse(&mut buf, MAX_INCOMING_PACKET) {
                    Ok(Some(wire::Incoming::ConnAck { session_present, code: 0 })) => {
                        return Ok((reader, writer, buf, session_present));
                    }
                    Ok(Some(wire::Incoming::ConnAck { code, .. })) => {
                        let reason = wire::connack_reason(code);
                        if matches!(code, 4 | 5) {
                            error!(
                                client_id = %self.client_id,
                                reason,
                                "The MQTT broker refused the gateway's login; check mqtt.username, mqtt.password_file and the broker's ACL."
                            );
                        }
                        return Err(format!("the broker refused the connection: {reason} (CONNACK {code})"));
                    }
                    // The kind only: a PUBLISH would carry a device's data into the log.
                    Ok(Some(other)) => {
                        return Err(format!("the broker answered CONNECT with packet type {}", other.kind()));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(e.to_string()),
                }
                if reader.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                    return Err("the broker closed the connection before its CONNACK".into());
                }
            }
        };
        tokio::time::timeout(NETWORK_TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| Err(format!("no CONNACK within {} s", NETWORK_TIMEOUT.as_secs())))
    }

    /// Reads packets until shutdown or a failure. The connection is judged dead only when the
    /// broker says nothing for two keep-alive periods while the reader waits for it (the
    /// writer pings every period), never while intake holds the reader back.
    #[allow(clippy::too_many_arguments)]
    async fn session(
        &self,
        mut reader: Reader,
        mut buf: BytesMut,
        out: &mpsc::UnboundedSender<Out>,
        filters: &[String],
        tx: &mpsc::Sender<Envelope>,
        shutdown: &CancellationToken,
        dead: &CancellationToken,
        heartbeat: &Heartbeat,
        reject_log: &mut RateLimited,
        receipts: &mut Receipts,
    ) -> Ended {
        let silence = self.keep_alive * 2;
        // One timer and one beat interval for the whole session: created per read, they were
        // an allocation and a timer registration per message at low rates.
        let silent = tokio::time::sleep(silence);
        tokio::pin!(silent);
        let mut beat = tokio::time::interval(health::BEAT_EVERY);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            heartbeat.beat();
            loop {
                let packet = match wire::parse(&mut buf, MAX_INCOMING_PACKET) {
                    Ok(Some(p)) => p,
                    Ok(None) => break,
                    Err(e) => return Ended::Lost(format!("the broker sent a malformed packet: {e}")),
                };
                match packet {
                    wire::Incoming::Publish(p) => {
                        if let Some(env) = self.publish(p, out, reject_log, receipts) {
                            // Most sends find room; only a full channel (intake busy committing)
                            // waits, beating meanwhile.
                            let env = match tx.try_send(env) {
                                Ok(()) => continue,
                                Err(mpsc::error::TrySendError::Closed(_)) => return Ended::Shutdown,
                                Err(mpsc::error::TrySendError::Full(env)) => env,
                            };
                            tokio::select! {
                                _ = shutdown.cancelled() => return Ended::Shutdown,
                                r = heartbeat.while_waiting(tx.send(env)) => if r.is_err() { return Ended::Shutdown },
                            }
                        }
                    }
                    wire::Incoming::SubAck { codes, .. } => {
                        for (code, f) in codes.iter().zip(filters) {
                            if *code == 0x80 {
                                error!(topic = %f, "The broker refused the subscription; check its ACL.");
                            } else {
                                info!(topic = %f, qos = *code, "Subscribed.");
                            }
                        }
                    }
                    wire::Incoming::ConnAck { .. } => {
                        return Ended::Lost("the broker sent a second CONNACK".into());
                    }
                    wire::Incoming::PingResp | wire::Incoming::Ignored(_) => {}
                }
            }
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            // Silence counts from here: time spent held back by intake is not the broker's.
            silent.as_mut().reset(Instant::now() + silence);
            loop {
                tokio::select! {
                    r = reader.read_buf(&mut buf) => match r {
                        Ok(0) => return Ended::Lost("the broker closed the connection".into()),
                        Ok(_) => break,
                        Err(e) => return Ended::Lost(e.to_string()),
                    },
                    _ = &mut silent => {
                        return Ended::Lost(format!(
                            "no packet from the broker for {} s (twice mqtt.keep_alive_secs)",
                            silence.as_secs()
                        ));
                    }
                    _ = beat.tick() => heartbeat.beat(),
                    _ = shutdown.cancelled() => return Ended::Shutdown,
                    _ = dead.cancelled() => return Ended::Lost("the connection broke while writing".into()),
                }
            }
        }
    }

    /// A PUBLISH: one of the handler's topic goes to it, anything else is decoded into an
    /// envelope for intake.
    fn publish(
        &self,
        p: wire::Publish,
        out: &mpsc::UnboundedSender<Out>,
        reject_log: &mut RateLimited,
        receipts: &mut Receipts,
    ) -> Option<Envelope> {
        let ack = (p.qos > 0).then(|| MqttAck { out: out.clone(), packet_id: p.packet_id });
        if let Some(h) = &self.handler
            && h.topic() == p.topic
        {
            h.take(&p.payload, ack);
            return None;
        }
        let ack = ack.map(Ack::Mqtt);
        if p.qos == 0 {
            return Some(self.decode(&p.topic, &p.payload, ack, crate::now_ns(), reject_log));
        }
        let (received_ns, digest) = receipts.receive(&p, crate::now_ns());
        let env = self.decode(&p.topic, &p.payload, ack, received_ns, reject_log);
        // A device's own `ts` equal to the receipt time to the nanosecond only costs an entry.
        let stamped = env.readings.iter().any(|r| r.ts_ns == received_ns);
        receipts.remember(&p, received_ns, digest, stamped);
        Some(env)
    }

    /// `received_ns` stamps readings without `ts`.
    fn decode(
        &self,
        topic: &str,
        payload: &[u8],
        ack: Option<Ack>,
        received_ns: i64,
        reject_log: &mut RateLimited,
    ) -> Envelope {
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
            if reject_log.allow(r.reason.as_str()) {
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

/// Writes what the connection's senders queue, everything that has gathered in one write,
/// and a PINGREQ whenever nothing was sent for a keep-alive period. Ends on DISCONNECT, on
/// `dead`, or on a failed write (cancelling `dead` for the reader).
async fn write_loop(
    mut w: Writer,
    mut rx: mpsc::UnboundedReceiver<Out>,
    keep_alive: Duration,
    dead: CancellationToken,
) -> Result<(), String> {
    let mut buf = Vec::with_capacity(4096);
    let mut last_sent = Instant::now();
    let result = loop {
        buf.clear();
        let mut disconnect = false;
        let mut take = |m: Out, buf: &mut Vec<u8>| match m {
            Out::Ack(id) => wire::puback(buf, id),
            Out::Acks(ids) => ids.into_iter().for_each(|id| wire::puback(buf, id)),
            Out::Bytes(b) => buf.extend_from_slice(&b),
            Out::Disconnect => disconnect = true,
        };
        tokio::select! {
            _ = dead.cancelled() => break Ok(()),
            m = rx.recv() => match m {
                Some(m) => {
                    take(m, &mut buf);
                    while let Ok(m) = rx.try_recv() {
                        take(m, &mut buf);
                    }
                }
                // Every sender gone without a DISCONNECT: the session is over.
                None => break Ok(()),
            },
            _ = tokio::time::sleep_until(last_sent + keep_alive) => buf.extend_from_slice(&wire::PINGREQ),
        }
        if disconnect {
            buf.extend_from_slice(&wire::DISCONNECT);
        }
        let write = async {
            w.write_all(&buf).await?;
            w.flush().await
        };
        match tokio::time::timeout(NETWORK_TIMEOUT.max(keep_alive), write).await {
            Ok(Ok(())) => last_sent = Instant::now(),
            Ok(Err(e)) => break Err(format!("writing to the broker: {e}")),
            Err(_) => break Err("the broker took no data for too long".into()),
        }
        if disconnect {
            let _ = w.shutdown().await;
            break Ok(());
        }
    };
    if result.is_err() {
        dead.cancel();
    }
    result
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
