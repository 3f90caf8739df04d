//! The writer task of one connection: everything its senders queue (acknowledgements, the
//! SUBSCRIBE, the DISCONNECT) goes out in as few writes as possible, and a PINGREQ whenever
//! nothing was sent for a keep-alive period. It pings on its own, so the keep-alive holds
//! while intake holds the reader back.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ingest::mqtt::connect::{NETWORK_TIMEOUT, Writer};
use crate::ingest::mqtt::wire;

/// What the writer task of one connection sends.
pub(crate) enum Out {
    Ack(u16),
    Acks(Vec<u16>),
    Bytes(Vec<u8>),
    Disconnect,
}

/// Why the writer stopped writing to the broker.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    #[error("writing to the broker: {0}")]
    Io(#[source] std::io::Error),
    #[error("the broker took no data for too long")]
    Stalled,
}

/// Writes what the connection's senders queue, everything that has gathered in one write,
/// and a PINGREQ whenever nothing was sent for a keep-alive period. Ends on DISCONNECT, on
/// `dead`, or on a failed write (cancelling `dead` for the reader).
pub(crate) async fn write_loop(
    mut w: Writer,
    mut rx: mpsc::UnboundedReceiver<Out>,
    keep_alive: Duration,
    dead: CancellationToken,
) -> Result<(), WriteError> {
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
            Ok(Err(e)) => break Err(WriteError::Io(e)),
            Err(_) => break Err(WriteError::Stalled),
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
