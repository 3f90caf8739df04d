//! The intake stage: takes the envelopes of every source in batches, resolves each reading
//! against the binding table in force (or parks it), commits the batch to the queue and only
//! then acknowledges its messages, in the order they arrived.
//!
//! A batch is what waited in the channel, plus what comes within a few milliseconds while it
//! is small (`COMMIT_LINGER`): one commit, one fsync, for many messages. Nothing is
//! acknowledged before its commit succeeded; a commit that fails is retried for as long as it
//! takes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::{Notify, mpsc};
use tracing::{error, warn};

use crate::bindings::view::View;
use crate::ingest::mqtt::ack::AckBatch;
use crate::ingest::{Ack, Envelope};
use crate::model::{Reading, loggable};
use crate::pipeline::Pipeline;
use crate::queue::handle::QueueHandle;
use crate::queue::intake::Batch;
use crate::queue::parked::{NewParked, ParkReason};
use crate::queue::points::NewPoint;
use crate::resolve;
use crate::telemetry::Counters;
use crate::telemetry::health::{self, Heartbeat};
use crate::telemetry::logging::RateLimited;

/// Most envelopes gathered into one commit.
const INTAKE_BATCH_MAX: usize = 512;

/// How long intake waits for more envelopes before committing a batch that is not full.
/// Every commit costs a WAL write and an fsync whatever its size: at 1,000 readings/s from
/// 32 devices readings arrive one by one, and committing each alone cost the gateway about
/// four times the CPU per reading it needs at full load (BENCHMARKS.md). A few milliseconds
/// are nothing beside the flush interval, and an acknowledgement waits no longer than that.
const COMMIT_LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// A batch this large is committed without lingering. Under load batches are larger anyway,
/// and waiting would only stall: the broker sends no more than its inflight window until
/// intake acknowledges, so once that window is in hand nothing else can arrive.
const LINGER_BELOW: usize = 64;

/// The intake stage. Returns when every sender is dropped and the last batch is committed.
///
/// `recheck` asks the parking resolver for a pass over every `unbound` reading: intake
/// resolves a batch against the table in force when the batch was taken, and commits it
/// afterwards; a table put in force in between has not seen the readings it parked.
pub async fn run_intake(mut rx: mpsc::Receiver<Envelope>, pipe: Pipeline, recheck: Arc<Notify>) {
    let Pipeline { queue, view: view_rx, counters, touched: touched_tx } = pipe;
    let mut batch: Vec<Envelope> = Vec::with_capacity(INTAKE_BATCH_MAX);
    let mut unbound_log = RateLimited::new(std::time::Duration::from_secs(60));
    let heartbeat = counters.health.register(health::STAGE_INTAKE);
    while gather(&mut rx, &mut batch, &heartbeat).await {
        // One value: its table holds every change its freshness mark promises.
        let view = view_rx.borrow().clone();
        let now = crate::now_ns();
        counters.devices.record(batch.iter().flat_map(|e| &e.readings), now);
        let Resolved { out, touched, unbound } = resolve_batch(&batch, &view, &counters, &mut unbound_log, now);
        let (n, parked) = (out.points.len() as u64, out.parked.len() as u64);
        if n + parked > 0 {
            let dropped = heartbeat.while_waiting(commit(&queue, Arc::new(out))).await;
            counters.queue_dropped.fetch_add(dropped, Relaxed);
        }
        // The commit may have waited (a busy or full queue) while a new table came: the parking
        // resolver's pass for it may have run before these readings were there to be found.
        if unbound > 0 && !view_rx.borrow().holds(&view.table) {
            recheck.notify_one();
        }
        counters.readings_queued.fetch_add(n, Relaxed);
        counters.parked.fetch_add(parked, Relaxed);
        acknowledge(&mut batch);
        if !touched.is_empty() {
            let _ = touched_tx.send(touched.into_iter().collect());
        }
    }
    counters.health.deregister(health::STAGE_INTAKE);
}

/// Waits for the next envelope (beating while idle), then takes those that follow it: all
/// that wait in the channel, and while the batch is small, those that come within
/// `COMMIT_LINGER`. False when every source is gone and nothing is left.
async fn gather(rx: &mut mpsc::Receiver<Envelope>, batch: &mut Vec<Envelope>, heartbeat: &Heartbeat) -> bool {
    let first = loop {
        match tokio::time::timeout(health::BEAT_EVERY, rx.recv()).await {
            Err(_idle) => heartbeat.beat(),
            Ok(None) => return false,
            Ok(Some(e)) => break e,
        }
    };
    heartbeat.beat();
    batch.push(first);
    let linger_until = tokio::time::Instant::now() + COMMIT_LINGER;
    while batch.len() < INTAKE_BATCH_MAX {
        match rx.try_recv() {
            Ok(e) => batch.push(e),
            Err(mpsc::error::TryRecvError::Empty) if batch.len() >= LINGER_BELOW => break,
            Err(mpsc::error::TryRecvError::Empty) => match tokio::time::timeout_at(linger_until, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                // The linger is over, or every source is gone (the next `recv` ends intake).
                Ok(None) | Err(_) => break,
            },
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        }
    }
    true
}

/// What a batch of envelopes comes to: the rows to commit, the points added per destination,
/// and how many readings found no binding.
struct Resolved {
    out: Batch,
    touched: HashMap<i64, u64>,
    unbound: u32,
}

/// Resolves every reading of `batch` against `view`: the points of each binding that covers
/// it, or a parked row when the binding copy is not known to be current as of the reading, or
/// when no binding covers it.
fn resolve_batch(
    batch: &[Envelope],
    view: &View,
    counters: &Counters,
    unbound_log: &mut RateLimited,
    now: i64,
) -> Resolved {
    let (table, fresh) = (&view.table, view.fresh);
    let mut found = Vec::new();
    let mut out = Batch::default();
    let mut touched: HashMap<i64, u64> = HashMap::new();
    let mut unbound = 0u32;
    for r in batch.iter().flat_map(|e| &e.readings) {
        let Some(stale) = fresh.resolvable(r.ts_ns) else {
            // The binding copy is not yet known to be current as of this reading.
            out.parked.push(park(r, ParkReason::Fresh, now));
            continue;
        };
        match resolve::resolve(table, r, &mut found) {
            Ok(()) => {
                if stale {
                    counters.resolved_stale.fetch_add(1, Relaxed);
                }
                for c in found.drain(..) {
                    out.points.push(encode(c, r, now));
                    *touched.entry(c.dest_id).or_default() += 1;
                }
            }
            Err(why) => {
                counters.unbound(why.as_str());
                if unbound_log.allow(&r.serial) {
                    warn!(
                        device = %loggable(&r.serial),
                        reason = why.as_str(),
                        "Reading has no binding; parked until one covers it (counted; logged once a minute per device)."
                    );
                }
                out.parked.push(park(r, ParkReason::Unbound, now));
                unbound += 1;
            }
        }
    }
    Resolved { out, touched, unbound }
}

/// Acknowledges every message of a committed batch, in arrival order; the MQTT ones of each
/// connection in one hand-over to its writer.
fn acknowledge(batch: &mut Vec<Envelope>) {
    let mut mqtt_acks = AckBatch::default();
    for env in batch.drain(..) {
        match env.ack {
            Some(Ack::Mqtt(ack)) => mqtt_acks.push(ack),
            Some(ack) => ack.send(),
            None => {}
        }
    }
    mqtt_acks.send();
}

/// The queued point for reading `r` under binding `c`.
pub fn encode(c: &crate::bindings::table::Compiled, r: &Reading, now: i64) -> NewPoint {
    let mut line = String::with_capacity(c.prefix.len() + 24 * r.fields.len() + 24);
    resolve::encode(c, r, &mut line);
    NewPoint { dest_id: c.dest_id, line, enqueued_ns: now, stream_key: c.stream_key, ts_ns: r.ts_ns }
}

fn park(r: &Reading, reason: ParkReason, now: i64) -> NewParked {
    NewParked { serial: r.serial.clone(), ts_ns: r.ts_ns, reason, body: r.to_stored(), parked_ns: now }
}

/// Commits, retrying until it works: nothing was acknowledged yet, and giving up would mean
/// acknowledging data that is not stored. Returns how many waiting points were dropped to
/// make room.
async fn commit(queue: &QueueHandle, batch: Arc<Batch>) -> u64 {
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        match queue.append_shared(batch.clone()).await {
            Ok(report) => {
                if report.dropped > 0 {
                    warn!(
                        dropped = report.dropped,
                        bytes = report.dropped_bytes,
                        "Queue full: dropped the oldest waiting points to make room (policy drop_oldest)."
                    );
                }
                return report.dropped;
            }
            // Full is a state the store already logged once; the sources hold the data.
            Err(crate::queue::QueueError::Full(_)) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(1));
            }
            Err(e) => {
                error!(error = %e, readings = batch.points.len() + batch.parked.len(), "Queue commit failed; holding the readings unacknowledged and retrying.");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::source::BindingSource;
    use crate::bindings::view::View;
    use crate::fields::{FieldValue, lookup};
    use crate::model::Binding;
    use crate::pipeline::Pipeline;

    fn binding(serial: &str) -> Binding {
        Binding {
            serial: serial.into(),
            device_id: "d".into(),
            stream_id: "s".into(),
            patient_id: "p".into(),
            org_id: "o".into(),
            signal_type: "vital_signs".into(),
            influx_org: String::new(),
            influx_bucket: "heartguard".into(),
            measurement: "vital_signs".into(),
            started_at: None,
            ended_at: None,
            sample_rate_hz: None,
            tags: Default::default(),
        }
    }

    fn reading(serial: &str) -> Reading {
        let hr = lookup("heart_rate").expect("field");
        Reading {
            serial: serial.into(),
            ts_ns: crate::now_ns(),
            signal_type: None,
            fields: vec![(hr, FieldValue::Int(72))],
        }
    }

    /// One envelope, a bound and an unknown device: the first is queued, the second parked,
    /// the sinks are told, and the acknowledgement comes only once both are committed.
    #[tokio::test]
    async fn a_message_is_acknowledged_once_its_readings_are_queued_or_parked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut t = Pipeline::for_test(dir.path()).expect("pipeline");
        let table = crate::bindings::compile(vec![binding("ABC-001")], BindingSource::None, "1".into(), &t.pipe.queue)
            .await
            .expect("compile");
        let dest = table.for_serial("ABC-001")[0].dest_id;
        View::put_table(&t.view_tx, table);

        let (env_tx, env_rx) = mpsc::channel(8);
        let intake = tokio::spawn(run_intake(env_rx, t.pipe.clone(), Arc::new(Notify::new())));
        let (done, acked) = tokio::sync::oneshot::channel();
        let env = Envelope { readings: vec![reading("ABC-001"), reading("XYZ-999")], ack: Some(Ack::Mllp(done)) };
        env_tx.send(env).await.expect("send");
        acked.await.expect("acknowledged");

        let stats = t.pipe.queue.stats().await.expect("stats");
        assert_eq!((stats.points, stats.parked), (1, 1));
        assert_eq!(t.touched.recv().await, Some(vec![(dest, 1)]));
        drop(env_tx);
        intake.await.expect("intake ends once its senders are gone");
    }
}
