//! Parked readings: durable, already acknowledged, waiting for their binding.
//!
//! Two reasons to park (see `queue::store`): `fresh` — the binding copy is not yet known to be
//! current as of the reading's time (PostgreSQL sync, `bindings::postgres::Freshness`); and
//! `unbound` — no binding covers the reading (unknown device, stream ended). This task
//! resolves them as soon as that changes and queues their points; a reading nobody claims
//! within `max_park_age` moves to the dead letters with the reason `unbound`. Nothing is
//! ever attributed by guessing.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::Touched;
use crate::bindings::SharedTable;
use crate::bindings::postgres::Freshness;
use crate::model::Reading;
use crate::queue::{PARKED_FRESH, PARKED_UNBOUND, QueueHandle};
use crate::resolve;
use crate::telemetry::Counters;

/// Rows read per scan step.
const PAGE: usize = 1000;
/// How often freshness-parked readings are looked at.
const TICK: Duration = Duration::from_millis(100);
/// After a binding change, newly parked `unbound` readings are re-checked this long: intake
/// may have resolved them against the table just replaced.
const RECHECK_WINDOW: Duration = Duration::from_secs(2);
/// How often expiry runs.
const EXPIRE_EVERY: Duration = Duration::from_secs(5);

pub struct Parking {
    pub queue: QueueHandle,
    pub table: watch::Receiver<SharedTable>,
    pub fresh: watch::Receiver<Freshness>,
    pub counters: Arc<Counters>,
    pub touched: mpsc::UnboundedSender<Touched>,
    pub max_park_age: Duration,
    pub unbound_log: std::sync::Mutex<super::RateLimited>,
}

impl Parking {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_expiry = Instant::now() - EXPIRE_EVERY;
        // Start with a full pass over `unbound`: the table may have changed while we were down.
        let mut recheck_until = Instant::now() + RECHECK_WINDOW;
        let mut unbound_after: i64 = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.table.changed() => {
                    if r.is_err() { return; }
                    recheck_until = Instant::now() + RECHECK_WINDOW;
                    unbound_after = 0;
                }
                _ = tick.tick() => {}
            }
            let table = self.table.borrow().clone();
            let fresh = *self.fresh.borrow();
            // Readings waiting for freshness whose time the mark has now passed (or all of
            // them once the mark has stopped for longer than the grace).
            let max_ts = match fresh.resolvable(i64::MAX) {
                Some(_) => i64::MAX,
                None => fresh.fresh_until_ns,
            };
            if let Err(e) = self.pass(&table, &fresh, PARKED_FRESH, max_ts, 0).await {
                error!(error = %e, "Could not resolve parked readings; retrying.");
            }
            if Instant::now() < recheck_until {
                match self.pass(&table, &fresh, PARKED_UNBOUND, i64::MAX, unbound_after).await {
                    Ok(last) => unbound_after = unbound_after.max(last),
                    Err(e) => error!(error = %e, "Could not resolve parked readings; retrying."),
                }
            }
            if last_expiry.elapsed() >= EXPIRE_EVERY {
                last_expiry = Instant::now();
                let cutoff = crate::now_ns().saturating_sub(self.max_park_age.as_nanos().min(i64::MAX as u128) as i64);
                match self.queue.expire_parked(cutoff).await {
                    Ok(0) => {}
                    Ok(n) => {
                        self.counters.expired_unbound.fetch_add(n, Relaxed);
                        warn!(
                            readings = n,
                            "Parked readings found no binding within max_park_age_ms; moved to the dead letters (reason unbound)."
                        );
                    }
                    Err(e) => error!(error = %e, "Could not expire parked readings; retrying."),
                }
            }
        }
    }

    /// Resolves every parked reading with `reason` up to `max_ts` after id `after`; returns
    /// the last id looked at.
    async fn pass(
        &self,
        table: &SharedTable,
        fresh: &Freshness,
        reason: &'static str,
        max_ts: i64,
        after: i64,
    ) -> Result<i64, crate::queue::QueueError> {
        let mut after = after;
        let mut found = Vec::new();
        loop {
            let rows = self.queue.scan_parked(reason, max_ts, after, PAGE).await?;
            let Some(last) = rows.last().map(|r| r.id) else { return Ok(after) };
            let now = crate::now_ns();
            let (mut points, mut remove, mut repark) = (Vec::new(), Vec::new(), Vec::new());
            let mut touched = std::collections::HashMap::<i64, u64>::new();
            let mut stale = 0u64;
            for row in &rows {
                let Some(r) = Reading::from_stored(&row.body) else {
                    // Not a reading this version understands: leave it to expiry (dead letters).
                    continue;
                };
                let Some(is_stale) = fresh.resolvable(r.ts_ns) else { continue };
                match resolve::resolve(table, &r, &mut found) {
                    Ok(()) => {
                        for c in found.drain(..) {
                            points.push(super::encode(c, &r, now));
                            *touched.entry(c.dest_id).or_default() += 1;
                        }
                        stale += u64::from(is_stale);
                        remove.push(row.id);
                    }
                    Err(why) if reason == PARKED_FRESH => {
                        self.counters.unbound(why);
                        if self.unbound_log.lock().is_ok_and(|mut l| l.allow(&r.serial)) {
                            warn!(
                                device = %crate::model::loggable(&r.serial),
                                reason = why.as_str(),
                                "Reading has no binding; parked until one covers it (counted; logged once a minute per device)."
                            );
                        }
                        repark.push((row.id, PARKED_UNBOUND));
                    }
                    Err(_) => {}
                }
            }
            if !remove.is_empty() || !repark.is_empty() {
                let n = remove.len() as u64;
                self.queue.promote(points, remove, repark).await?;
                self.counters.unparked.fetch_add(n, Relaxed);
                self.counters.resolved_stale.fetch_add(stale, Relaxed);
                self.counters.readings_queued.fetch_add(n, Relaxed);
                if reason == PARKED_UNBOUND && n > 0 {
                    info!(readings = n, "Parked readings found their binding and were queued.");
                }
                if !touched.is_empty() {
                    let _ = self.touched.send(touched.into_iter().collect());
                }
            }
            after = last;
            if rows.len() < PAGE {
                return Ok(after);
            }
        }
    }
}
