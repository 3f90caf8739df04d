//! The administrator's signed binding snapshots (`bindings keygen`, `export`, `sign`,
//! `publish`): bindings from a bindings file or from PostgreSQL, signed with an Ed25519 key,
//! published retained to the gateway's push topic. Nothing here reads the gateway's queue.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use crate::bindings::push;
use crate::config::Config;
use crate::model::Binding;

/// How long `publish` waits for the broker's PUBACK.
const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// A cause from another module, shown as it words it.
type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why a snapshot could not be exported, signed or published.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Problems of the bindings file or the configuration, one per line.
    #[error("{}", .0.join("\n"))]
    Problems(Vec<String>),
    #[error("give --from-file FILE or --config FILE (PostgreSQL)")]
    NoSource,
    #[error("the configuration has no bindings.postgres_url_file")]
    NoPostgres,
    /// Reaching PostgreSQL or reading from it.
    #[error("{0}")]
    Postgres(Cause),
    #[error("{0}")]
    Runtime(std::io::Error),
    #[error("{}: {error}", path.display())]
    File { path: PathBuf, error: std::io::Error },
    /// Making a key or signing with it.
    #[error("{0}")]
    Key(Cause),
    /// The broker's address or the password file.
    #[error("{0}")]
    Broker(Cause),
    // Boxed: rumqttc's errors are large, and the error travels by value.
    #[error("{0}")]
    Publish(Box<rumqttc::ClientError>),
    #[error("{broker}: {error}")]
    Connection { broker: String, error: Box<rumqttc::ConnectionError> },
    #[error("no acknowledgement within 30 s")]
    NoAck,
}

#[derive(Args)]
pub struct SnapshotSource {
    /// A bindings file to read the bindings from.
    #[arg(long, conflicts_with = "config")]
    from_file: Option<PathBuf>,
    /// A gateway configuration whose [bindings] PostgreSQL source (and scope) to read.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Args)]
pub struct Signing {
    #[command(flatten)]
    from: SnapshotSource,
    /// The private key file written by `bindings keygen`.
    #[arg(long)]
    key: PathBuf,
    /// The gateway id the snapshot is for (`*`: every gateway reading the topic).
    #[arg(long)]
    pub gateway: String,
    /// Snapshot version; must grow with every snapshot. Default: now, in milliseconds.
    #[arg(long)]
    version: Option<u64>,
}

/// `bindings keygen`: the private key to `out` (created, mode 0600), the public key printed.
pub fn keygen(out: &Path) -> Result<(), SnapshotError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (private, public) = push::envelope::generate_key().map_err(|e| SnapshotError::Key(e.into()))?;
    let file_error = |error| SnapshotError::File { path: out.to_owned(), error };
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(out).map_err(file_error)?;
    writeln!(f, "{private}").map_err(file_error)?;
    println!("{public}");
    Ok(())
}

/// The bindings of a bindings file, or of the configuration's PostgreSQL source.
pub fn bindings(from: &SnapshotSource) -> Result<Vec<Binding>, SnapshotError> {
    if let Some(f) = &from.from_file {
        return crate::bindings::file::load(f).map_err(SnapshotError::Problems);
    }
    let path = from.config.as_deref().ok_or(SnapshotError::NoSource)?;
    let cfg = Config::load(path).map_err(|p| SnapshotError::Problems(p.iter().map(ToString::to_string).collect()))?;
    let src = crate::app::postgres::pg_source(&cfg)
        .map_err(|e| SnapshotError::Postgres(e.into()))?
        .ok_or(SnapshotError::NoPostgres)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(SnapshotError::Runtime)?;
    rt.block_on(crate::bindings::postgres::fetch_once(&src)).map_err(|e| SnapshotError::Postgres(e.into()))
}

/// A signed snapshot envelope (JSON) of the selected bindings.
pub fn signed(s: &Signing) -> Result<String, SnapshotError> {
    let bindings = bindings(&s.from)?;
    let key = std::fs::read_to_string(&s.key).map_err(|error| SnapshotError::File { path: s.key.clone(), error })?;
    let now = chrono::Utc::now();
    let snapshot = push::envelope::Snapshot {
        gateway: s.gateway.clone(),
        version: s.version.unwrap_or(now.timestamp_millis().max(0) as u64),
        created_at: now.to_rfc3339(),
        bindings,
    };
    push::envelope::sign(&snapshot, &key).map_err(|e| SnapshotError::Key(e.into()))
}

/// Publishes `envelope`, retained, to the push topic of `gateway`; waits for the PUBACK.
pub fn publish(
    broker: &str,
    gateway: &str,
    username: Option<String>,
    password_file: Option<PathBuf>,
    envelope: String,
) -> Result<(), SnapshotError> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let addr = crate::ingest::mqtt::config::broker_addr(broker).map_err(|e| SnapshotError::Broker(e.into()))?;
    let mut opts = MqttOptions::new(format!("heartguard-admin-{}", std::process::id()), addr.host, addr.port);
    opts.set_max_packet_size(64 * 1024 * 1024, 64 * 1024 * 1024);
    if let Some(u) = username {
        let pw = match password_file {
            Some(f) => crate::config::secrets::read_secret(&f).map_err(|e| SnapshotError::Broker(e.into()))?,
            None => String::new(),
        };
        opts.set_credentials(u, pw);
    }
    let topic = push::topic(gateway);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(SnapshotError::Runtime)?;
    rt.block_on(async {
        let (client, mut events) = AsyncClient::new(opts, 10);
        client
            .publish(&topic, QoS::AtLeastOnce, true, envelope)
            .await
            .map_err(|e| SnapshotError::Publish(Box::new(e)))?;
        let wait = async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(SnapshotError::Connection { broker: broker.to_owned(), error: Box::new(e) }),
                }
            }
        };
        tokio::time::timeout(PUBLISH_ACK_TIMEOUT, wait).await.map_err(|_| SnapshotError::NoAck)??;
        let _ = client.disconnect().await;
        println!("Published a signed snapshot for gateway {gateway} to {topic} (retained).");
        Ok(())
    })
}
