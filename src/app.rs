//! Wiring: builds every stage, connects them with bounded channels and stops them in the
//! order the data flows.
//!
//! Stop order (crash-only design: correctness never depends on it, it only saves redelivery):
//! 1. sources stop taking data (MQTT stops reading; its messages not yet acknowledged stay
//!    with the broker; serial ports close; the HL7 listener stops accepting, and messages not
//!    yet acknowledged are resent by their monitors);
//! 2. intake commits and acknowledges what it holds, then ends (its input closed);
//! 3. sinks finish the request in flight and start no new one;
//! 4. the queue checkpoints its WAL and closes.
//!
//! All of it runs under `gateway.shutdown_grace_ms`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bindings::{self, Freshness, View, postgres::PgSource};
use crate::config::Config;
use crate::ingest::{self, mllp::listener::MllpSource, mqtt::source::MqttSource, serial::SerialSource};
use crate::queue::QueueHandle;
use crate::sink::{self, influx::InfluxClient};
use crate::telemetry::{self, Counters, Telemetry};

/// Messages between the sources and intake. MQTT's inflight window bounds what is in here.
const ENVELOPE_CHANNEL: usize = 4096;

/// How often the counters are written to the status file (`heartguard-gateway status`).
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// How often the counters are logged.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Runtime(String),
}

/// Runs the gateway until `shutdown` completes.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let counters = Arc::new(Counters::default());
    counters.clocks.set_future_tolerance_ns(cfg.clock.future_tolerance_ns());
    // Segments no larger than a delivery batch: a batch then takes whole segments.
    let limits = crate::queue::Limits {
        segment_points: crate::queue::segment::MAX_POINTS.min(cfg.influx.batch_max_lines),
        ..cfg.queue.limits()
    };
    let (queue, store_thread) = QueueHandle::open(&cfg.gateway.data_dir, cfg.queue.synchronous, limits)
        .map_err(|e| StartError::Runtime(format!("opening the queue in {}: {e}", cfg.gateway.data_dir.display())))?;
    let stats = queue.stats().await.map_err(|e| StartError::Runtime(e.to_string()))?;
    info!(data_dir = %cfg.gateway.data_dir.display(), waiting = stats.points, "Queue opened.");

    let table = bindings::load_table(cfg.bindings.file.as_deref(), &queue)
        .await
        .map_err(|p| StartError::Config(p.join("\n")))?;
    if table.is_empty() {
        warn!(source = %table.source, "No bindings: every reading will be counted as unbound and not written.");
    } else {
        info!(bindings = table.len(), source = %table.source, version = %table.version, "Bindings loaded.");
    }
    let pg = pg_source(&cfg).map_err(StartError::Config)?;
    let fresh = match &pg {
        // Until the first round trip, nothing newer than the start is known to be current.
        Some(src) => Freshness::unknown(src.stale_grace),
        None => Freshness::always(),
    };
    let (view_tx, view_rx) = watch::channel(View::new(table, fresh));
    let telemetry = Telemetry::new(&cfg.gateway.id, counters.clone(), queue.clone(), view_rx.clone());
    let endpoint = telemetry::http::start(&cfg.http, telemetry.clone()).await.map_err(StartError::Runtime)?;

    let client = Arc::new(InfluxClient::new(&cfg.influx).map_err(StartError::Config)?);
    let mqtt = if cfg.mqtt.enabled {
        Some(MqttSource::new(&cfg, counters.clone()).map_err(|e| StartError::Config(e.to_string()))?)
    } else {
        None
    };

    let serial: Vec<SerialSource> = cfg.serial.iter().map(|p| SerialSource::new(p, counters.clone())).collect();
    let mllp = if cfg.hl7.enabled {
        let tls = ingest::mllp::listener::tls_acceptor(&cfg.hl7).map_err(|e| StartError::Config(e.to_string()))?;
        Some(MllpSource::bind(&cfg.hl7, tls, counters.clone()).await.map_err(|e| StartError::Runtime(e.to_string()))?)
    } else {
        None
    };

    let ingest_stop = CancellationToken::new();
    let sink_stop = CancellationToken::new();
    let intake_done = CancellationToken::new();
    let (env_tx, env_rx) = mpsc::channel(ENVELOPE_CHANNEL);
    let (touched_tx, touched_rx) = mpsc::unbounded_channel();

    let sinks = tokio::spawn(sink::run_sinks(
        queue.clone(),
        client,
        cfg.influx.clone(),
        counters.clone(),
        touched_rx,
        sink_stop.clone(),
    ));
    let recheck = Arc::new(tokio::sync::Notify::new());
    let parking = ingest::parking::Parking {
        queue: queue.clone(),
        view: view_rx.clone(),
        recheck: recheck.clone(),
        counters: counters.clone(),
        touched: touched_tx.clone(),
        max_park_age: Duration::from_millis(cfg.bindings.max_park_age_ms),
        unbound_log: std::sync::Mutex::new(crate::telemetry::logging::RateLimited::new(Duration::from_secs(60))),
    };
    let parking = tokio::spawn(parking.run(sink_stop.clone()));
    let reporter = if cfg.report.enabled {
        let src = report_source(&cfg).map_err(StartError::Config)?;
        let r = crate::report::Reporter {
            queue: queue.clone(),
            view: view_rx.clone(),
            counters: counters.clone(),
            gateway_id: cfg.gateway.id.clone(),
            pg: src,
            interval: Duration::from_millis(cfg.report.interval_ms),
            gap_factor: cfg.report.gap_factor,
            gap_min: Duration::from_millis(cfg.report.gap_min_ms),
        };
        Some(tokio::spawn(r.run(sink_stop.clone())))
    } else {
        None
    };
    let sync = pg.map(|src| {
        tokio::spawn(bindings::postgres::run(src, queue.clone(), view_tx.clone(), counters.clone(), sink_stop.clone()))
    });
    let intake = {
        let (queue, counters, done) = (queue.clone(), counters.clone(), intake_done.clone());
        let view_rx = view_rx.clone();
        tokio::spawn(async move {
            ingest::intake::run_intake(env_rx, view_rx, queue, counters, touched_tx, recheck).await;
            done.cancel();
        })
    };
    let mqtt = match (&cfg.bindings.trusted_keys.is_empty(), mqtt) {
        (false, Some(m)) => {
            let slot = Arc::new(bindings::push::Slot::default());
            let applier = bindings::push::Applier {
                gateway_id: cfg.gateway.id.clone(),
                max_age: Duration::from_secs(cfg.bindings.push_max_age_hours * 3600),
                data_dir: cfg.gateway.data_dir.clone(),
                queue: queue.clone(),
                view: view_tx.clone(),
                counters: counters.clone(),
            };
            tokio::spawn(applier.run(slot.clone()));
            let topic = bindings::push::topic(&cfg.gateway.id);
            let inbox = bindings::push::Inbox::new(topic, cfg.bindings.trusted_keys.clone(), slot, counters.clone());
            Some(m.with_topic_handler(Arc::new(inbox)))
        }
        (_, m) => m,
    };
    let mut sources: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    if let Some(m) = mqtt {
        sources.push(tokio::spawn(m.run(env_tx.clone(), ingest_stop.clone(), intake_done.clone())));
    }
    for port in serial {
        sources.push(tokio::spawn(port.run(env_tx.clone(), ingest_stop.clone())));
    }
    if let Some(l) = mllp {
        sources.push(tokio::spawn(l.run(env_tx.clone(), ingest_stop.clone())));
    }
    drop(env_tx);

    let reloader = crate::reload::Reloader {
        cfg: cfg.clone(),
        queue: queue.clone(),
        view: view_tx.clone(),
        counters: counters.clone(),
    };
    tokio::spawn(reloader.run(ingest_stop.clone()));

    let summary = {
        let (counters, telemetry) = (counters.clone(), telemetry.clone());
        let data_dir = cfg.gateway.data_dir.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(STATUS_EVERY);
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                if let Err(e) = telemetry.write_status_file(&data_dir, false).await
                    && n == 0
                {
                    warn!(error = %e, "Cannot write the status file (`status` will not show counters).");
                }
                if n > 0 && n.is_multiple_of(SUMMARY_EVERY.as_secs() / STATUS_EVERY.as_secs()) {
                    info!(counters = %counters.summary(), "Periodic summary.");
                }
                n += 1;
            }
        })
    };

    telemetry.set_ready().await;
    info!(gateway = %cfg.gateway.id, version = env!("CARGO_PKG_VERSION"), "Gateway running.");
    shutdown.await;
    telemetry.set_stopping();
    info!("Stopping: no new readings are taken; committing and delivering what is in hand.");

    let grace = Duration::from_millis(cfg.gateway.shutdown_grace_ms);
    let stop = async {
        ingest_stop.cancel();
        for s in sources {
            let _ = s.await;
        }
        let _ = intake.await;
        sink_stop.cancel();
        let _ = parking.await;
        if let Some(r) = reporter {
            let _ = r.await;
        }
        if let Some(s) = sync {
            let _ = s.await;
        }
        let _ = sinks.await;
        summary.abort();
        if let Err(e) = queue.close().await {
            warn!(error = %e, "Closing the queue failed; SQLite recovers from its WAL at the next start.");
        }
        endpoint.stop().await;
    };
    if tokio::time::timeout(grace, stop).await.is_err() {
        warn!(
            grace_ms = grace.as_millis() as u64,
            "Graceful stop overran its grace period; exiting anyway (nothing committed is lost)."
        );
    } else {
        let _ = tokio::task::spawn_blocking(move || store_thread.join()).await;
    }
    let _ = telemetry.write_status_file(&cfg.gateway.data_dir, true).await;
    info!(counters = %counters.summary(), "Gateway stopped.");
    Ok(())
}

/// The database the reporter writes to: `report.postgres_url_file` or the bindings one.
fn report_source(cfg: &Config) -> Result<PgSource, String> {
    let file = cfg.report.postgres_url_file.as_deref().or(cfg.bindings.postgres_url_file.as_deref());
    let file = file.ok_or("report.postgres_url_file: reporting needs a database")?;
    pg_source_from(cfg, file)
}

/// The PostgreSQL binding source, if configured.
pub fn pg_source(cfg: &Config) -> Result<Option<PgSource>, String> {
    match &cfg.bindings.postgres_url_file {
        Some(f) => pg_source_from(cfg, f).map(Some),
        None => Ok(None),
    }
}

fn pg_source_from(cfg: &Config, f: &std::path::Path) -> Result<PgSource, String> {
    let b = &cfg.bindings;
    let url = crate::config::secrets::read_secret(f).map_err(|e| format!("bindings.postgres_url_file: {e}"))?;
    let mut config =
        crate::bindings::config::postgres_config(&url).map_err(|e| format!("bindings.postgres_url_file: {e}"))?;
    config
        .application_name(format!("heartguard-gateway {}", cfg.gateway.id))
        .connect_timeout(Duration::from_secs(10))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    let tls = if b.sslmode == "disable" {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        None
    } else {
        // Require: never a silent fallback to plain text.
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
        let ca = b.ca_file.as_deref().ok_or("bindings.ca_file: required for TLS")?;
        Some(tokio_postgres_rustls::MakeRustlsConnect::new(crate::tls::client_config(ca, None)?))
    };
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(n) => n.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    let label = format!("{}/{}", hosts.join(","), config.get_dbname().unwrap_or(""));
    let max_park_age = Duration::from_millis(b.max_park_age_ms);
    Ok(PgSource {
        config,
        tls,
        scope: bindings::postgres::Scope { org_ids: b.org_ids.clone(), serials: b.serials.clone() },
        refresh: Duration::from_millis(b.refresh_interval_ms),
        poll: Duration::from_millis(b.freshness_poll_ms),
        stale_grace: Duration::from_millis(b.stale_grace_ms),
        margin: Duration::from_millis(b.freshness_margin_ms),
        keep_ended: max_park_age,
        label,
    })
}
