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
//! - `signal_streams` timestamps are `TIMESTAMP` without zone and are read as UTC.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Binding, View, ViewTx};
use crate::backoff::Backoff;
use crate::queue::QueueHandle;
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

const QUERY: &str = "
SELECT d.serial, d.id::text, ss.id::text, ss.patient_id::text, coalesce(p.org_id::text, ''), st.code,
       coalesce(tb.influx_org, ''), tb.influx_bucket, tb.measurement, ss.started_at, ss.ended_at, tb.id::text,
       ss.sample_rate_hz::float8
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

const TAGS: &str = "SELECT binding_id::text, tag_key, tag_value FROM timeseries_binding_tag WHERE binding_id::text = ANY($1) ORDER BY binding_id, tag_key";

/// Loads the bindings of `scope` in one repeatable-read snapshot.
pub async fn fetch(
    client: &mut Client,
    scope: &Scope,
    keep_ended: Duration,
) -> Result<Vec<Binding>, tokio_postgres::Error> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let rows = tx.query(QUERY, &[&scope.org_ids, &scope.serials, &keep_ended.as_secs_f64()]).await?;
    let mut bindings = Vec::with_capacity(rows.len());
    let mut ids = Vec::with_capacity(rows.len());
    let ts = |v: Option<chrono::NaiveDateTime>| v.and_then(|t| t.and_utc().timestamp_nanos_opt());
    for r in &rows {
        ids.push(r.get::<_, String>(11));
        bindings.push(Binding {
            serial: r.get(0),
            device_id: r.get(1),
            stream_id: r.get(2),
            patient_id: r.get(3),
            org_id: r.get(4),
            signal_type: r.get(5),
            influx_org: r.get(6),
            influx_bucket: r.get(7),
            measurement: r.get(8),
            started_at: ts(r.get(9)),
            ended_at: ts(r.get(10)),
            sample_rate_hz: r.get(12),
            tags: Default::default(),
        });
    }
    let tags = tx.query(TAGS, &[&ids]).await?;
    tx.commit().await?;
    let index: std::collections::HashMap<&str, usize> =
        ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    for t in &tags {
        let id: String = t.get(0);
        if let Some(&i) = index.get(id.as_str()) {
            bindings[i].tags.insert(t.get(1), t.get(2));
        }
    }
    Ok(bindings)
}

/// Connects, loads the scope once and disconnects (operator commands: `bindings export`).
pub async fn fetch_once(src: &PgSource) -> Result<Vec<Binding>, String> {
    let (mut client, _notes, task) = connect(src).await.map_err(|e| format!("{}: {e}", src.label))?;
    let r = fetch(&mut client, &src.scope, src.keep_ended).await.map_err(|e| format!("{}: {e}", src.label));
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
        let err = session(&src, &mut client, &mut notes, &queue, &view, &counters, &shutdown).await;
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

/// One connected session; returns `None` on shutdown, else why it ended.
#[allow(clippy::too_many_arguments)]
async fn session(
    src: &PgSource,
    client: &mut Client,
    notes: &mut mpsc::UnboundedReceiver<()>,
    queue: &QueueHandle,
    view: &ViewTx,
    counters: &Counters,
    shutdown: &CancellationToken,
) -> Option<String> {
    let timeout = Duration::from_secs(10);
    let mut dirty = true;
    let mut refresh = tokio::time::interval(src.refresh);
    refresh.tick().await;
    let mut poll = tokio::time::interval(src.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            n = notes.recv() => match n {
                Some(()) => dirty = true,
                None => return Some("connection closed".into()),
            },
            _ = refresh.tick() => dirty = true,
            _ = poll.tick() => {
                // The round trip that moves the fresh-until mark.
                let sent = chrono::Utc::now();
                let row = match tokio::time::timeout(timeout, client.query_one("SELECT now()", &[])).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => return Some(e.to_string()),
                    Err(_) => return Some("no answer within 10 s".into()),
                };
                let db_now: chrono::DateTime<chrono::Utc> = row.get(0);
                // Notifications committed before `db_now` have arrived by now: take them in.
                while notes.try_recv().is_ok() {
                    dirty = true;
                }
                if dirty {
                    match tokio::time::timeout(timeout, fetch(client, &src.scope, src.keep_ended)).await {
                        Ok(Ok(list)) => {
                            if let Err(e) = super::apply(list, &format!("postgres {}", src.label), queue, view).await {
                                warn!(error = %e, "Could not apply the new bindings; keeping the previous copy.");
                                continue;
                            }
                            dirty = false;
                        }
                        Ok(Err(e)) => return Some(e.to_string()),
                        Err(_) => return Some("binding query took more than 10 s".into()),
                    }
                }
                let received = chrono::Utc::now();
                let local_mid = sent + (received - sent) / 2;
                let skew_ms = (db_now - local_mid).num_milliseconds();
                counters.clock_skew_ms.store(skew_ms, std::sync::atomic::Ordering::Relaxed);
                // A change is stamped with its transaction's start but visible only from its
                // commit: the margin covers transactions that take that long.
                let fresh_until_ns = db_now.timestamp_nanos_opt().unwrap_or(i64::MIN).saturating_sub(src.margin.as_nanos() as i64);
                // After the table: the mark promises what the table in force holds.
                View::advance(view, fresh_until_ns);
            }
        }
    }
}
