//! Parked readings: durable, already acknowledged, waiting for their binding.
//!
//! Two reasons to park (see `queue::parked`): `fresh` — the binding copy is not yet known to be
//! current as of the reading's time (PostgreSQL sync, [`crate::bindings::view::Freshness`]); and
//! `unbound` — no binding covers the reading (unknown device, stream ended). This task
//! resolves them as soon as that changes and queues their points; a reading nobody claims
//! within `max_park_age` moves to the dead letters with the reason `unbound`. Nothing is
//! ever attributed by guessing.
//!
//! Every `unbound` reading is checked against every table put in force after the one it was
//! parked under: each new table gets a pass over all of them, and so does a commit of intake
//! that parked readings under a table replaced while the commit waited (intake asks for it,
//! `recheck`). A pass that fails is due again at the next tick.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::bindings::table::SharedTable;
use crate::bindings::view::Freshness;
use crate::ingest::intake;
use crate::model::Reading;
use crate::pipeline::Pipeline;
use crate::queue::parked::ParkReason;
use crate::resolve;

/// Rows read per scan step.
const PAGE: usize = 1000;
/// How often freshness-parked readings are looked at.
const TICK: Duration = Duration::from_millis(100);
/// How often expiry runs.
const EXPIRE_EVERY: Duration = Duration::from_secs(5);

pub struct Parking {
    pub pipe: Pipeline,
    /// Intake's request for a pass over every `unbound` reading (see
    /// [`intake::run_intake`]).
    pub recheck: Arc<Notify>,
    pub max_park_age: Duration,
    pub unbound_log: std::sync::Mutex<crate::telemetry::logging::RateLimited>,
}

impl Parking {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_expiry = Instant::now() - EXPIRE_EVERY;
        // The table the last complete pass over `unbound` used; none yet: the table may have
        // changed while the gateway was down.
        let mut checked: Option<SharedTable> = None;
        let mut recheck = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                // Also a freshness advance: the readings it makes resolvable go now.
                r = self.pipe.view.changed() => if r.is_err() { return },
                _ = self.recheck.notified() => recheck = true,
                _ = tick.tick() => {}
            }
            let view = self.pipe.view.borrow_and_update().clone();
            let (table, fresh) = (&view.table, view.fresh);
            // Readings waiting for freshness whose time the mark has now passed (or all of
            // them once the mark has stopped for longer than the grace).
            let max_ts = match fresh.resolvable(i64::MAX) {
                Some(_) => i64::MAX,
                None => fresh.fresh_until_ns,
            };
            if let Err(e) = self.pass(table, &fresh, ParkReason::Fresh, max_ts).await {
                error!(error = %e, "Could not resolve parked readings; retrying.");
            }
            if recheck || checked.as_ref().is_none_or(|t| !view.holds(t)) {
                match self.pass(table, &fresh, ParkReason::Unbound, i64::MAX).await {
                    Ok(_) => {
                        checked = Some(table.clone());
                        recheck = false;
                    }
                    Err(e) => error!(error = %e, "Could not resolve parked readings; retrying."),
                }
            }
            if last_expiry.elapsed() >= EXPIRE_EVERY {
                last_expiry = Instant::now();
                let cutoff = crate::now_ns().saturating_sub(self.max_park_age.as_nanos().min(i64::MAX as u128) as i64);
                match self.pipe.queue.expire_parked(cutoff).await {
                    Ok(0) => {}
                    Ok(n) => {
                        self.pipe.counters.expired_unbound.fetch_add(n, Relaxed);
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

    /// Resolves every parked reading with `reason` up to `max_ts`.
    async fn pass(
        &self,
        table: &SharedTable,
        fresh: &Freshness,
        reason: ParkReason,
        max_ts: i64,
    ) -> Result<(), crate::queue::QueueError> {
        let mut after = 0;
        let mut found = Vec::new();
        loop {
            let rows = self.pipe.queue.scan_parked(reason, max_ts, after, PAGE).await?;
            let Some(last) = rows.last().map(|r| r.id) else { return Ok(()) };
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
                            points.push(intake::encode(c, &r, now));
                            *touched.entry(c.dest_id).or_default() += 1;
                        }
                        stale += u64::from(is_stale);
                        remove.push(row.id);
                    }
                    Err(why) if reason == ParkReason::Fresh => {
                        self.pipe.counters.unbound(why.as_str());
                        if self.unbound_log.lock().is_ok_and(|mut l| l.allow(&r.serial)) {
                            warn!(
                                device = %crate::model::loggable(&r.serial),
                                reason = why.as_str(),
                                "Reading has no binding; parked until one covers it (counted; logged once a minute per device)."
                            );
                        }
                        repark.push((row.id, ParkReason::Unbound));
                    }
                    Err(_) => {}
                }
            }
            if !remove.is_empty() || !repark.is_empty() {
                let n = remove.len() as u64;
                self.pipe.queue.promote(points, remove, repark).await?;
                self.pipe.counters.unparked.fetch_add(n, Relaxed);
                self.pipe.counters.resolved_stale.fetch_add(stale, Relaxed);
                self.pipe.counters.readings_queued.fetch_add(n, Relaxed);
                if reason == ParkReason::Unbound && n > 0 {
                    info!(readings = n, "Parked readings found their binding and were queued.");
                }
                if !touched.is_empty() {
                    let _ = self.pipe.touched.send(touched.into_iter().collect());
                }
            }
            after = last;
            if rows.len() < PAGE {
                return Ok(());
            }
        }
    }
}
