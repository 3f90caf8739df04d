//! Opening a connection to the broker: TCP (and TLS), CONNECT, CONNACK. The gateway's session
//! is persistent (`clean_session = false`, a fixed client id), so the broker keeps its
//! messages while the gateway is away ([MQTT-3.1.2-4]).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::error;

use crate::ingest::mqtt::wire::{self, WireError};

/// Largest packet the client reads. A larger one would break the connection on every
/// redelivery, so this is generous; cap the broker's `message_size_limit` below it.
pub const MAX_INCOMING_PACKET: usize = 64 * 1024 * 1024;

/// Connecting (TCP, TLS, CONNACK) and writing must finish within this.
pub(crate) const NETWORK_TIMEOUT: Duration = Duration::from_secs(10);

/// Read-buffer growth step: at full load one read takes a few hundred messages.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

pub(crate) type Reader = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Where the broker is and how the gateway logs in.
pub(crate) struct Broker {
    pub host: String,
    pub port: u16,
    pub tls: Option<(tokio_rustls::TlsConnector, rustls_pki_types::ServerName<'static>)>,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive: Duration,
}

/// A connection the broker accepted.
pub(crate) struct Connected {
    pub reader: Reader,
    pub writer: Writer,
    /// The bytes read past the CONNACK.
    pub buf: BytesMut,
    /// Whether the broker kept the session (and will redeliver what it holds).
    pub session_present: bool,
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("the broker refused the connection: {reason} (CONNACK {code})")]
    Refused { reason: &'static str, code: u8 },
    /// The kind only: a PUBLISH would carry a device's data into the log.
    #[error("the broker answered CONNECT with packet type {0}")]
    Unexpected(u8),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the broker closed the connection before its CONNACK")]
    Closed,
    #[error("no CONNACK within {} s", NETWORK_TIMEOUT.as_secs())]
    Timeout,
}

impl Broker {
    /// `host:port`, for logs.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// TCP (and TLS), CONNECT, CONNACK, within [`NETWORK_TIMEOUT`].
    pub async fn connect(&self) -> Result<Connected, ConnectError> {
        tokio::time::timeout(NETWORK_TIMEOUT, self.open()).await.unwrap_or(Err(ConnectError::Timeout))
    }

    async fn open(&self) -> Result<Connected, ConnectError> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
        // Acknowledgements are gathered by the writer already; Nagle would only delay them.
        let _ = tcp.set_nodelay(true);
        let (mut reader, mut writer): (Reader, Writer) = match &self.tls {
            None => {
                let (r, w) = tcp.into_split();
                (Box::new(r), Box::new(w))
            }
            Some((connector, name)) => {
                let s = connector.connect(name.clone(), tcp).await?;
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
        writer.write_all(&wire::connect(&login)).await?;
        writer.flush().await?;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            match wire::parse(&mut buf, MAX_INCOMING_PACKET)? {
                Some(wire::Incoming::ConnAck { session_present, code: 0 }) => {
                    return Ok(Connected { reader, writer, buf, session_present });
                }
                Some(wire::Incoming::ConnAck { code, .. }) => {
                    let reason = wire::connack_reason(code);
                    if matches!(code, 4 | 5) {
                        error!(
                            client_id = %self.client_id,
                            reason,
                            "The MQTT broker refused the gateway's login; check mqtt.username, mqtt.password_file and the broker's ACL."
                        );
                    }
                    return Err(ConnectError::Refused { reason, code });
                }
                Some(other) => return Err(ConnectError::Unexpected(other.kind())),
                None => {}
            }
            if reader.read_buf(&mut buf).await? == 0 {
                return Err(ConnectError::Closed);
            }
        }
    }
}
