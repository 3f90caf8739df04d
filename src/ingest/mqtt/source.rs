//! The MQTT source: connects, runs one session after another and reconnects with back-off,
//! until shutdown; then it lets intake commit and acknowledge what it holds before it
//! disconnects.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::config::Config;
use crate::config::secrets::{SecretError, read_secret};
use crate::ingest::Envelope;
use crate::ingest::mqtt::ack::TopicHandler;
use crate::ingest::mqtt::config::{BrokerUrlError, TopicError, TopicPattern, broker_addr};
use crate::ingest::mqtt::connect::{Broker, Connected, Writer};
use crate::ingest::mqtt::publish::Publishes;
use crate::ingest::mqtt::session::{Ended, Lost, Session};
use crate::ingest::mqtt::wire;
use crate::ingest::mqtt::writer::{Out, WriteError, write_loop};
use crate::telemetry::health::{self, Heartbeat};
use crate::telemetry::{Counters, PROTOCOL_JSON, SOURCE_MQTT, SourceCounters};

/// Why the source cannot be built from its configuration. The configuration was validated
/// before, so most of these mean that a file it names changed since (the password, a
/// certificate). Messages name the key, except those of the URL and topics, which
/// validation reports under their keys.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Url(#[from] BrokerUrlError),
    #[error("mqtt.ca_file: required for mqtts://")]
    NoCa,
    /// The CA or client certificate files could not be loaded.
    #[error("mqtt TLS: {0}")]
    Tls(#[source] crate::tls::TlsError),
    #[error("mqtt.url: {host:?} is not a valid TLS server name: {source}")]
    ServerName { host: String, source: rustls_pki_types::InvalidDnsNameError },
    #[error(transparent)]
    Password(#[from] SecretError),
    #[error(transparent)]
    Topic(#[from] TopicError),
}

/// The MQTT source, built from `[mqtt]`.
pub struct MqttSource {
    broker: Broker,
    /// Kept across sessions: the receipt memory for redeliveries outlives reconnects.
    publishes: Publishes,
    counters: Arc<Counters>,
    stats: Arc<SourceCounters>,
}

impl MqttSource {
    /// Builds the client settings from a validated configuration.
    pub fn new(cfg: &Config, counters: Arc<Counters>) -> Result<Self, SetupError> {
        let m = &cfg.mqtt;
        let addr = broker_addr(&m.url)?;
        let tls = if addr.tls {
            let ca = m.ca_file.as_deref().ok_or(SetupError::NoCa)?;
            let client = m.client_cert_file.as_deref().zip(m.client_key_file.as_deref());
            let config = crate::tls::client_config(ca, client).map_err(SetupError::Tls)?;
            let name = rustls_pki_types::ServerName::try_from(addr.host.clone())
                .map_err(|source| SetupError::ServerName { host: addr.host.clone(), source })?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let password = match &m.password_file {
            Some(f) => Some(read_secret(f)?),
            None => None,
        };
        let patterns = m.topics.iter().map(|t| TopicPattern::parse(t)).collect::<Result<_, _>>()?;
        let stats = counters.source(SOURCE_MQTT, PROTOCOL_JSON);
        let broker = Broker {
            host: addr.host,
            port: addr.port,
            tls,
            client_id: cfg.mqtt_client_id(),
            username: m.username.clone(),
            password,
            keep_alive: Duration::from_secs(m.keep_alive_secs),
        };
        let publishes = Publishes::new(patterns, m.max_payload_bytes, counters.clone(), stats.clone());
        Ok(Self { broker, publishes, counters, stats })
    }

    /// Also subscribes to `handler`'s topic and hands its messages to it.
    pub fn with_topic_handler(mut self, handler: Arc<dyn TopicHandler>) -> Self {
        self.publishes.handler = Some(handler);
        self
    }

    /// Runs until `shutdown`; then stops taking messages, lets intake commit and acknowledge
    /// what it holds (`intake_done`), sends those acknowledgements and disconnects.
    pub async fn run(
        mut self,
        tx: mpsc::Sender<Envelope>,
        shutdown: CancellationToken,
        intake_done: CancellationToken,
    ) {
        let heartbeat = self.counters.health.register(health::STAGE_MQTT);
        let closing = self.serve(&tx, &shutdown, &heartbeat).await;
        // Stop feeding intake, let it commit and queue the acknowledgements (they go to `out`,
        // ahead of the DISCONNECT), then close the session. Messages that arrived meanwhile
        // stay unacknowledged: the broker redelivers them.
        drop(tx);
        if let Some(live) = closing {
            live.close(&intake_done).await;
        }
        self.stats.set_connected(false);
        self.counters.health.deregister(health::STAGE_MQTT);
        info!("MQTT source stopped.");
    }

    /// Connects, runs a session, and after a failure reconnects with back-off, until
    /// `shutdown`. Returns the connection live when shutdown came: its writer is still up for
    /// the last acknowledgements.
    async fn serve(
        &mut self,
        tx: &mpsc::Sender<Envelope>,
        shutdown: &CancellationToken,
        heartbeat: &Heartbeat,
    ) -> Option<Live> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let broker = self.broker.address();
        let filters = self.publishes.filters();
        loop {
            let Connected { reader, writer, buf, session_present } =
                self.connect(&mut backoff, shutdown, heartbeat, &broker).await?;
            self.stats.set_connected(true);
            backoff.reset();
            if !session_present {
                self.publishes.new_session();
            }
            info!(%broker, session_present, "Connected to the MQTT broker.");
            let live = Live::start(writer, self.broker.keep_alive);
            let _ = live.out.send(Out::Bytes(wire::subscribe(1, &filters)));
            let session = Session {
                reader,
                buf,
                out: &live.out,
                filters: &filters,
                tx,
                shutdown,
                dead: &live.dead,
                heartbeat,
                keep_alive: self.broker.keep_alive,
            };
            match session.run(&mut self.publishes).await {
                Ended::Shutdown => return Some(live),
                Ended::Lost(why) => {
                    let why = live.lost(why).await;
                    self.stats.set_connected(false);
                    warn!(%broker, error = %why, "MQTT connection lost; reconnecting with back-off.");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = heartbeat.while_waiting(tokio::time::sleep(backoff.next_delay())) => {}
                    }
                }
            }
        }
    }

    /// Connects, retrying with back-off; `None` on shutdown.
    async fn connect(
        &self,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
        heartbeat: &Heartbeat,
        broker: &str,
    ) -> Option<Connected> {
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return None,
                c = heartbeat.while_waiting(self.broker.connect()) => c,
            };
            match attempt {
                Ok(c) => return Some(c),
                Err(e) => {
                    if backoff.attempts == 3 {
                        warn!(%broker, error = %e, "Cannot reach the MQTT broker; still trying.");
                    } else {
                        debug!(%broker, error = %e, "MQTT connection attempt failed.");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = heartbeat.while_waiting(tokio::time::sleep(backoff.next_delay())) => {}
                    }
                }
            }
        }
    }
}

/// The writing side of a live connection.
struct Live {
    /// Where the connection's acknowledgements, SUBSCRIBE and DISCONNECT go.
    out: mpsc::UnboundedSender<Out>,
    writer: JoinHandle<Result<(), WriteError>>,
    /// Cancelled by a writer that failed; cancelled to stop one that did not.
    dead: CancellationToken,
}

impl Live {
    fn start(writer: Writer, keep_alive: Duration) -> Self {
        let (out, out_rx) = mpsc::unbounded_channel();
        let dead = CancellationToken::new();
        let writer = tokio::spawn(write_loop(writer, out_rx, keep_alive, dead.clone()));
        Self { out, writer, dead }
    }

    /// Ends the writer of a connection the session lost, and says why it was lost.
    async fn lost(self, why: Lost) -> Lost {
        // A writer that failed has cancelled `dead` and is ending: its reason is the better
        // one. Any other writer may be stuck in a write to a broker that no longer reads; it is
        // not waited for.
        if self.dead.is_cancelled() {
            match self.writer.await {
                Ok(Err(w)) => Lost::Write(w),
                _ => why,
            }
        } else {
            self.dead.cancel();
            self.writer.abort();
            why
        }
    }

    /// Waits for intake to commit and acknowledge what it holds (`intake_done`), then sends the
    /// DISCONNECT behind those acknowledgements; five seconds at most.
    async fn close(self, intake_done: &CancellationToken) {
        let Live { out, writer, dead } = self;
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
}
