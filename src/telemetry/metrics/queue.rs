//! Resolve and queue families: readings without a binding or parked, points committed, and
//! what waits in the queue (present only when its store answered in time).

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::family::{counter, family, gauge, secs};
use crate::queue::inspect::QueueGauges;
use crate::telemetry::counters::{Counters, destination_label};
use crate::telemetry::labels::{DEAD_LETTER_REASONS, PARKED_FRESH, PARKED_UNBOUND};

pub(super) fn encode(
    e: &mut DescriptorEncoder<'_>,
    c: &Counters,
    queue: Option<&QueueGauges>,
    now_ns: i64,
) -> fmt::Result {
    resolved(e, c)?;
    counter(e, "heartguard_queue_appended", "Points committed to the queue.", c.readings_queued.load(Relaxed))?;
    counter(
        e,
        "heartguard_queue_dropped",
        "Waiting points deleted to make room (queue full, policy drop_oldest).",
        c.queue_dropped.load(Relaxed),
    )?;
    match queue {
        Some(q) => waiting(e, q, now_ns),
        None => Ok(()),
    }
}

fn resolved(e: &mut DescriptorEncoder<'_>, c: &Counters) -> fmt::Result {
    family(
        e,
        "heartguard_resolve_unbound",
        "Readings with no binding (not stored).",
        MetricType::Counter,
        c.unbound_by_reason().map(|(r, n)| ([("reason", r)], ConstCounter::new(n))),
    )?;

    counter(
        e,
        "heartguard_resolve_parked",
        "Readings parked (waiting for a binding copy current as of their time, or for a binding).",
        c.parked.load(Relaxed),
    )?;
    counter(e, "heartguard_resolve_unparked", "Parked readings later resolved and queued.", c.unparked.load(Relaxed))?;
    counter(
        e,
        "heartguard_resolve_stale",
        "Readings resolved on a binding copy whose freshness mark had stopped (PostgreSQL away).",
        c.resolved_stale.load(Relaxed),
    )?;
    counter(
        e,
        "heartguard_resolve_expired_unbound",
        "Parked readings that found no binding in time (moved to the dead letters).",
        c.expired_unbound.load(Relaxed),
    )?;
    Ok(())
}

/// What the queue's store reported for this scrape.
fn waiting(e: &mut DescriptorEncoder<'_>, q: &QueueGauges, now_ns: i64) -> fmt::Result {
    gauge(e, "heartguard_queue_points", "Points waiting for delivery.", q.points)?;
    gauge(e, "heartguard_queue_bytes", "Bytes of line protocol waiting.", q.bytes)?;
    let age = q.oldest_enqueued_ns.map_or(0.0, |t| secs((now_ns - t).max(0)));
    gauge(e, "heartguard_queue_oldest_age_seconds", "Age of the oldest waiting point (0: none).", age)?;
    gauge(e, "heartguard_queue_database_bytes", "Size of the queue database with its WAL.", q.db_file_bytes)?;
    family(
        e,
        "heartguard_queue_destination_points",
        "Points waiting, per destination.",
        MetricType::Gauge,
        q.destinations.iter().map(|(d, n, _)| ([("destination", destination_label(d))], ConstGauge::new(*n))),
    )?;
    let mut dead: Vec<(String, u64)> = DEAD_LETTER_REASONS.iter().map(|r| ((*r).to_owned(), 0)).collect();
    for (r, n) in &q.dead_letters {
        match dead.iter_mut().find(|(k, _)| k == r.as_str()) {
            Some(slot) => slot.1 = *n,
            None => dead.push((r.as_str().to_owned(), *n)),
        }
    }
    let reasons = [PARKED_FRESH, PARKED_UNBOUND];
    family(
        e,
        "heartguard_queue_parked",
        "Parked readings kept, per reason.",
        MetricType::Gauge,
        reasons.iter().map(|r| {
            let n = q.parked.iter().find(|(k, _)| k.as_str() == *r).map_or(0, |(_, n)| *n);
            ([("reason", *r)], ConstGauge::new(n))
        }),
    )?;
    family(
        e,
        "heartguard_queue_dead_letters",
        "Dead letters kept, per reason (see `heartguard-gateway dead-letters list`).",
        MetricType::Gauge,
        dead.iter().map(|(r, n)| ([("reason", r.as_str())], ConstGauge::new(*n))),
    )?;
    let fresh = q.parked_bytes.saturating_sub(q.unbound_bytes);
    family(
        e,
        "heartguard_queue_parked_bytes",
        "Bytes of parked readings, per reason (unbound ones up to queue.max_parked_bytes).",
        MetricType::Gauge,
        [(PARKED_FRESH, fresh), (PARKED_UNBOUND, q.unbound_bytes)].map(|(r, n)| ([("reason", r)], ConstGauge::new(n))),
    )?;
    gauge(
        e,
        "heartguard_queue_dead_letter_bytes",
        "Bytes of dead letters (up to queue.max_dead_letter_bytes).",
        q.dead_letter_bytes,
    )?;
    family(
        e,
        "heartguard_queue_evicted",
        "Readings parked unbound and dead letters deleted over their caps (queue.max_parked_bytes, queue.max_dead_letter_bytes).",
        MetricType::Counter,
        [("parked", q.evicted_parked), ("dead_letter", q.evicted_dead_letters)]
            .map(|(k, n)| ([("kind", k)], ConstCounter::new(n))),
    )?;
    Ok(())
}
