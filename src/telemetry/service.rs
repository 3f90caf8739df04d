//! The state behind the HTTP endpoint (and, later, systemd notifications): what is ready,
//! what is stuck, and the figures of the moment.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Counters;
use super::metrics::{BindingsInfo, Gauges};
use super::status::{DestinationStatus, DeviceStatus, PortView, QueueStatus, SourceStatus, Status};
use crate::bindings::view::ViewRx;
use crate::queue::QueueHandle;

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
    /// Also starts watching the binding table, to know when it changes.
    pub fn new(gateway_id: &str, counters: Arc<Counters>, queue: QueueHandle, view: ViewRx) -> Arc<Self> {
        let now = crate::now_ns();
        let t = Arc::new(Self {
            counters,
            queue,
            view: view.clone(),
            gateway_id: gateway_id.to_owned(),
            started_ns: now,
            bindings_loaded_ns: AtomicI64::new(now),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            notifier_stop: CancellationToken::new(),
        });
        let weak = Arc::downgrade(&t);
        let mut view = view;
        tokio::spawn(async move {
            // The view also changes whenever the freshness mark advances: only a new table counts.
            let mut table = view.borrow_and_update().table.clone();
            while view.changed().await.is_ok() {
                let Some(t) = weak.upgrade() else { return };
                let v = view.borrow_and_update();
                if !v.holds(&table) {
                    table = v.table.clone();
                    t.bindings_loaded_ns.store(crate::now_ns(), Relaxed);
                }
            }
        });
        t
    }

    /// Every stage is running: `/readyz` answers 200 from now on (while nothing is wrong),
    /// systemd is told `READY=1`, and the watchdog starts being fed (while healthy).
    pub async fn set_ready(self: &Arc<Self>) {
        self.ready.store(true, Relaxed);
        super::systemd::ready(&self.status_line().await);
        tokio::spawn(super::systemd::run(self.clone(), self.notifier_stop.clone()));
    }

    /// A graceful stop began: `/readyz` answers 503, systemd is told `STOPPING=1` and the
    /// watchdog is no longer fed.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Relaxed);
        self.notifier_stop.cancel();
        super::systemd::stopping();
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
        BindingsInfo::of(&self.view.borrow().table, self.bindings_loaded_ns.load(Relaxed))
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
        status.origin = if stopped { super::status::ORIGIN_STOPPED } else { super::status::ORIGIN_FILE }.into();
        let tmp = data_dir.join(format!("{}.tmp", super::status::STATUS_FILE));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&status).map_err(std::io::Error::other)?)?;
        std::fs::rename(tmp, data_dir.join(super::status::STATUS_FILE))
    }

    /// The operator's summary (served as JSON at `/status`).
    pub async fn status(&self) -> Status {
        let g = self.gauges().await;
        let c = &self.counters;
        let sources = c
            .sources()
            .into_iter()
            .map(|((source, protocol), s)| SourceStatus {
                source: source.into(),
                protocol: protocol.into(),
                connected: s.connection(),
                messages: s.messages.load(Relaxed),
                readings: s.readings.load(Relaxed),
                rejected: s.rejected().iter().map(|(_, n)| n).sum(),
            })
            .collect();
        let counted = c.destinations();
        let mut destinations: Vec<DestinationStatus> = Vec::new();
        for (d, waiting, oldest) in g.queue.iter().flat_map(|q| q.destinations.iter()) {
            let name = super::destination_label(d);
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
        let table = self.view.borrow().table.clone();
        let devices = c
            .devices
            .since(g.now_ns - super::status::DEVICES_WINDOW_NS)
            .into_iter()
            .map(|(serial, seen)| DeviceStatus {
                bound: !table.for_serial(&serial).is_empty(),
                serial,
                received_ns: seen.received_ns,
                reading_ts_ns: seen.reading_ts_ns,
            })
            .collect();
        let ports = c
            .ports()
            .into_iter()
            .map(|(path, p)| PortView {
                path,
                protocol: p.protocol,
                state: p.state.to_owned(),
                frames: p.frames,
                last_frame_ns: p.last_frame_ns,
            })
            .collect();
        Status {
            origin: super::status::ORIGIN_DAEMON.into(),
            gateway_id: self.gateway_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            now_ns: g.now_ns,
            started_ns: Some(self.started_ns),
            ready: Some(g.ready),
            stuck_stages: c.health.stale().into_iter().map(|(s, a)| (s, a.as_secs())).collect(),
            sources,
            ports,
            queue: g.queue.as_ref().map(|q| QueueStatus {
                points: q.points,
                bytes: q.bytes,
                oldest_enqueued_ns: q.oldest_enqueued_ns,
                db_file_bytes: q.db_file_bytes,
                dead_letters: q.dead_letters.clone(),
                parked: q.parked.iter().map(|(_, n)| n).sum(),
                parked_bytes: q.parked_bytes,
                dead_letter_bytes: q.dead_letter_bytes,
                evicted_parked: q.evicted_parked,
                evicted_dead_letters: q.evicted_dead_letters,
            }),
            destinations,
            bindings: Some(g.bindings),
            bindings_sync_errors: c.sync_errors.load(Relaxed),
            unbound: Counters::UNBOUND
                .iter()
                .zip(&c.unbound)
                .map(|(u, n)| (u.as_str().to_owned(), n.load(Relaxed)))
                .collect(),
            devices,
        }
    }
}
