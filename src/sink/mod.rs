//! Delivery: one worker per destination takes the oldest waiting points, posts them as one
//! batch and deletes them only after a 2xx.
//!
//! - A destination that is down or refuses its data only ever delays itself: each has its own
//!   worker, retry state and back-off.
//! - A batch is sent when `batch_max_lines` points wait or `flush_interval_ms` passed since the
//!   last flush; a backlog drains batch after batch without waiting.
//! - Retries never give up on data: network errors and 5xx back off (capped, with jitter,
//!   at least `Retry-After`); 4xx keep the data and back off too, loudly, and so does any
//!   answer that is not InfluxDB's (a redirect, a proxy's 400): see [`influx`].
//! - A point leaves the queue only as written (a 2xx, or the part of a partial write InfluxDB
//!   did not refuse) or dead-lettered. A range is deleted only once everything refused in it
//!   is in the dead letters; if moving it there fails, the range stays and is sent again.
//! - While a destination fails, a log line marks the first failure, every change of its
//!   cause, and every 10th attempt.
//! - A batch refused as too large (413) is split and later batches are smaller; after a run
//!   of full batches written at the smaller size, the size doubles back up to
//!   `batch_max_lines` ([`policy::BatchSize`]).
//!
//! Layout: this file is the manager, which starts a worker per destination and tells it what
//! was committed for it. A worker ([`worker`]) runs its loop ([`flush`]), delivers each
//! leased batch ([`deliver`]) and keeps its retry and batch-size state ([`policy`]);
//! [`influx`] is the client, [`config`] the `[influx]` section.

pub mod config;
pub mod deliver;
mod flush;
pub mod influx;
mod policy;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::model::Destination;
use crate::pipeline::{Pipeline, Touched};
use crate::queue::handle::QueueHandle;
use crate::sink::config::Influx;
use crate::telemetry::health;
use crate::telemetry::{Counters, destination_label};
use influx::InfluxClient;
use worker::{Wake, Worker};

/// Runs the workers until `shutdown`; workers finish the request in flight, start no new one.
pub async fn run_sinks(
    pipe: Pipeline,
    mut touched: mpsc::UnboundedReceiver<Touched>,
    client: Arc<InfluxClient>,
    cfg: Influx,
    shutdown: CancellationToken,
) {
    let Pipeline { queue, counters, .. } = pipe;
    let heartbeat = counters.health.register(health::STAGE_SINKS);
    let mut manager = Manager {
        queue,
        client,
        cfg,
        counters: counters.clone(),
        shutdown: shutdown.clone(),
        tracker: TaskTracker::new(),
        workers: HashMap::new(),
        names: HashMap::new(),
    };
    manager.start_known().await;
    loop {
        heartbeat.beat();
        let batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(health::BEAT_EVERY) => continue,
            t = touched.recv() => match t {
                Some(t) => t,
                // Intake is gone: nothing new will arrive; keep delivering until told to stop.
                None => { heartbeat.while_waiting(shutdown.cancelled()).await; break; }
            },
        };
        manager.touched(batch).await;
    }
    manager.tracker.close();
    heartbeat.while_waiting(manager.tracker.wait()).await;
    counters.health.deregister(health::STAGE_SINKS);
}

/// The workers by destination id, and what it takes to start one.
struct Manager {
    queue: QueueHandle,
    client: Arc<InfluxClient>,
    cfg: Influx,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    workers: HashMap<i64, Arc<Wake>>,
    /// The destinations known by id.
    names: HashMap<i64, Destination>,
}

impl Manager {
    /// Starts a worker for every destination the queue knows, with the points waiting for it
    /// from before the start.
    async fn start_known(&mut self) {
        match self.queue.destinations().await {
            Ok(list) => {
                for (id, dest, pending) in list {
                    if pending > 0 {
                        info!(destination = %dest, pending, "Delivering points waiting from before the start.");
                    }
                    self.names.insert(id, dest.clone());
                    self.spawn(id, dest, pending);
                }
            }
            Err(e) => {
                error!(error = %e, "Could not list destinations; they start when new points arrive.")
            }
        }
    }

    /// Tells each destination's worker how many points a commit added for it, and wakes it
    /// when a full batch waits; a destination seen for the first time gets its worker.
    async fn touched(&mut self, batch: Touched) {
        for (id, n) in batch {
            if !self.workers.contains_key(&id) {
                if !self.names.contains_key(&id)
                    && let Ok(list) = self.queue.destinations().await
                {
                    self.names.extend(list.into_iter().map(|(i, d, _)| (i, d)));
                }
                let Some(dest) = self.names.get(&id).cloned() else {
                    error!(dest_id = id, "Points for an unknown destination id; they wait in the queue.");
                    continue;
                };
                self.spawn(id, dest, 0);
            }
            if let Some(w) = self.workers.get(&id) {
                let before = w.pending.fetch_add(n, Relaxed);
                if before + n >= self.cfg.batch_max_lines as u64 {
                    w.notify.notify_one();
                }
            }
        }
    }

    fn spawn(&mut self, id: i64, dest: Destination, pending: u64) {
        let wake = Arc::new(Wake { pending: AtomicU64::new(pending), notify: Notify::new() });
        self.workers.insert(id, wake.clone());
        let stage = format!("sink {}", destination_label(&dest));
        let w = Worker {
            id,
            stats: self.counters.destination(&dest),
            heartbeat: self.counters.health.register(stage.clone()),
            stage,
            dest,
            queue: self.queue.clone(),
            client: self.client.clone(),
            cfg: self.cfg.clone(),
            counters: self.counters.clone(),
            wake,
        };
        self.tracker.spawn(w.run(self.shutdown.clone()));
    }
}
