//! The running gateway: [`Gateway::build`] → [`Gateway::spawn`] → [`Running::until`].
//!
//! - **build** opens the queue, loads the bindings, binds every listener (HTTP, HL7) and
//!   constructs every stage, spawning nothing: a problem at this point stops the start with
//!   a message and nothing half-running behind it.
//! - **spawn** puts every task — sources, intake, sinks, parking, the binding sync and
//!   pushes, the reporter, SIGHUP reloads, summaries, watchers, the systemd notifier and the
//!   HTTP endpoint — in one set ([`tasks`]), each with its name and stage.
//! - **until** runs until the shutdown signal, or until a task ends on its own (a panic, a
//!   stage that gave up): either way the gateway stops in order; a task that ended early
//!   makes the exit non-zero instead of leaving a half-dead daemon to the watchdog. Every
//!   task's end is logged.
//!
//! Stop order (crash-only design: correctness never depends on it, it only saves redelivery):
//! 1. sources stop taking data (MQTT stops reading; its messages not yet acknowledged stay
//!    with the broker; serial ports close; the HL7 listener stops accepting, and messages not
//!    yet acknowledged are resent by their monitors);
//! 2. intake commits and acknowledges what it holds, then ends (its input closed);
//! 3. sinks finish the request in flight and start no new one; parking, the binding sync and
//!    the reporter stop;
//! 4. the support tasks are stopped and the queue checkpoints its WAL and closes.
//!
//! Steps 1–4 run under `gateway.shutdown_grace_ms`.

pub mod postgres;
pub mod tasks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::bindings::view::{Freshness, View, ViewRx, ViewTx};
use crate::bindings::{self, postgres::PgSource};
use crate::config::Config;
use crate::ingest::{self, Envelope, mllp::listener::MllpSource, mqtt::source::MqttSource, serial::SerialSource};
use crate::pipeline::{Pipeline, Touched};
use crate::queue::handle::QueueHandle;
use crate::sink::{self, influx::InfluxClient};
use crate::telemetry::service::Telemetry;
use crate::telemetry::{self, Counters};
use tasks::{Ended, Stage, Tasks};

/// Messages between the sources and intake. MQTT's inflight window bounds what is in here.
const ENVELOPE_CHANNEL: usize = 4096;

/// How often the counters are written to the status file (`heartguard-gateway status`).
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// How often the counters are logged.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration cannot be put in force (exit 78).
    #[error("{0}")]
    Config(BoxError),
    /// The start failed (exit 1).
    #[error("{0}")]
    Runtime(BoxError),
    /// A task ended while the gateway ran, or panicked while it stopped; the gateway stopped
    /// in order (exit 1).
    #[error("task {task} ended while the gateway was running; it stopped in order")]
    TaskEnded { task: String },
}

/// A component's own error, kept whole (its message names the key or the file).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn config_error(e: impl Into<BoxError>) -> StartError {
    StartError::Config(e.into())
}

fn runtime_error(e: impl Into<BoxError>) -> StartError {
    StartError::Runtime(e.into())
}

/// Runs the gateway until `shutdown` completes (or a task ends on its own).
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    Gateway::build(cfg).await?.spawn().until(shutdown).await
}

/// Every stage, built and bound, nothing running yet.
pub struct Gateway {
    cfg: Config,
    counters: Arc<Counters>,
    queue: QueueHandle,
    store_thread: std::thread::JoinHandle<()>,
    view_tx: ViewTx,
    view_rx: ViewRx,
    telemetry: Arc<Telemetry>,
    http: Option<TcpListener>,
    client: Arc<InfluxClient>,
    mqtt: Option<MqttSource>,
    serial: Vec<SerialSource>,
    mllp: Option<MllpSource>,
    /// The bindings database, and the reporter's.
    pg: Option<PgSource>,
    report: Option<PgSource>,
}

impl Gateway {
    /// Opens the queue, loads the bindings, binds the listeners and builds every stage.
    pub async fn build(cfg: Config) -> Result<Self, StartError> {
        let counters = Arc::new(Counters::default());
        counters.clocks.set_future_tolerance_ns(cfg.clock.future_tolerance_ns());
        // Segments no larger than a delivery batch: a batch then takes whole segments.
        let limits = crate::queue::Limits {
            segment_points: crate::queue::segment::MAX_POINTS.min(cfg.influx.batch_max_lines),
            ..cfg.queue.limits()
        };
        let (queue, store_thread) = QueueHandle::open(&cfg.gateway.data_dir, cfg.queue.synchronous, limits)
            .map_err(|e| runtime_error(format!("opening the queue in {}: {e}", cfg.gateway.data_dir.display())))?;
        let stats = queue.stats().await.map_err(runtime_error)?;
        info!(data_dir = %cfg.gateway.data_dir.display(), waiting = stats.points, "Queue opened.");

        let table =
            bindings::load_table(cfg.bindings.file.as_deref(), &queue).await.map_err(|p| config_error(p.join("\n")))?;
        if table.is_empty() {
            warn!(source = %table.source, "No bindings: every reading will be counted as unbound and not written.");
        } else {
            info!(bindings = table.len(), source = %table.source, version = %table.version, "Bindings loaded.");
        }
        let pg = postgres::pg_source(&cfg).map_err(config_error)?;
        let report = if cfg.report.enabled { Some(postgres::report_source(&cfg).map_err(config_error)?) } else { None };
        let fresh = match &pg {
            // Until the first round trip, nothing newer than the start is known to be current.
            Some(src) => Freshness::unknown(src.stale_grace),
            None => Freshness::always(),
        };
        let (view_tx, view_rx) = watch::channel(View::new(table, fresh));
        let telemetry = Telemetry::new(&cfg.gateway.id, counters.clone(), queue.clone(), view_rx.clone());
        let http = if cfg.http.enabled {
            Some(
                TcpListener::bind(&cfg.http.listen)
                    .await
                    .map_err(|e| runtime_error(format!("HTTP endpoint on {} (http.listen): {e}", cfg.http.listen)))?,
            )
        } else {
            None
        };

        let client = Arc::new(InfluxClient::new(&cfg.influx).map_err(config_error)?);
        let mqtt =
            if cfg.mqtt.enabled { Some(MqttSource::new(&cfg, counters.clone()).map_err(config_error)?) } else { None };
        let serial = cfg.serial.iter().map(|p| SerialSource::new(p, counters.clone())).collect();
        let mllp = if cfg.hl7.enabled {
            let tls = ingest::mllp::listener::tls_acceptor(&cfg.hl7).map_err(config_error)?;
            Some(MllpSource::bind(&cfg.hl7, tls, counters.clone()).await.map_err(runtime_error)?)
        } else {
            None
        };
        Ok(Self {
            cfg,
            counters,
            queue,
            store_thread,
            view_tx,
            view_rx,
            telemetry,
            http,
            client,
            mqtt,
            serial,
            mllp,
            pg,
            report,
        })
    }

    /// Where the HTTP endpoint listens (`http.listen` may name port 0).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Where the HL7 listener listens (`hl7.listen` may name port 0).
    pub fn mllp_addr(&self) -> Option<SocketAddr> {
        self.mllp.as_ref().and_then(MllpSource::local_addr)
    }

    /// Starts every task.
    pub fn spawn(self) -> Running {
        let Gateway {
            cfg,
            counters,
            queue,
            store_thread,
            view_tx,
            view_rx,
            telemetry,
            http,
            client,
            mqtt,
            serial,
            mllp,
            pg,
            report,
        } = self;
        let (pipe, touched_rx) = Pipeline::new(queue.clone(), view_rx.clone(), counters.clone());
        let mut s =
            Spawner { cfg: &cfg, pipe: &pipe, view_tx: &view_tx, stops: Stops::default(), tasks: Tasks::default() };
        let recheck = Arc::new(tokio::sync::Notify::new());
        s.delivery(touched_rx, client, recheck.clone(), pg, report);
        let env_tx = s.sources(recheck, mqtt, serial, mllp);
        s.support(&telemetry, http);
        let Spawner { stops, tasks, .. } = s;
        Running { cfg, counters, queue, store_thread, telemetry, tasks, stops, env_tx: Some(env_tx) }
    }
}

/// Puts the tasks of each stage in the set.
struct Spawner<'a> {
    cfg: &'a Config,
    pipe: &'a Pipeline,
    view_tx: &'a ViewTx,
    stops: Stops,
    tasks: Tasks,
}

impl Spawner<'_> {
    /// Sinks, parking, the reporter and the PostgreSQL binding sync.
    fn delivery(
        &mut self,
        touched: mpsc::UnboundedReceiver<Touched>,
        client: Arc<InfluxClient>,
        recheck: Arc<Notify>,
        pg: Option<PgSource>,
        report: Option<PgSource>,
    ) {
        let (cfg, pipe, stop) = (self.cfg, self.pipe, &self.stops.delivery);
        let sinks = sink::run_sinks(pipe.clone(), touched, client, cfg.influx.clone(), stop.clone());
        self.tasks.spawn("sinks", Stage::Delivery, sinks);
        let parking = ingest::parking::Parking {
            pipe: pipe.clone(),
            recheck,
            max_park_age: Duration::from_millis(cfg.bindings.max_park_age_ms),
            unbound_log: std::sync::Mutex::new(telemetry::logging::RateLimited::new(Duration::from_secs(60))),
        };
        self.tasks.spawn("parking", Stage::Delivery, parking.run(stop.clone()));
        if let Some(pg) = report {
            let r = crate::report::Reporter {
                pipe: pipe.clone(),
                gateway_id: cfg.gateway.id.clone(),
                pg,
                interval: Duration::from_millis(cfg.report.interval_ms),
                gap_factor: cfg.report.gap_factor,
                gap_min: Duration::from_millis(cfg.report.gap_min_ms),
            };
            self.tasks.spawn("reporter", Stage::Delivery, r.run(stop.clone()));
        }
        if let Some(src) = pg {
            let sync = bindings::postgres::run(
                src,
                pipe.queue.clone(),
                self.view_tx.clone(),
                pipe.counters.clone(),
                stop.clone(),
            );
            self.tasks.spawn("bindings sync", Stage::Delivery, sync);
        }
    }

    /// Intake and the sources feeding it (with the push receiver on the MQTT connection);
    /// returns the sender `Running` holds until the stop.
    fn sources(
        &mut self,
        recheck: Arc<Notify>,
        mqtt: Option<MqttSource>,
        serial: Vec<SerialSource>,
        mllp: Option<MllpSource>,
    ) -> mpsc::Sender<Envelope> {
        let (env_tx, env_rx) = mpsc::channel::<Envelope>(ENVELOPE_CHANNEL);
        let intake_done = CancellationToken::new();
        let (pipe, done) = (self.pipe.clone(), intake_done.clone());
        self.tasks.spawn("intake", Stage::Intake, async move {
            ingest::intake::run_intake(env_rx, pipe, recheck).await;
            done.cancel();
        });
        let stop = self.stops.sources.clone();
        if let Some(m) = mqtt.map(|m| self.with_pushes(m)) {
            self.tasks.spawn("mqtt", Stage::Sources, m.run(env_tx.clone(), stop.clone(), intake_done));
        }
        for port in serial {
            let name = format!("serial {}", port.path());
            self.tasks.spawn(name, Stage::Sources, port.run(env_tx.clone(), stop.clone()));
        }
        if let Some(l) = mllp {
            self.tasks.spawn("hl7", Stage::Sources, l.run(env_tx.clone(), stop));
        }
        env_tx
    }

    /// With `bindings.trusted_keys`, the MQTT source also takes signed binding snapshots.
    fn with_pushes(&mut self, m: MqttSource) -> MqttSource {
        let (cfg, pipe) = (self.cfg, self.pipe);
        if cfg.bindings.trusted_keys.is_empty() {
            return m;
        }
        let slot = Arc::new(bindings::push::inbox::Slot::default());
        let applier = bindings::push::applier::Applier {
            gateway_id: cfg.gateway.id.clone(),
            max_age: Duration::from_secs(cfg.bindings.push_max_age_hours * 3600),
            data_dir: cfg.gateway.data_dir.clone(),
            queue: pipe.queue.clone(),
            view: self.view_tx.clone(),
            counters: pipe.counters.clone(),
        };
        self.tasks.spawn("binding pushes", Stage::Support, applier.run(slot.clone()));
        let topic = bindings::push::topic(&cfg.gateway.id);
        let inbox =
            bindings::push::inbox::Inbox::new(topic, cfg.bindings.trusted_keys.clone(), slot, pipe.counters.clone());
        m.with_topic_handler(Arc::new(inbox))
    }

    /// Reloads, the bindings watcher, summaries and the HTTP endpoint.
    fn support(&mut self, telemetry: &Arc<Telemetry>, http: Option<TcpListener>) {
        let (cfg, pipe) = (self.cfg, self.pipe);
        let reloader = crate::reload::Reloader {
            cfg: cfg.clone(),
            queue: pipe.queue.clone(),
            view: self.view_tx.clone(),
            counters: pipe.counters.clone(),
        };
        self.tasks.spawn("reload", Stage::Support, reloader.run(self.stops.sources.clone()));
        self.tasks.spawn("bindings watch", Stage::Support, telemetry.clone().watch_bindings(pipe.view.clone()));
        let summaries = summaries(telemetry.clone(), pipe.counters.clone(), cfg.gateway.data_dir.clone());
        self.tasks.spawn("summaries", Stage::Support, summaries);
        if let Some(listener) = http {
            let serve = telemetry::http::serve(listener, telemetry.clone(), self.stops.support.clone());
            self.tasks.spawn("http", Stage::Support, serve);
        }
    }
}

/// The cancellation of each stage.
#[derive(Default)]
struct Stops {
    sources: CancellationToken,
    delivery: CancellationToken,
    support: CancellationToken,
}

/// The gateway, running.
pub struct Running {
    cfg: Config,
    counters: Arc<Counters>,
    queue: QueueHandle,
    store_thread: std::thread::JoinHandle<()>,
    telemetry: Arc<Telemetry>,
    tasks: Tasks,
    stops: Stops,
    /// Held until the stop: intake ends only once every sender is gone, so that a gateway
    /// without sources does not see intake end on its own.
    env_tx: Option<mpsc::Sender<Envelope>>,
}

impl Running {
    /// Serves until `shutdown` completes or a task ends on its own, then stops in order.
    pub async fn until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
        self.telemetry.set_ready().await;
        self.tasks.spawn("systemd", Stage::Support, self.telemetry.clone().notify_systemd());
        info!(gateway = %self.cfg.gateway.id, version = env!("CARGO_PKG_VERSION"), "Gateway running.");
        let mut shutdown = std::pin::pin!(shutdown);
        let early = loop {
            tokio::select! {
                _ = &mut shutdown => break None,
                ended = self.tasks.next() => match ended {
                    // A support task may end (no SIGHUP on this system); a panic may not.
                    Some(e) if e.stage == Stage::Support && e.how == tasks::Ending::Returned => continue,
                    Some(e) => break Some(e),
                    None => break None,
                },
            }
        };
        if let Some(e) = &early {
            error!(task = %e.name, "A task ended while the gateway was running; stopping in order.");
        }
        let fault = self.stop().await;
        match early.or(fault) {
            None => Ok(()),
            Some(Ended { name, .. }) => Err(StartError::TaskEnded { task: name }),
        }
    }

    /// Stops the stages in the order the data flows; returns a task that panicked meanwhile.
    async fn stop(mut self) -> Option<Ended> {
        self.telemetry.set_stopping();
        info!("Stopping: no new readings are taken; committing and delivering what is in hand.");
        let grace = Duration::from_millis(self.cfg.gateway.shutdown_grace_ms);
        let (queue, tasks, stops) = (&self.queue, &mut self.tasks, &self.stops);
        let env_tx = self.env_tx.take();
        let ordered = async move {
            stops.sources.cancel();
            drop(env_tx);
            let mut fault = tasks.finish_up_to(Stage::Intake).await;
            stops.delivery.cancel();
            fault = fault.or(tasks.finish_up_to(Stage::Delivery).await);
            stops.support.cancel();
            tasks.abort_rest().await;
            if let Err(e) = queue.close().await {
                warn!(error = %e, "Closing the queue failed; SQLite recovers from its WAL at the next start.");
            }
            fault
        };
        let fault = match tokio::time::timeout(grace, ordered).await {
            Ok(fault) => {
                let _ = tokio::task::spawn_blocking(move || self.store_thread.join()).await;
                fault
            }
            Err(_) => {
                warn!(
                    grace_ms = grace.as_millis() as u64,
                    "Graceful stop overran its grace period; exiting anyway (nothing committed is lost)."
                );
                None
            }
        };
        let _ = self.telemetry.write_status_file(&self.cfg.gateway.data_dir, true).await;
        info!(counters = %self.counters.summary(), "Gateway stopped.");
        fault
    }
}

/// Writes the status file every [`STATUS_EVERY`] and logs the counters every [`SUMMARY_EVERY`].
async fn summaries(telemetry: Arc<Telemetry>, counters: Arc<Counters>, data_dir: std::path::PathBuf) {
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
}

#[cfg(test)]
impl Running {
    /// Adds a task, as if a stage had started it.
    fn spawn_task(&mut self, name: &str, stage: Stage, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(name, stage, task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gateway with no sources and nothing reachable, on a fresh data directory.
    fn config(dir: &std::path::Path) -> Config {
        let mut cfg = Config::default();
        cfg.gateway.data_dir = dir.to_path_buf();
        cfg.mqtt.enabled = false;
        cfg.http.listen = "127.0.0.1:0".into();
        cfg.influx.url = "http://127.0.0.1:9".into();
        cfg
    }

    /// A stage that ends on its own stops the gateway in order with an error naming it; it
    /// used to be left to the watchdog while the rest ran on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stage_that_ends_early_stops_the_gateway_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gw = Gateway::build(config(dir.path())).await.expect("build");
        assert!(gw.http_addr().is_some_and(|a| a.port() != 0), "port 0 is resolved at build");
        let mut running = gw.spawn();
        running.spawn_task("doomed", Stage::Delivery, async { panic!("injected") });
        let r = tokio::time::timeout(Duration::from_secs(30), running.until(std::future::pending())).await;
        match r {
            Ok(Err(StartError::TaskEnded { task })) => assert_eq!(task, "doomed"),
            other => panic!("expected an orderly stop naming the task, got {other:?}"),
        }
        // The queue was closed properly: it opens again at once.
        let again = Gateway::build(config(dir.path())).await.expect("build again");
        drop(again);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shutdown_stops_every_task_and_returns_ok() {
        let dir = tempfile::tempdir().expect("tempdir");
        let running = Gateway::build(config(dir.path())).await.expect("build").spawn();
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            running.until(tokio::time::sleep(Duration::from_millis(200))),
        )
        .await;
        assert!(matches!(r, Ok(Ok(()))), "{r:?}");
    }
}
