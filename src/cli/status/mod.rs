//! `heartguard-gateway status`: one screen for an operator. Asks the running daemon for its
//! status document (`/status` on `http.listen`); when it does not answer, reads the status
//! file the daemon rewrites every few seconds, or else the database alone, read-only. The
//! document is [`crate::telemetry::status::Status`]; [`render`] writes the screen and
//! [`warnings`] says what to look at.

mod human;
pub mod render;
pub mod warnings;

use std::time::Duration;

use super::Error;
use crate::config::Config;
use crate::queue::QueueError;
use crate::queue::{cache, inspect, schema};
use crate::telemetry::http::client_addr;
use crate::telemetry::metrics::BindingsInfo;
use crate::telemetry::status::{DestinationStatus, ORIGIN_DATABASE, ORIGIN_FILE, QueueStatus, STATUS_FILE, Status};

/// A status file older than this is not taken as the word of a running daemon.
const FILE_FRESH_NS: i64 = 15 * 1_000_000_000;

/// How long the daemon may take to answer `/status`.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the daemon's own status document was not had (the command then reads the files).
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    #[error("the HTTP endpoint is disabled (http.enabled = false)")]
    Disabled,
    #[error("{0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Client(reqwest::Error),
    #[error("{url}: {error}")]
    Request { url: String, error: reqwest::Error },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: reqwest::StatusCode },
    #[error("{url}: not a gateway status: {error}")]
    NotStatus { url: String, error: serde_json::Error },
}

/// Asks the daemon at `url` (default: `http.listen`); when it does not answer, reads the files.
/// Prints the summary, or the JSON document with `json`.
pub fn command(cfg: &Config, url: Option<&str>, json: bool) -> Result<(), Error> {
    let url = url
        .map(str::to_owned)
        .or_else(|| cfg.http.enabled.then(|| client_addr(&cfg.http.listen)).flatten().map(|a| format!("http://{a}")));
    let (status, unreachable) = match url.as_deref().map(fetch) {
        Some(Ok(s)) => (s, None),
        Some(Err(e)) => (from_file_or_database(cfg)?, Some(e)),
        None => (from_file_or_database(cfg)?, Some(Unreachable::Disabled)),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    if let Some(why) = unreachable {
        println!("(daemon not reachable: {why})");
    }
    print!("{}", render::render(&status));
    Ok(())
}

/// Fetches `/status` from a running daemon.
pub fn fetch(base: &str) -> Result<Status, Unreachable> {
    let url = format!("{}/status", base.trim_end_matches('/'));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(Unreachable::Runtime)?;
    crate::tls::install_provider();
    rt.block_on(async {
        let client =
            reqwest::Client::builder().no_proxy().timeout(FETCH_TIMEOUT).build().map_err(Unreachable::Client)?;
        let resp = client.get(&url).send().await.map_err(|error| Unreachable::Request { url: url.clone(), error })?;
        if !resp.status().is_success() {
            return Err(Unreachable::Status { url, status: resp.status() });
        }
        let body = resp.text().await.map_err(|error| Unreachable::Request { url: url.clone(), error })?;
        serde_json::from_str(&body).map_err(|error| Unreachable::NotStatus { url, error })
    })
}

/// The daemon's status file while it is fresh (a running daemon rewrites it every 5 s), else
/// the database. The file written at a graceful stop is never taken for a running daemon.
pub fn from_file_or_database(cfg: &Config) -> Result<Status, QueueError> {
    let path = cfg.gateway.data_dir.join(STATUS_FILE);
    match std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Status>(&b).ok()) {
        Some(s) if s.origin == ORIGIN_FILE && crate::now_ns() - s.now_ns <= FILE_FRESH_NS => Ok(s),
        _ => from_database(cfg),
    }
}

/// What the files alone tell, read-only (safe beside a running daemon).
pub fn from_database(cfg: &Config) -> Result<Status, QueueError> {
    let dir = &cfg.gateway.data_dir;
    let conn = schema::open_read_only(dir)?;
    let g = inspect::gauges(&conn, &dir.join(schema::DB_FILE), None)?;
    let cached = cache::load_bindings(&conn)?;
    let stored_ns = cache::bindings_stored_at(&conn)?;
    let bindings = cached.map(|cache::CachedBindings { bindings: list, source, version }| BindingsInfo {
        count: list.len() as u64,
        source: BindingsInfo::source_label(&source),
        version,
        loaded_ns: stored_ns.unwrap_or(0),
    });
    Ok(Status {
        origin: ORIGIN_DATABASE.into(),
        gateway_id: cfg.gateway.id.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        now_ns: crate::now_ns(),
        started_ns: None,
        ready: None,
        stuck_stages: Vec::new(),
        sources: Vec::new(),
        ports: Vec::new(),
        queue: Some(QueueStatus {
            points: g.points,
            bytes: g.bytes,
            oldest_enqueued_ns: g.oldest_enqueued_ns,
            db_file_bytes: g.db_file_bytes,
            dead_letters: g.dead_letters.iter().map(|(r, n)| (r.as_str().to_owned(), *n)).collect(),
            parked: g.parked.iter().map(|(_, n)| n).sum(),
            parked_bytes: g.parked_bytes,
            dead_letter_bytes: g.dead_letter_bytes,
            evicted_parked: 0,
            evicted_dead_letters: 0,
        }),
        destinations: g
            .destinations
            .into_iter()
            .map(|(d, waiting, oldest)| DestinationStatus {
                name: crate::telemetry::destination_label(&d),
                waiting,
                oldest_enqueued_ns: oldest,
                delivered: None,
                write_failures: None,
                failing: None,
                last_success_ns: None,
                last_error: None,
            })
            .collect(),
        bindings,
        bindings_sync_errors: 0,
        unbound: Vec::new(),
        devices: Vec::new(),
    })
}
