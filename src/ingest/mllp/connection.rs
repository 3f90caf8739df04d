//! One HL7 connection: frames MLLP messages, decodes each, has its readings committed by
//! intake, and answers in order: AA only once the readings are committed, AA again without
//! storing for a retry of a message already committed, AE/AR with a fixed reason otherwise.
//! Nothing from a message goes into a log line: only the peer address, control id and reason.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::decode::RejectReason;
use crate::ingest::mllp::seen::Seen;
use crate::ingest::{Ack, Envelope};
use crate::model::loggable;
use crate::protocols::framer::Framer;
use crate::protocols::hl7::{self, ack::AckCode, message::Header, time::Zone};
use crate::telemetry::logging::RateLimited;
use crate::telemetry::mllp as mllp_stats;
use crate::telemetry::{Counters, PROTOCOL_HL7, SourceCounters};

/// Longest time an ACK may take to write before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Connection {
    pub peer: SocketAddr,
    /// Nothing received for this long closes the connection (`hl7.idle_timeout_secs`).
    pub idle_timeout: Duration,
    pub max_message: usize,
    pub signal_type: Option<String>,
    pub zone: Zone,
    pub counters: Arc<Counters>,
    /// Messages, readings and rejections of the `mllp`/`hl7` source.
    pub stats: Arc<SourceCounters>,
    pub seen: Arc<Mutex<Seen>>,
}

static ACK_SEQ: AtomicU64 = AtomicU64::new(1);

fn ack_bytes(header: Option<&Header>, code: AckCode, reason: Option<&str>) -> Vec<u8> {
    let now = chrono::Utc::now();
    let control = format!("GW{}{:04}", now.format("%y%m%d%H%M%S"), ACK_SEQ.fetch_add(1, Ordering::Relaxed) % 10_000);
    hl7::ack::build_ack(header, code, reason, &control, &now.format("%Y%m%d%H%M%S+0000").to_string())
}

impl Connection {
    /// Counts and logs (at most every 60 s per address) a TLS handshake that failed or timed out.
    pub fn handshake_failed(&self, error: &str, log: &Mutex<RateLimited>) {
        self.counters.mllp.refuse(mllp_stats::REFUSED_TLS, crate::now_ns());
        if log.lock().is_ok_and(|mut l| l.allow(&self.peer.ip().to_string())) {
            warn!(peer = %self.peer, error = %error, "HL7 TLS handshake failed; connection closed (counted; logged at most every 60 s per address).");
        }
    }

    pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
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
