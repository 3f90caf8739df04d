//! Binding sync from the central HeartGuard PostgreSQL database.
//!
//! - At start, every `refresh_interval_ms`, and on every change notification
//!   (`LISTEN heartguard_bindings`, triggers from `sql/heartguard-gateway-notify.sql`) the
//!   gateway loads the bindings of its scope in one query (one snapshot: never half an
//!   update) and replaces its cache and table whole.
//! - **Freshness.** Notifications arrive between transactions in commit order. After a round
//!   trip on the listening connection (`SELECT now()` every `freshness_poll_ms`), every change
//!   committed before that `now()` has been received and applied; that instant is the
//!   table's *fresh-until* mark. Intake resolves a reading only once its time is at or before
//!   the mark (otherwise it is parked until then), so a reading is never attributed with a
//!   copy older than the reading itself. When PostgreSQL is unreachable the mark stops;
//!   after `stale_grace_ms` readings are resolved on the cached copy (counted as stale).
//! - Only `patients.org_id` is read from `patients`: names are personal data.
//! - `signal_streams` timestamps are `TIMESTAMP` without zone and are read as UTC (a
//!   `timestamptz` column reads the same: both are taken as epoch microseconds).
//! - A row the gateway cannot read (a NULL or a type it does not expect, after a central
//!   schema change) refuses the whole snapshot: the bindings in force stay, the freshness
//!   mark stops (readings wait, then are resolved on the copy in force as for an unreachable
//!   database), and the snapshot is tried again every [`REFUSED_RETRY`] while changes are
//!   pending.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::source::BindingSource;
use super::view::{View, ViewTx};
use crate::backoff::Backoff;
use crate::model::Binding;
use crate::queue::handle::QueueHandle;
use crate::telemetry::Counters;

/// The notification channel the shipped triggers use.
pub const CHANNEL: &str = "heartguard_bindings";

/// Which bindings this gateway loads.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub org_ids: Vec<String>,
    pub serials: Vec<String>,
}

/// Everything the sync loop needs, built from a validated configuration.
pub struct PgSource {
    pub config: tokio_postgres::Config,
    pub tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    pub scope: Scope,
    pub refresh: Duration,
    pub poll: Duration,
    pub stale_grace: Duration,
    /// Subtracted from each fresh-until mark.
    pub margin: Duration,
    /// Ended streams are kept this long (at least the parking limit), so a late reading
    /// taken before a device moved still finds the stream it was measured on.
    pub keep_ended: Duration,
    /// Shown in logs and `bindings list` (host and database, never the password).
    pub label: String,
}

/// How often a refused snapshot is tried again.
pub const REFUSED_RETRY: Duration = Duration::from_secs(5);

// Text columns are cast and times taken as epoch microseconds, so that a central column
// changing between VARCHAR, TEXT or CITEXT, or between TIMESTAMP and TIMESTAMPTZ, reads alike.
const QUERY: &str = "
SELECT d.serial::text, d.id::text, ss.id::text, ss.patient_id::text, coalesce(p.org_id::text, ''), st.code::text,
       coalesce(tb.influx_org::text, ''), tb.influx_bucket::text, tb.measurement::text,
       (extract(epoch FROM ss.started_at) * 1000000)::int8, (extract(epoch FROM ss.ended_at) * 1000000)::int8,
       tb.id::text, ss.sample_rate_hz::float8
FROM timeseries_binding tb
JOIN signal_streams ss ON ss.id = tb.stream_id
JOIN devices d ON d.id = ss.device_id
JOIN patients p ON p.id = ss.patient_id
JOIN signal_types st ON st.id = ss.signal_type_id
WHERE d.active
  AND (ss.ended_at IS NULL OR ss.ended_at > (now() AT TIME ZONE 'UTC') - make_interval(secs => $3::float8))
  AND (cardinality($1::text[]) = 0 OR p.org_id::text = ANY($1))
  AND (cardinality($2::text[]) = 0 OR d.serial = ANY($2))
ORDER BY d.serial, ss.started_at, tb.id";

const TAGS: &str = "SELECT binding_id::text, tag_key::text, tag_value::text FROM timeseries_binding_tag WHERE binding_id::text = ANY($1) ORDER BY binding_id, tag_key";

/// Why a snapshot could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The database or the connection failed: reconnect.
    #[error("{0}")]
    Database(tokio_postgres::Error),
    /// The data is there but not in the shape the gateway reads (a NULL, another type).
    #[error("column {column} of a binding row cannot be read: {error}")]
    Unreadable { column: usize, error: tokio_postgres::Error },
}

impl From<tokio_postgres::Error> for FetchError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Database(e)
    }
}

/// Reads column `i` of `row`, naming it when it cannot be read.
fn column<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a tokio_postgres::Row, i: usize) -> Result<T, FetchError> {
    row.try_get(i).map_err(|error| FetchError::Unreadable { column: i + 1, error })
}

/// Loads the bindings of `scope` in one repeatable-read snapshot.
pub async fn fetch(client: &mut Client, scope: &Scope, keep_ended: Duration) -> Result<Vec<Binding>, FetchError> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let rows = tx.query(QUERY, &[&scope.org_ids, &scope.serials, &keep_ended.as_secs_f64()]).await?;
    let mut bindings = Vec::with_capacity(rows.len());
    let mut ids = Vec::with_capacity(rows.len());
    let ts = |v: Option<i64>| v.and_then(|us| us.checked_mul(1000));
    for r in &rows {
        ids.push(column::<String>(r, 11)?);
        bindings.push(Binding {
            serial: column(r, 0)?,
            device_id: column(r, 1)?,
            stream_id: column(r, 2)?,
            patient_id: column(r, 3)?,
            org_id: column(r, 4)?,
            signal_type: column(r, 5)?,
            influx_org: column(r, 6)?,
            influx_bucket: column(r, 7)?,
            measurement: column(r, 8)?,
            started_at: ts(column(r, 9)?),
            ended_at: ts(column(r, 10)?),
            sample_rate_hz: column(r, 12)?,
            tags: Default::default(),
        });
    }
    let tags = tx.query(TAGS, &[&ids]).await?;
    tx.commit().await?;
    let index: std::collections::HashMap<&str, usize> =
        ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    for t in &tags {
        let id: String = column(t, 0)?;
        if let Some(&i) = index.get(id.as_str()) {
            bindings[i].tags.insert(column(t, 1)?, column(t, 2)?);
        }
    }
    Ok(bindings)
}

/// Why a one-off load failed, with the label of the database it was read from.
#[derive(Debug, thiserror::Error)]
#[error("{label}: {error}")]
pub struct FetchOnceError {
    pub label: String,
    #[source]
    pub error: FetchError,
}

/// Connects, loads the scope once and disconnects (operator commands: `bindings export`).
pub async fn fetch_once(src: &PgSource) -> Result<Vec<Binding>, FetchOnceError> {
    let failed = |error| FetchOnceError { label: src.label.clone(), error };
    let (mut client, _notes, task) = connect(src).await.map_err(|e| failed(FetchError::Database(e)))?;
    let r = fetch(&mut client, &src.scope, src.keep_ended).await.map_err(failed);
    task.abort();
    r
}

/// Connects for a caller that needs no notifications (the reporter); the returned task
/// drives the connection and ends with it.
pub async fn connect_client(src: &PgSource) -> Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let (client, _notes, task) = connect(src).await?;
    Ok((client, task))
}

/// Connects and starts the task that drives the connection and forwards notifications.
async fn connect(
    src: &PgSource,
) -> Result<(Client, mpsc::UnboundedReceiver<()>, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let (ntx, nrx) = mpsc::unbounded_channel();
    let (client, task) = match &src.tls {
        None => {
            let (client, conn) = src.config.connect(NoTls).await?;
            (client, tokio::spawn(drive(conn, ntx)))
        }
        Some(tls) => {
            let (client, conn) = src.config.connect(tls.clone()).await?;
            (client, tokio::spawn(drive(conn, ntx)))
        }
    };
    Ok((client, nrx, task))
}

/// Drives a connection. Spawning the connection future directly would throw notifications
/// away; `poll_message` hands them over.
async fn drive<S, T>(mut conn: tokio_postgres::Connection<S, T>, ntx: mpsc::UnboundedSender<()>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(_))) => {
                let _ = ntx.send(());
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                debug!(error = %e, "PostgreSQL connection ended.");
                return;
            }
            None => return,
        }
    }
}

/// The sync loop: runs until `shutdown`, reconnecting with back-off.
pub async fn run(
    src: PgSource,
    queue: QueueHandle,
    view: ViewTx,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    let mut was_connected = true;
    loop {
        let (mut client, mut notes, task) = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = connect(&src) => match c {
                Ok(c) => c,
                Err(e) => {
                    counters.sync_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if was_connected || backoff.attempts.is_multiple_of(20) {
                        warn!(database = %src.label, error = %e, "Cannot reach PostgreSQL for bindings; working from the cached copy and retrying.");
                    }
                    was_connected = false;
                    let d = backoff.next_delay();
                    tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(d) => {} }
                    continue;
                }
            },
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
            warn!(database = %src.label, error = %e, "LISTEN failed; reconnecting.");
            task.abort();
            continue;
        }
        info!(database = %src.label, "Connected to PostgreSQL for bindings; listening for changes.");
        was_connected = true;
        backoff.reset();
        let mut session = Session {
            src: &src,
            client: &mut client,
            queue: &queue,
            view: &view,
            counters: &counters,
            dirty: true,
            refused: None,
        };
        let err = session.run(&mut notes, &shutdown).await;
        task.abort();
        match err {
            None => return,
            Some(e) => {
                counters.sync_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(database = %src.label, error = %e, "Lost the PostgreSQL binding connection; working from the cached copy and reconnecting.");
            }
        }
    }
}

/// How long the database may take to answer a round trip or the binding query.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connected session ended: the sync reconnects.
#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error("connection closed")]
    Closed,
    #[error("{0}")]
    Database(tokio_postgres::Error),
    #[error("no answer within 10 s")]
    NoAnswer,
    #[error("binding query took more than 10 s")]
    SlowQuery,
}

/// One connected session: what it works with, and what it still owes the table.
struct Session<'a> {
    src: &'a PgSource,
    client: &'a mut Client,
    queue: &'a QueueHandle,
    view: &'a ViewTx,
    counters: &'a Counters,
    /// Changes may have been committed that the table does not hold yet.
    dirty: bool,
    /// While a snapshot is refused: when to try again, and why (logged once per reason).
    refused: Option<(tokio::time::Instant, String)>,
}

impl Session<'_> {
    /// Runs until `shutdown` (then `None`) or until the connection fails (then why).
    async fn run(&mut self, notes: &mut mpsc::UnboundedReceiver<()>, shutdown: &CancellationToken) -> Option<Lost> {
        let mut refresh = tokio::time::interval(self.src.refresh);
        refresh.tick().await;
        let mut poll = tokio::time::interval(self.src.poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                n = notes.recv() => match n {
                    Some(()) => self.dirty = true,
                    None => return Some(Lost::Closed),
                },
                _ = refresh.tick() => self.dirty = true,
                _ = poll.tick() => if let Err(lost) = self.round_trip(notes).await {
                    return Some(lost);
                },
            }
        }
    }

    /// The round trip that moves the fresh-until mark: the database's clock, then every
    /// change committed before it in the table, then the mark.
    async fn round_trip(&mut self, notes: &mut mpsc::UnboundedReceiver<()>) -> Result<(), Lost> {
        let sent = chrono::Utc::now();
        let row = match tokio::time::timeout(ANSWER_TIMEOUT, self.client.query_one("SELECT now()", &[])).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(Lost::Database(e)),
            Err(_) => return Err(Lost::NoAnswer),
        };
        let db_now: chrono::DateTime<chrono::Utc> = row.get(0);
        // Notifications committed before `db_now` have arrived by now: take them in.
        while notes.try_recv().is_ok() {
            self.dirty = true;
        }
        // The mark stays where it is until a snapshot is in force.
        if self.dirty && !self.load_snapshot().await? {
            return Ok(());
        }
        let received = chrono::Utc::now();
        let local_mid = sent + (received - sent) / 2;
        let skew_ms = (db_now - local_mid).num_milliseconds();
        self.counters.clock_skew_ms.store(skew_ms, std::sync::atomic::Ordering::Relaxed);
        // A change is stamped with its transaction's start but visible only from its
        // commit: the margin covers transactions that take that long.
        let fresh_until_ns =
            db_now.timestamp_nanos_opt().unwrap_or(i64::MIN).saturating_sub(self.src.margin.as_nanos() as i64);
        // After the table: the mark promises what the table in force holds.
        View::advance(self.view, fresh_until_ns);
        Ok(())
    }

    /// Loads the scope's snapshot and puts it in force; true once the table holds it, false
    /// while it is refused or could not be applied (tried again at the next round trip).
    async fn load_snapshot(&mut self) -> Result<bool, Lost> {
        let src = self.src;
        if self.refused.as_ref().is_some_and(|(retry, _)| tokio::time::Instant::now() < *retry) {
            return Ok(false);
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, fetch(self.client, &src.scope, src.keep_ended)).await {
            Ok(Ok(list)) => {
                let source = BindingSource::Postgres(src.label.clone());
                if let Err(e) = super::apply(list, source, self.queue, self.view).await {
                    warn!(error = %e, "Could not apply the new bindings; keeping the previous copy.");
                    return Ok(false);
                }
                if self.refused.take().is_some() {
                    info!(database = %src.label, "Binding snapshots from PostgreSQL are readable again.");
                }
                self.dirty = false;
                Ok(true)
            }
            Ok(Err(FetchError::Database(e))) => Err(Lost::Database(e)),
            Ok(Err(e @ FetchError::Unreadable { .. })) => {
                self.counters.sync_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let why = e.to_string();
                if self.refused.as_ref().is_none_or(|(_, before)| *before != why) {
                    error!(
                        database = %src.label,
                        error = %why,
                        "Refused a binding snapshot from PostgreSQL: a row does not read as the gateway expects (a central schema change?). The bindings in force stay; readings newer than the last fresh copy wait, then use them."
                    );
                }
                self.refused = Some((tokio::time::Instant::now() + REFUSED_RETRY, why));
                Ok(false)
            }
            Err(_) => Err(Lost::SlowQuery),
        }
    }
}
