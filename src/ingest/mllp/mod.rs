//! HL7 v2 over MLLP: a TCP listener for patient monitors and central stations (IHE PCD-01
//! Device Observation Reporters), decoded by [`crate::protocols::hl7`].
//!
//! - Each message is answered on its connection, in order. **AA is sent only after the
//!   message's readings are committed** (intake completes an [`Ack::Mllp`]); a monitor such
//!   as the GE B40 resends a message that got no ACK, so a gateway crash before the commit
//!   loses nothing. AE/AR carry a fixed reason in MSA-3 (protocols.md §3.3).
//! - **Retries** are recognised by their content ([`hl7::retry::retry_key`]: the message without
//!   MSH-7, and the times of its readings), never by MSH-10 alone, whose counters restart and
//!   wrap: a message already committed is answered AA again without being stored twice. When
//!   in doubt it is stored: a second copy of a point overwrites the first in InfluxDB, a
//!   dropped one is lost.
//! - Connections are capped (`hl7.max_connections`, mini-redis' semaphore). One beyond the cap
//!   is closed at once, counted, and makes `/readyz` report it for a minute
//!   ([`crate::telemetry::mllp`]): left in the kernel's backlog it would wait unseen. A
//!   connection that sends nothing for `hl7.idle_timeout_secs` is closed, and accepted
//!   sockets have TCP keepalive, so the half-open sockets of unplugged monitors free their
//!   slots.
//! - **Who may connect**: peers in `hl7.allow` (loopback by default); any other connection is
//!   closed at once, before it takes a slot, counted and logged (at most every 60 s per
//!   address), so a flood from elsewhere never delays a listed monitor. With
//!   `hl7.tls_cert_file`, MLLP runs over TLS (rustls, ring); with `hl7.client_ca_file` a
//!   client certificate signed by those CAs is required. A failed handshake is counted.
//! - Messages are capped (`hl7.max_message_bytes`, answered AR). Nothing from a message — no
//!   field, no patient data — goes into a log line: only the peer address, control id and
//!   reason.

pub mod config;

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::{Ack, Envelope};
use crate::decode::RejectReason;
use crate::model::loggable;
use crate::protocols::framer::Framer;
use crate::protocols::hl7::{self, ack::AckCode, message::Header, time::Zone};
use crate::telemetry::logging::RateLimited;
use crate::telemetry::mllp as mllp_stats;
use crate::telemetry::{Counters, PROTOCOL_HL7, SOURCE_MLLP, SourceCounters};
use config::Hl7;

/// Messages remembered (their retry keys) to recognise resends, oldest forgotten first.
const DEDUPE_CAPACITY: usize = 10_000;
/// Longest time an ACK may take to write before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive of accepted sockets: the first probe after a minute of silence, then every
/// 10 s; six unanswered probes (a peer gone without a FIN) end the connection.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 6;
/// Refusals are logged at most this often (at the limit: overall; otherwise per address).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
/// Longest TLS handshake; a peer that stalls it holds a slot no longer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The MLLP listener, bound.
pub struct MllpSource {
    listener: TcpListener,
    /// `hl7.allow`.
    allow: Vec<ipnet::IpNet>,
    tls: Option<TlsAcceptor>,
    limit: Arc<Semaphore>,
    max_connections: usize,
    idle_timeout: Duration,
    max_message: usize,
    signal_type: Option<String>,
    zone: Zone,
    counters: Arc<Counters>,
    seen: Arc<Mutex<Seen>>,
}

/// Retry keys of messages committed recently.
#[derive(Default)]
struct Seen {
    set: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
}

impl Seen {
    fn contains(&self, k: &[u8; 32]) -> bool {
        self.set.contains(k)
    }

    fn insert(&mut self, k: [u8; 32]) {
        if self.set.insert(k) {
            self.order.push_back(k);
            if self.order.len() > DEDUPE_CAPACITY
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

/// A listener on a non-loopback address whose allowlist holds loopback networks only: the
/// configuration of a gateway moved onto the ward network without its monitors' networks.
fn only_this_machine_may_connect(listening: SocketAddr, allow: &[ipnet::IpNet]) -> bool {
    !listening.ip().is_loopback() && allow.iter().all(|n| n.network().is_loopback())
}

impl MllpSource {
    /// Binds the listen address of a validated configuration; `tls` from [`tls_acceptor`].
    pub async fn bind(cfg: &Hl7, tls: Option<TlsAcceptor>, counters: Arc<Counters>) -> Result<Self, String> {
        let zone = Zone::parse(&cfg.time_zone).map_err(|e| format!("hl7.time_zone: {e}"))?;
        let allow: Vec<ipnet::IpNet> = cfg
            .allow
            .iter()
            .map(|a| config::peer_network(a).map_err(|e| format!("hl7.allow: {e}")))
            .collect::<Result<_, _>>()?;
        let listener = TcpListener::bind(&cfg.listen)
            .await
            .map_err(|e| format!("hl7.listen {}: cannot listen: {e}", cfg.listen))?;
        if listener.local_addr().is_ok_and(|a| only_this_machine_may_connect(a, &allow)) {
            warn!(
                listen = %cfg.listen,
                "hl7.listen is reachable from other hosts, but hl7.allow admits only this machine: every monitor will be refused until hl7.allow lists its network."
            );
        }
        Ok(Self {
            listener,
            allow,
            tls,
            limit: Arc::new(Semaphore::new(cfg.max_connections)),
            max_connections: cfg.max_connections,
            idle_timeout: Duration::from_secs(cfg.idle_timeout_secs),
            max_message: cfg.max_message_bytes,
            signal_type: cfg.signal_type.clone(),
            zone,
            counters,
            seen: Arc::new(Mutex::new(Seen::default())),
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Accepts connections until `shutdown`, then waits for the open ones to finish.
    pub async fn run(self, tx: mpsc::Sender<Envelope>, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        if let Some(addr) = self.local_addr() {
            info!(%addr, tls = self.tls.is_some(), "HL7 MLLP listener ready.");
        }
        self.counters.mllp.max.store(self.max_connections as u64, Relaxed);
        let mut refusal_log = RateLimited::new(REFUSAL_LOG_EVERY);
        let tls_log = Arc::new(Mutex::new(RateLimited::new(REFUSAL_LOG_EVERY)));
        loop {
            // Accepting never waits for a free slot: a connection beyond the limit is closed at
            // once and counted, not left unseen in the kernel's backlog.
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(error = %e, "Accepting an HL7 connection failed.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // IPv4 peers of a dual-stack listener come as ::ffff:a.b.c.d.
            let ip = peer.ip().to_canonical();
            if !self.allow.iter().any(|net| net.contains(&ip)) {
                self.counters.mllp.refuse(mllp_stats::REFUSED_NOT_ALLOWED, crate::now_ns());
                if refusal_log.allow(&ip.to_string()) {
                    warn!(
                        peer = %peer,
                        "HL7 connection from a peer outside hl7.allow closed (counted; logged at most every 60 s per address)."
                    );
                }
                continue;
            }
            let Ok(permit) = self.limit.clone().try_acquire_owned() else {
                self.counters.mllp.refuse(mllp_stats::REFUSED_LIMIT, crate::now_ns());
                if refusal_log.allow(mllp_stats::REFUSED_LIMIT) {
                    warn!(
                        peer = %peer,
                        max_connections = self.max_connections,
                        "HL7 connection refused: every hl7.max_connections slot is in use (counted; logged at most every 60 s)."
                    );
                }
                continue;
            };
            let slot = Slot::taken(permit, &self.counters);
            if let Err(e) = keepalive(&stream) {
                debug!(peer = %peer, error = %e, "Cannot set TCP keepalive on an HL7 connection.");
            }
            let conn = Connection {
                peer,
                idle_timeout: self.idle_timeout,
                max_message: self.max_message,
                signal_type: self.signal_type.clone(),
                zone: self.zone,
                counters: self.counters.clone(),
                stats: self.counters.source(SOURCE_MLLP, PROTOCOL_HL7),
                seen: self.seen.clone(),
            };
            let (tx, shutdown) = (tx.clone(), shutdown.clone());
            let (tls, tls_log) = (self.tls.clone(), tls_log.clone());
            tracker.spawn(async move {
                match tls {
                    None => conn.run(stream, tx, shutdown).await,
                    Some(acceptor) => {
                        let handshake = tokio::select! {
                            _ = shutdown.cancelled() => return,
                            r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => r,
                        };
                        match handshake {
                            Ok(Ok(stream)) => conn.run(stream, tx, shutdown).await,
                            Ok(Err(e)) => conn.handshake_failed(&e.to_string(), &tls_log),
                            Err(_) => conn.handshake_failed(
                                &format!("no handshake within {} s", HANDSHAKE_TIMEOUT.as_secs()),
                                &tls_log,
                            ),
                        }
                    }
                }
                drop(slot);
            });
        }
        drop(tx);
        tracker.close();
        tracker.wait().await;
        info!("HL7 MLLP listener stopped.");
    }
}

/// The TLS acceptor of `hl7.tls_cert_file`/`hl7.tls_key_file` (and `hl7.client_ca_file`), if
/// configured. Errors name the key.
pub fn tls_acceptor(cfg: &Hl7) -> Result<Option<TlsAcceptor>, String> {
    let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) else {
        return Ok(None);
    };
    let config = crate::tls::server_config(cert, key, cfg.client_ca_file.as_deref())
        .map_err(|e| format!("hl7.tls_cert_file: {e}"))?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// TCP keepalive on an accepted socket ([`KEEPALIVE_IDLE`]).
fn keepalive(stream: &TcpStream) -> std::io::Result<()> {
    use rustix::net::sockopt;
    sockopt::set_socket_keepalive(stream, true)?;
    sockopt::set_tcp_keepidle(stream, KEEPALIVE_IDLE)?;
    sockopt::set_tcp_keepintvl(stream, KEEPALIVE_INTERVAL)?;
    sockopt::set_tcp_keepcnt(stream, KEEPALIVE_PROBES)?;
    Ok(())
}

/// One of the `hl7.max_connections` slots, held while its connection lives; counted as open.
struct Slot {
    _permit: OwnedSemaphorePermit,
    counters: Arc<Counters>,
}

impl Slot {
    fn taken(permit: OwnedSemaphorePermit, counters: &Arc<Counters>) -> Self {
        counters.mllp.open.fetch_add(1, Relaxed);
        Self { _permit: permit, counters: counters.clone() }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counters.mllp.open.fetch_sub(1, Relaxed);
    }
}

struct Connection {
    peer: SocketAddr,
    /// Nothing received for this long closes the connection (`hl7.idle_timeout_secs`).
    idle_timeout: Duration,
    max_message: usize,
    signal_type: Option<String>,
    zone: Zone,
    counters: Arc<Counters>,
    /// Messages, readings and rejections of the `mllp`/`hl7` source.
    stats: Arc<SourceCounters>,
    seen: Arc<Mutex<Seen>>,
}

static ACK_SEQ: AtomicU64 = AtomicU64::new(1);

fn ack_bytes(header: Option<&Header>, code: AckCode, reason: Option<&str>) -> Vec<u8> {
    let now = chrono::Utc::now();
    let control = format!("GW{}{:04}", now.format("%y%m%d%H%M%S"), ACK_SEQ.fetch_add(1, Ordering::Relaxed) % 10_000);
    hl7::ack::build_ack(header, code, reason, &control, &now.format("%Y%m%d%H%M%S+0000").to_string())
}

impl Connection {
    /// Counts and logs (at most every 60 s per address) a TLS handshake that failed or timed out.
    fn handshake_failed(&self, error: &str, log: &Mutex<RateLimited>) {
        self.counters.mllp.refuse(mllp_stats::REFUSED_TLS, crate::now_ns());
        if log.lock().is_ok_and(|mut l| l.allow(&self.peer.ip().to_string())) {
            warn!(peer = %self.peer, error = %error, "HL7 TLS handshake failed; connection closed (counted; logged at most every 60 s per address).");
        }
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        mut stream: S,
        tx: mpsc::Sender<Envelope>,
        shutdown: CancellationToken,
    ) {
        debug!(peer = %self.peer, "HL7 connection opened.");
        let mut framer = Framer::new(self.max_message + 3);
        let mut buf = vec![0u8; 16 * 1024];
        let mut reject_log = RateLimited::new(Duration::from_secs(10));
        let max = self.max_message;
        'read: loop {
            let n = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = tokio::time::timeout(self.idle_timeout, stream.read(&mut buf)) => match r {
                    Ok(Ok(0) | Err(_)) => break,
                    Ok(Ok(n)) => n,
                    Err(_idle) => {
                        self.counters.mllp.idle_timeouts.fetch_add(1, Relaxed);
                        debug!(peer = %self.peer, "HL7 connection idle for hl7.idle_timeout_secs; closed.");
                        break;
                    }
                },
            };
            framer.push(&buf[..n]);
            while let Some(frame) = framer.next(|b| hl7::mllp::scan_mllp_within(b, max)) {
                let reply = match frame {
                    Ok(msg) => match self.handle(&msg, &tx, &mut reject_log).await {
                        Some(reply) => reply,
                        None => break 'read, // intake is gone: no ACK, the sender resends
                    },
                    Err(rej) => {
                        self.stats.reject(rej.reason.as_str());
                        if rej.reason != RejectReason::Oversized {
                            continue; // a message cut short: its sender resends it whole
                        }
                        ack_bytes(None, AckCode::Reject, Some("message larger than hl7.max_message_bytes"))
                    }
                };
                match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&reply)).await {
                    Ok(Ok(())) => {}
                    _ => break 'read,
                }
            }
            let noise = framer.take_noise();
            if noise > 0 {
                self.stats.reject(RejectReason::Noise.as_str());
            }
        }
        debug!(peer = %self.peer, "HL7 connection closed.");
    }

    /// Decodes one message, has its readings committed and returns the ACK to send; `None`
    /// when intake stopped before committing it.
    async fn handle(&self, msg: &[u8], tx: &mpsc::Sender<Envelope>, reject_log: &mut RateLimited) -> Option<Vec<u8>> {
        self.counters.hl7_messages.fetch_add(1, Relaxed);
        self.stats.messages.fetch_add(1, Relaxed);
        let mut m = hl7::decode::decode_message(msg, self.counters.clocks.now(), self.zone);
        self.counters.clocks.report(PROTOCOL_HL7, &m.decoded.clock_ahead);
        let control = m.header.as_ref().map(|h| loggable(&h.control_id)).unwrap_or_default();
        for r in &m.decoded.rejected {
            self.stats.reject(r.reason.as_str());
            if reject_log.allow(r.reason.as_str()) {
                warn!(peer = %self.peer, control_id = %control, reason = r.reason.as_str(), detail = %r.detail, "HL7 message (or part of it) not stored (counted; logged at most every 10 s per reason).");
            }
        }
        self.stats.dropped_fields.fetch_add(u64::from(m.decoded.dropped_fields), Relaxed);
        self.stats.readings.fetch_add(m.decoded.readings.len() as u64, Relaxed);
        let key = m.retry_key;
        if m.ack != AckCode::Accept || m.decoded.readings.is_empty() {
            return Some(ack_bytes(m.header.as_ref(), m.ack, m.reason));
        }
        if let Some(k) = &key
            && self.seen.lock().is_ok_and(|s| s.contains(k))
        {
            self.counters.hl7_duplicates.fetch_add(1, Relaxed);
            debug!(peer = %self.peer, control_id = %control, "HL7 retry of a message already stored; acknowledged again.");
            return Some(ack_bytes(m.header.as_ref(), AckCode::Accept, None));
        }
        if let Some(t) = &self.signal_type {
            for r in &mut m.decoded.readings {
                r.signal_type = Some(t.clone());
            }
        }
        let (done_tx, done_rx) = oneshot::channel();
        let env = Envelope { readings: std::mem::take(&mut m.decoded.readings), ack: Some(Ack::Mllp(done_tx)) };
        tx.send(env).await.ok()?;
        done_rx.await.ok()?;
        if let (Some(k), Ok(mut seen)) = (key, self.seen.lock()) {
            seen.insert(k);
        }
        Some(ack_bytes(m.header.as_ref(), AckCode::Accept, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ward_address_with_a_loopback_allowlist_is_told() {
        let net = |s: &str| config::peer_network(s).expect(s);
        let loopback = [net("127.0.0.0/8"), net("::1")];
        let addr = |s: &str| s.parse::<SocketAddr>().expect(s);
        assert!(only_this_machine_may_connect(addr("0.0.0.0:2575"), &loopback));
        assert!(only_this_machine_may_connect(addr("10.20.3.1:2575"), &loopback));
        assert!(!only_this_machine_may_connect(addr("127.0.0.1:2575"), &loopback));
        assert!(!only_this_machine_may_connect(addr("10.20.3.1:2575"), &[loopback[0], net("10.20.0.0/16")]));
    }
}
