//! One session on a live connection: reads packets, hands the readings of each PUBLISH to
//! intake and acts on the rest, until shutdown or a failure. The connection is judged dead
//! only when the broker says nothing for two keep-alive periods while the reader waits for
//! it (the writer pings every period), never while intake holds the reader back.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::ingest::Envelope;
use crate::ingest::mqtt::connect::{MAX_INCOMING_PACKET, READ_CHUNK, Reader};
use crate::ingest::mqtt::publish::Publishes;
use crate::ingest::mqtt::wire::{self, WireError};
use crate::ingest::mqtt::writer::{Out, WriteError};
use crate::telemetry::health::{self, Heartbeat};

/// How a session ended.
pub(crate) enum Ended {
    /// Shutdown: the reader stopped; the writer is still up for the last acknowledgements.
    Shutdown,
    /// The connection failed.
    Lost(Lost),
}

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Lost {
    #[error("the broker sent a malformed packet: {0}")]
    Malformed(#[source] WireError),
    #[error("the broker sent a second CONNACK")]
    SecondConnAck,
    #[error("the broker closed the connection")]
    Closed,
    #[error(transparent)]
    Read(std::io::Error),
    #[error("no packet from the broker for {0} s (twice mqtt.keep_alive_secs)")]
    Silent(u64),
    /// The writer failed; the reason it gives is the better one.
    #[error("the connection broke while writing")]
    WriterGone,
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// The reading side of one live connection.
pub(crate) struct Session<'a> {
    pub reader: Reader,
    /// Bytes read and not yet parsed.
    pub buf: BytesMut,
    /// The connection's writer: acknowledgements of its messages go there and nowhere else.
    pub out: &'a mpsc::UnboundedSender<Out>,
    /// The filters subscribed to, in the order of the SUBACK's codes.
    pub filters: &'a [String],
    pub tx: &'a mpsc::Sender<Envelope>,
    pub shutdown: &'a CancellationToken,
    /// Cancelled by a writer that failed.
    pub dead: &'a CancellationToken,
    pub heartbeat: &'a Heartbeat,
    pub keep_alive: Duration,
}

/// What the whole packets in the buffer came to.
enum Taken {
    /// All were handled; more bytes are needed.
    NeedBytes,
    /// Intake's channel is full: this envelope waits for room, the rest of the buffer after it.
    Full(Envelope),
    End(Ended),
}

impl Session<'_> {
    /// Reads packets until shutdown or a failure.
    pub async fn run(mut self, publishes: &mut Publishes) -> Ended {
        let silence = self.keep_alive * 2;
        // One timer and one beat interval for the whole session: created per read, they were
        // an allocation and a timer registration per message at low rates.
        let silent = tokio::time::sleep(silence);
        tokio::pin!(silent);
        let mut beat = tokio::time::interval(health::BEAT_EVERY);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.heartbeat.beat();
            loop {
                match self.take(publishes) {
                    Taken::NeedBytes => break,
                    // Only a full channel (intake busy committing) waits, beating meanwhile.
                    Taken::Full(env) => tokio::select! {
                        _ = self.shutdown.cancelled() => return Ended::Shutdown,
                        r = self.heartbeat.while_waiting(self.tx.send(env)) => if r.is_err() { return Ended::Shutdown },
                    },
                    Taken::End(ended) => return ended,
                }
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            // Silence counts from here: time spent held back by intake is not the broker's.
            silent.as_mut().reset(Instant::now() + silence);
            loop {
                tokio::select! {
                    r = self.reader.read_buf(&mut self.buf) => match r {
                        Ok(0) => return Ended::Lost(Lost::Closed),
                        Ok(_) => break,
                        Err(e) => return Ended::Lost(Lost::Read(e)),
                    },
                    _ = &mut silent => return Ended::Lost(Lost::Silent(silence.as_secs())),
                    _ = beat.tick() => self.heartbeat.beat(),
                    _ = self.shutdown.cancelled() => return Ended::Shutdown,
                    _ = self.dead.cancelled() => return Ended::Lost(Lost::WriterGone),
                }
            }
        }
    }

    /// Acts on the whole packets in the buffer; the readings go to intake while its channel
    /// has room.
    fn take(&mut self, publishes: &mut Publishes) -> Taken {
        loop {
            let packet = match wire::parse(&mut self.buf, MAX_INCOMING_PACKET) {
                Ok(Some(p)) => p,
                Ok(None) => return Taken::NeedBytes,
                Err(e) => return Taken::End(Ended::Lost(Lost::Malformed(e))),
            };
            match packet {
                wire::Incoming::Publish(p) => {
                    if let Some(env) = publishes.publish(p, self.out) {
                        match self.tx.try_send(env) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Closed(_)) => return Taken::End(Ended::Shutdown),
                            Err(mpsc::error::TrySendError::Full(env)) => return Taken::Full(env),
                        }
                    }
                }
                wire::Incoming::SubAck { codes, .. } => {
                    for (code, f) in codes.iter().zip(self.filters) {
                        if *code == 0x80 {
                            error!(topic = %f, "The broker refused the subscription; check its ACL.");
                        } else {
                            info!(topic = %f, qos = *code, "Subscribed.");
                        }
                    }
                }
                wire::Incoming::ConnAck { .. } => return Taken::End(Ended::Lost(Lost::SecondConnAck)),
                wire::Incoming::PingResp | wire::Incoming::Ignored(_) => {}
            }
        }
    }
}
