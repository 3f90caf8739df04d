//! The listener: accepts MLLP connections, serves peers in `hl7.allow` while a slot of
//! `hl7.max_connections` is free, and closes any other connection at once, counted and
//! logged (at most every 60 s per address), so a flood from elsewhere never delays a listed
//! monitor. With TLS each connection is served after its handshake.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::ingest::Envelope;
use crate::ingest::mllp::config::{self, Hl7, PeerNetworkError};
use crate::ingest::mllp::connection::Connection;
use crate::ingest::mllp::seen::Seen;
use crate::protocols::hl7::time::Zone;
use crate::telemetry::logging::RateLimited;
use crate::telemetry::mllp as mllp_stats;
use crate::telemetry::{Counters, PROTOCOL_HL7, SOURCE_MLLP};

/// TCP keepalive of accepted sockets: the first probe after a minute of silence, then every
/// 10 s; six unanswered probes (a peer gone without a FIN) end the connection.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 6;
/// Refusals are logged at most this often (at the limit: overall; otherwise per address).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
/// Longest TLS handshake; a peer that stalls it holds a slot no longer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the listener cannot be set up. Each message names the key.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("hl7.time_zone: {0}")]
    TimeZone(#[source] crate::protocols::hl7::time::ZoneError),
    #[error("hl7.allow: {0}")]
    Allow(#[source] PeerNetworkError),
    #[error("hl7.listen {listen}: cannot listen: {source}")]
    Listen { listen: String, source: std::io::Error },
}

/// Why the TLS acceptor cannot be built from `hl7.tls_cert_file`, `hl7.tls_key_file` and
/// `hl7.client_ca_file`.
#[derive(Debug, thiserror::Error)]
#[error("hl7.tls_cert_file: {0}")]
pub struct TlsSetupError(#[source] crate::tls::TlsError);

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

/// A listener on a non-loopback address whose allowlist holds loopback networks only: the
/// configuration of a gateway moved onto the ward network without its monitors' networks.
fn only_this_machine_may_connect(listening: SocketAddr, allow: &[ipnet::IpNet]) -> bool {
    !listening.ip().is_loopback() && allow.iter().all(|n| n.network().is_loopback())
}

impl MllpSource {
    /// Binds the listen address of a validated configuration; `tls` from [`tls_acceptor`].
    pub async fn bind(cfg: &Hl7, tls: Option<TlsAcceptor>, counters: Arc<Counters>) -> Result<Self, BindError> {
        let zone = Zone::parse(&cfg.time_zone).map_err(BindError::TimeZone)?;
        let allow: Vec<ipnet::IpNet> =
            cfg.allow.iter().map(|a| config::peer_network(a).map_err(BindError::Allow)).collect::<Result<_, _>>()?;
        let listener = TcpListener::bind(&cfg.listen)
            .await
            .map_err(|source| BindError::Listen { listen: cfg.listen.clone(), source })?;
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
            let Some(slot) = self.admit(peer, &mut refusal_log) else { continue };
            if let Err(e) = keepalive(&stream) {
                debug!(peer = %peer, error = %e, "Cannot set TCP keepalive on an HL7 connection.");
            }
            let conn = self.connection(peer);
            let (tx, shutdown) = (tx.clone(), shutdown.clone());
            tracker.spawn(serve(conn, stream, self.tls.clone(), tx, shutdown, slot, tls_log.clone()));
        }
        drop(tx);
        tracker.close();
        tracker.wait().await;
        info!("HL7 MLLP listener stopped.");
    }

    /// A slot for `peer`, if it is in `hl7.allow` and a slot is free; otherwise the refusal is
    /// counted and logged (at most every 60 s: per address, or overall at the limit).
    fn admit(&self, peer: SocketAddr, refusal_log: &mut RateLimited) -> Option<Slot> {
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
            return None;
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
            return None;
        };
        Some(Slot::taken(permit, &self.counters))
    }

    fn connection(&self, peer: SocketAddr) -> Connection {
        Connection {
            peer,
            idle_timeout: self.idle_timeout,
            max_message: self.max_message,
            signal_type: self.signal_type.clone(),
            zone: self.zone,
            counters: self.counters.clone(),
            stats: self.counters.source(SOURCE_MLLP, PROTOCOL_HL7),
            seen: self.seen.clone(),
        }
    }
}

/// Serves one accepted connection, after its TLS handshake when `tls` is set, and frees its
/// slot when it ends.
async fn serve(
    conn: Connection,
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    tx: mpsc::Sender<Envelope>,
    shutdown: CancellationToken,
    slot: Slot,
    tls_log: Arc<Mutex<RateLimited>>,
) {
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
                Err(_) => {
                    conn.handshake_failed(&format!("no handshake within {} s", HANDSHAKE_TIMEOUT.as_secs()), &tls_log)
                }
            }
        }
    }
    drop(slot);
}

/// The TLS acceptor of `hl7.tls_cert_file`/`hl7.tls_key_file` (and `hl7.client_ca_file`), if
/// configured. Errors name the key.
pub fn tls_acceptor(cfg: &Hl7) -> Result<Option<TlsAcceptor>, TlsSetupError> {
    let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) else {
        return Ok(None);
    };
    let config = crate::tls::server_config(cert, key, cfg.client_ca_file.as_deref()).map_err(TlsSetupError)?;
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

    async fn bind_error(h: Hl7) -> String {
        match MllpSource::bind(&h, None, Arc::new(Counters::default())).await {
            Ok(_) => panic!("bound {}", h.listen),
            Err(e) => e.to_string(),
        }
    }

    /// Startup prints these; each names its key.
    #[tokio::test]
    async fn bind_errors_name_their_key() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let listen = taken.local_addr().expect("address").to_string();
        let e = bind_error(Hl7 { listen: listen.clone(), ..Hl7::default() }).await;
        assert!(e.starts_with(&format!("hl7.listen {listen}: cannot listen: ")), "{e}");
        let e = bind_error(Hl7 { allow: vec!["host".into()], ..Hl7::default() }).await;
        assert_eq!(e, "hl7.allow: \"host\" is not an address or a CIDR network (e.g. 10.20.0.0/16)");
        let e = bind_error(Hl7 { time_zone: "Mars/Olympus".into(), ..Hl7::default() }).await;
        assert!(e.starts_with("hl7.time_zone: "), "{e}");
    }
}
