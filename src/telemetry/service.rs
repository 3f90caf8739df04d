//! The state behind the HTTP endpoint and the systemd notifications: what is ready, what is
//! stuck, and the figures of the moment. The one part of telemetry that holds the queue and
//! the binding view; no stage imports it (the application builds it and hands it to
//! [`super::http`] and [`super::systemd`]).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::counters::{Counters, destination_label};
use super::metrics::{BindingsInfo, Gauges};
use super::status::{
    DEVICES_WINDOW_NS, DestinationStatus, DeviceStatus, ORIGIN_DAEMON, ORIGIN_FILE, ORIGIN_STOPPED, PortView,
    QueueStatus, STATUS_FILE, SourceStatus, Status,
};
use super::systemd;
use crate::bindings::table::BindingTable;
use crate::bindings::view::ViewRx;
use crate::queue::handle::QueueHandle;
use crate::queue::inspect::QueueGauges;

/// How long the queue's store may take to answer a health probe.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the figures for a scrape may take.
const GAUGES_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared by the endpoint's handlers and the application's wiring.
pub struct Telemetry {
    pub counters: Arc<Counters>,
    queue: QueueHandle,
    view: ViewRx,
    gateway_id: String,
    started_ns: i64,
    /// When the binding table in force was put in force.
    bindings_loaded_ns: AtomicI64,
    ready: AtomicBool,
    stopping: AtomicBool,
    /// Ends the systemd notifier (watchdog and status) at a graceful stop.
    notifier_stop: CancellationToken,
}

impl Telemetry {
    pub fn new(gateway_id: &str, counters: Arc<Counters>, queue: QueueHandle, view: ViewRx) -> Arc<Self> {
        let now = crate::now_ns();
        Arc::new(Self {
            counters,
            queue,
            view,
            gateway_id: gateway_id.to_owned(),
            started_ns: now,
            bindings_loaded_ns: AtomicI64::new(now),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            notifier_stop: CancellationToken::new(),
        })
    }

    /// Every stage is running: `/readyz` answers 200 from now on (while nothing is wrong),
    /// systemd is told `READY=1`, and the watchdog starts being fed (while healthy).
    pub async fn set_ready(self: &Arc<Self>) {
        self.ready.store(true, Relaxed);
        systemd::ready(&self.status_line().await);
    }

    /// Feeds the systemd watchdog and its status line until the stop begins
    /// ([`Self::set_stopping`]).
    pub async fn notify_systemd(self: Arc<Self>) {
        let stop = self.notifier_stop.clone();
        systemd::run(self, stop).await;
    }

    /// Notes when a new binding table is put in force (status, metrics), until the view's
    /// sender is gone.
    pub async fn watch_bindings(self: Arc<Self>, mut view: ViewRx) {
        // The view also changes whenever the freshness mark advances: only a new table counts.
        let mut table = view.borrow_and_update().table.clone();
        while view.changed().await.is_ok() {
            let v = view.borrow_and_update();
            if !v.holds(&table) {
                table = v.table.clone();
                self.bindings_loaded_ns.store(crate::now_ns(), Relaxed);
            }
        }
    }

    /// A graceful stop began: `/readyz` answers 503, systemd is told `STOPPING=1` and the
    /// watchdog is no longer fed.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Relaxed);
        self.notifier_stop.cancel();
        systemd::stopping();
    }

    /// One line for systemd's `STATUS=` (`systemctl status`).
    pub async fn status_line(&self) -> String {
        let waiting = match tokio::time::timeout(PING_TIMEOUT, self.queue.gauges()).await {
            Ok(Ok(g)) => format!("{} points waiting", g.points),
            _ => "queue not answering".to_owned(),
        };
        let b = self.bindings();
        let failing = self.counters.destinations().iter().filter(|(_, d)| d.failing.load(Relaxed)).count();
        let sources: Vec<String> = self
            .counters
            .sources()
            .iter()
            .filter_map(|((s, _), c)| {
                Some(format!("{s} {}", if c.connection()? { "connected" } else { "NOT connected" }))
            })
            .collect();
        let mut line = format!("{waiting}; {} bindings ({})", b.count, b.source);
        if !sources.is_empty() {
            line.push_str(&format!("; {}", sources.join(", ")));
        }
        if failing > 0 {
            line.push_str(&format!("; {failing} destination(s) FAILING"));
        }
        line
    }

    /// What keeps the gateway from being healthy: stages that stopped beating, a queue store
    /// that does not answer. Empty when healthy.
    pub async fn health_problems(&self) -> Vec<String> {
        let mut p: Vec<String> = self
            .counters
            .health
            .stale()
            .into_iter()
            .map(|(stage, age)| format!("stage {stage} has not beaten for {} s", age.as_secs()))
            .collect();
        match tokio::time::timeout(PING_TIMEOUT, self.queue.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => p.push(format!("queue: {e}")),
            Err(_) => p.push(format!("queue: no answer within {} s", PING_TIMEOUT.as_secs())),
        }
        p
    }

    /// What keeps the gateway from taking data: not started yet, stopping, unhealthy, no
    /// bindings ever loaded, monitors turned away at `hl7.max_connections`. Empty when ready.
    pub async fn readiness_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.stopping.load(Relaxed) {
            p.push("stopping".to_owned());
        } else if !self.ready.load(Relaxed) {
            p.push("starting".to_owned());
        }
        if self.view.borrow().table.source == crate::bindings::source::BindingSource::None {
            p.push("no bindings loaded".to_owned());
        }
        p.extend(self.counters.mllp.problem(crate::now_ns()));
        p.extend(self.health_problems().await);
        p
    }

    fn bindings(&self) -> BindingsInfo {
        let loaded_ns = self.bindings_loaded_ns.load(Relaxed);
        let view = self.view.borrow();
        let table: &BindingTable = &view.table;
        BindingsInfo {
            count: table.len() as u64,
            source: table.source.kind().to_owned(),
            version: table.version.clone(),
            loaded_ns,
        }
    }

    /// The figures of this moment, for a scrape.
    pub async fn gauges(&self) -> Gauges {
        let queue = match tokio::time::timeout(GAUGES_TIMEOUT, self.queue.gauges()).await {
            Ok(Ok(g)) => Some(g),
            _ => None,
        };
        Gauges {
            queue,
            bindings: self.bindings(),
            heartbeats: self.counters.health.ages(),
            ready: self.readiness_problems().await.is_empty(),
            started_ns: self.started_ns,
            now_ns: crate::now_ns(),
        }
    }

    /// Writes the summary to `data_dir/status.json` (atomically: a temporary file renamed
    /// over it), for `status` when the HTTP endpoint is off or unreachable. `stopped` marks
    /// the last one, written at a graceful stop.
    pub async fn write_status_file(&self, data_dir: &std::path::Path, stopped: bool) -> std::io::Result<()> {
        let mut status = self.status().await;
        status.origin = if stopped { ORIGIN_STOPPED } else { ORIGIN_FILE }.into();
        let tmp = data_dir.join(format!("{STATUS_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&status).map_err(std::io::Error::other)?)?;
        std::fs::rename(tmp, data_dir.join(STATUS_FILE))
    }

    /// The operator's summary (served as JSON at `/status`).
    pub async fn status(&self) -> Status {
        let g = self.gauges().await;
        let c = &self.counters;
        let table = self.view.borrow().table.clone();
        Status {
            origin: ORIGIN_DAEMON.into(),
            gateway_id: self.gateway_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            now_ns: g.now_ns,
            started_ns: Some(self.started_ns),
            ready: Some(g.ready),
            stuck_stages: c.health.stale().into_iter().map(|(s, a)| (s, a.as_secs())).collect(),
            sources: sources(c),
            ports: ports(c),
            queue: g.queue.as_ref().map(queue),
            destinations: destinations(c, g.queue.as_ref()),
            bindings: Some(g.bindings),
            bindings_sync_errors: c.sync_errors.load(Relaxed),
            unbound: c.unbound_by_reason().map(|(r, n)| (r.to_owned(), n)).collect(),
            devices: devices(c, &table, g.now_ns),
        }
    }
}

impl systemd::Probe for Telemetry {
    fn health_problems(&self) -> impl Future<Output = Vec<String>> + Send {
        Telemetry::health_problems(self)
    }

    fn status_line(&self) -> impl Future<Output = String> + Send {
        Telemetry::status_line(self)
    }
}

fn sources(c: &Counters) -> Vec<SourceStatus> {
    c.sources()
        .into_iter()
        .map(|((source, protocol), s)| SourceStatus {
            source: source.into(),
            protocol: protocol.into(),
            connected: s.connection(),
            messages: s.messages.load(Relaxed),
            readings: s.readings.load(Relaxed),
            rejected: s.rejected().iter().map(|(_, n)| n).sum(),
        })
        .collect()
}

fn ports(c: &Counters) -> Vec<PortView> {
    c.ports()
        .into_iter()
        .map(|(path, p)| PortView {
            path,
            protocol: p.protocol,
            state: p.state.to_owned(),
            frames: p.frames,
            last_frame_ns: p.last_frame_ns,
        })
        .collect()
}

fn queue(q: &QueueGauges) -> QueueStatus {
    QueueStatus {
        points: q.points,
        bytes: q.bytes,
        oldest_enqueued_ns: q.oldest_enqueued_ns,
        db_file_bytes: q.db_file_bytes,
        dead_letters: q.dead_letters.iter().map(|(r, n)| (r.as_str().to_owned(), *n)).collect(),
        parked: q.parked.iter().map(|(_, n)| n).sum(),
        parked_bytes: q.parked_bytes,
        dead_letter_bytes: q.dead_letter_bytes,
        evicted_parked: q.evicted_parked,
        evicted_dead_letters: q.evicted_dead_letters,
    }
}

/// Every destination with points in the queue, with what its sink worker counted.
fn destinations(c: &Counters, queue: Option<&QueueGauges>) -> Vec<DestinationStatus> {
    let counted = c.destinations();
    let mut destinations: Vec<DestinationStatus> = Vec::new();
    for (d, waiting, oldest) in queue.iter().flat_map(|q| q.destinations.iter()) {
        let name = destination_label(d);
        let dc = counted.iter().find(|(n, _)| *n == name).map(|(_, dc)| dc);
        let last = dc.map(|dc| dc.last_success_ns.load(Relaxed)).filter(|t| *t > 0);
        destinations.push(DestinationStatus {
            name,
            waiting: *waiting,
            oldest_enqueued_ns: *oldest,
            delivered: Some(dc.map_or(0, |dc| dc.delivered.load(Relaxed))),
            write_failures: Some(dc.map_or(0, |dc| dc.write_failures.load(Relaxed))),
            failing: Some(dc.is_some_and(|dc| dc.failing.load(Relaxed))),
            last_success_ns: last,
            last_error: dc.and_then(|dc| dc.last_error()),
        });
    }
    destinations
}

/// Devices heard from within [`DEVICES_WINDOW_NS`], and whether the table in force knows them.
fn devices(c: &Counters, table: &BindingTable, now_ns: i64) -> Vec<DeviceStatus> {
    c.devices
        .since(now_ns - DEVICES_WINDOW_NS)
        .into_iter()
        .map(|(serial, seen)| DeviceStatus {
            bound: !table.for_serial(&serial).is_empty(),
            serial,
            received_ns: seen.received_ns,
            reading_ts_ns: seen.reading_ts_ns,
        })
        .collect()
}
