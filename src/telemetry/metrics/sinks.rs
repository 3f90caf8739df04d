//! Sink families, per destination: points delivered, failed attempts, dead letters, the
//! destination's state and how long writes take.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::family::{Labels, family, secs};
use crate::telemetry::counters::{Counters, DestinationCounters};

pub(super) fn encode(e: &mut DescriptorEncoder<'_>, c: &Counters) -> fmt::Result {
    let dests = c.destinations();
    let per_dest = |f: fn(&DestinationCounters) -> u64| {
        dests.iter().map(move |(d, dc)| ([("destination", d.as_str())], ConstCounter::new(f(dc))))
    };
    family(
        e,
        "heartguard_sink_points_delivered",
        "Points InfluxDB answered 2xx for.",
        MetricType::Counter,
        per_dest(|d| d.delivered.load(Relaxed)),
    )?;
    family(
        e,
        "heartguard_sink_write_failures",
        "Failed write attempts (each retry counts).",
        MetricType::Counter,
        per_dest(|d| d.write_failures.load(Relaxed)),
    )?;
    let mut dead: Vec<(Labels<'_, 2>, ConstCounter)> = Vec::new();
    for (d, dc) in &dests {
        for (reason, n) in dc.dead_letters() {
            dead.push(([("destination", d.as_str()), ("reason", reason)], ConstCounter::new(n)));
        }
    }
    family(e, "heartguard_sink_dead_lettered", "Points moved to the dead letters.", MetricType::Counter, dead)?;
    family(
        e,
        "heartguard_sink_destination_failing",
        "1 while the destination's last write attempt failed.",
        MetricType::Gauge,
        dests
            .iter()
            .map(|(d, dc)| ([("destination", d.as_str())], ConstGauge::new(u32::from(dc.failing.load(Relaxed))))),
    )?;
    family(
        e,
        "heartguard_sink_last_success_timestamp_seconds",
        "When InfluxDB last answered 2xx (Unix time; 0: not since start).",
        MetricType::Gauge,
        dests
            .iter()
            .map(|(d, dc)| ([("destination", d.as_str())], ConstGauge::new(secs(dc.last_success_ns.load(Relaxed))))),
    )?;
    let mut m = e.encode_descriptor(
        "heartguard_sink_write_duration_seconds",
        "Duration of write attempts, answered or not (a timeout counts with its full length).",
        None,
        MetricType::Histogram,
    )?;
    for (d, dc) in &dests {
        dc.write_duration.encode(m.encode_family(&[("destination", d.as_str())])?)?;
    }
    Ok(())
}
