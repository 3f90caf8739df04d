//! `/metrics`: the counters and the figures of the moment, in the Prometheus text format
//! (0.0.4), rendered with prometheus-client on each scrape.
//!
//! Names follow `heartguard_<stage>_<noun>_<unit|total>`; counters get their `_total` from the
//! encoder. Labels are bounded: `source`, `protocol`, `reason`, `kind`, `stage` come from code,
//! and `destination` from the bindings' few InfluxDB destinations.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::{Counters, destination_label};
use crate::queue::QueueGauges;

/// `Content-Type` of a scrape answer.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What a scrape shows besides the counters, computed when the scrape arrives.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// `None` when the queue's store did not answer in time.
    pub queue: Option<QueueGauges>,
    pub bindings: BindingsInfo,
    /// Every running stage with the time since its last heartbeat.
    pub heartbeats: Vec<(String, Duration)>,
    pub ready: bool,
    pub started_ns: i64,
    pub now_ns: i64,
}

/// The binding table in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BindingsInfo {
    pub count: u64,
    /// Where it came from: the first word of the table's source (`file`, `cache`, `none`, …),
    /// so a file path never becomes a label value.
    pub source: String,
    pub version: String,
    /// When this process put the table in force (ns since the epoch).
    pub loaded_ns: i64,
}

impl BindingsInfo {
    pub fn of(table: &crate::bindings::table::BindingTable, loaded_ns: i64) -> Self {
        Self {
            count: table.len() as u64,
            source: table.source.kind().to_owned(),
            version: table.version.clone(),
            loaded_ns,
        }
    }
}

/// Renders one scrape.
pub fn render(counters: &Arc<Counters>, gauges: Gauges) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape { counters: counters.clone(), g: gauges }));
    let mut out = String::with_capacity(8 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

#[derive(Debug)]
struct Scrape {
    counters: Arc<Counters>,
    g: Gauges,
}

fn secs(ns: i64) -> f64 {
    ns as f64 / 1e9
}

/// One metric family: a descriptor and its samples.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in rows {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    ConstCounter::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue + fmt::Debug + Send + Sync>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: V,
) -> fmt::Result {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

type Labels<'a, const N: usize> = [(&'static str, &'a str); N];

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let c = &self.counters;
        let g = &self.g;
        let e = &mut enc;

        let version = env!("CARGO_PKG_VERSION");
        family(
            e,
            "heartguard_build_info",
            "Build of the running gateway.",
            MetricType::Gauge,
            [([("version", version)], ConstGauge::new(1))],
        )?;
        gauge(e, "heartguard_process_start_time_seconds", "When the gateway started (Unix time).", secs(g.started_ns))?;
        gauge(
            e,
            "heartguard_health_ready",
            "1 when the gateway is ready (queue open, bindings loaded).",
            u32::from(g.ready),
        )?;
        family(
            e,
            "heartguard_health_heartbeat_age_seconds",
            "Time since each running stage last beat; above 10 s the stage counts as stuck.",
            MetricType::Gauge,
            g.heartbeats.iter().map(|(s, age)| ([("stage", s.as_str())], ConstGauge::new(age.as_secs_f64()))),
        )?;

        // Ingest and decode, by source and protocol.
        let sources = c.sources();
        let per_source = |f: fn(&super::SourceCounters) -> u64| {
            sources.iter().map(move |((s, p), sc)| -> (Labels<'_, 2>, _) {
                ([("source", s), ("protocol", p)], ConstCounter::new(f(sc)))
            })
        };
        family(
            e,
            "heartguard_ingest_messages",
            "MQTT messages or serial frames received.",
            MetricType::Counter,
            per_source(|s| s.messages.load(Relaxed)),
        )?;
        family(
            e,
            "heartguard_ingest_readings",
            "Readings decoded successfully.",
            MetricType::Counter,
            per_source(|s| s.readings.load(Relaxed)),
        )?;
        family(
            e,
            "heartguard_ingest_source_connected",
            "1 while the source is connected (MQTT: to its broker).",
            MetricType::Gauge,
            sources.iter().filter_map(|((s, p), sc)| {
                Some(([("source", *s), ("protocol", *p)], ConstGauge::new(u32::from(sc.connection()?))))
            }),
        )?;
        let ports = c.ports();
        family(
            e,
            "heartguard_ingest_serial_port_open",
            "1 while the serial port is open and frames arrive (0: opening, silent or disconnected).",
            MetricType::Gauge,
            ports.iter().map(|(path, p)| {
                (
                    [("port", path.as_str()), ("protocol", p.protocol.as_str())],
                    ConstGauge::new(u32::from(p.state == "open")),
                )
            }),
        )?;
        family(
            e,
            "heartguard_ingest_serial_port_last_frame_timestamp_seconds",
            "When the port's last valid frame arrived (Unix time; 0: none since start).",
            MetricType::Gauge,
            ports
                .iter()
                .map(|(path, p)| ([("port", path.as_str())], ConstGauge::new(secs(p.last_frame_ns.unwrap_or(0))))),
        )?;
        counter(
            e,
            "heartguard_ingest_serial_disconnects",
            "Serial devices lost (EOF, I/O error) and reopened.",
            c.serial_disconnects.load(Relaxed),
        )?;
        counter(
            e,
            "heartguard_ingest_serial_silences",
            "Times a serial port sent no frame for its watchdog period.",
            c.serial_watchdog.load(Relaxed),
        )?;
        counter(
            e,
            "heartguard_ingest_serial_overflow",
            "Serial readings dropped, oldest first, because intake was behind.",
            c.serial_overflow.load(Relaxed),
        )?;
        counter(
            e,
            "heartguard_ingest_hl7_duplicates",
            "HL7 messages received again (a retry) after they were stored; acknowledged, not stored twice.",
            c.hl7_duplicates.load(Relaxed),
        )?;
        gauge(
            e,
            "heartguard_ingest_hl7_connections",
            "HL7 (MLLP) connections open.",
            c.mllp.open.load(Relaxed) as i64,
        )?;
        gauge(
            e,
            "heartguard_ingest_hl7_connections_max",
            "hl7.max_connections (0: no HL7 listener).",
            c.mllp.max.load(Relaxed) as i64,
        )?;
        family(
            e,
            "heartguard_ingest_hl7_connections_refused",
            "HL7 connections closed at once: peer outside hl7.allow, every slot in use, failed TLS handshake.",
            MetricType::Counter,
            c.mllp.refused().into_iter().map(|(r, n)| ([("reason", r)], ConstCounter::new(n))),
        )?;
        counter(
            e,
            "heartguard_ingest_hl7_idle_timeouts",
            "HL7 connections closed because nothing came for hl7.idle_timeout_secs.",
            c.mllp.idle_timeouts.load(Relaxed),
        )?;
        let mut rejected: Vec<(Labels<'_, 2>, ConstCounter)> = Vec::new();
        for ((_, p), sc) in &sources {
            for (reason, n) in sc.rejected() {
                rejected.push(([("protocol", p), ("reason", reason)], ConstCounter::new(n)));
            }
        }
        family(
            e,
            "heartguard_decode_rejected",
            "Payloads or readings refused by the decoder.",
            MetricType::Counter,
            rejected,
        )?;
        family(
            e,
            "heartguard_decode_device_clock_ahead",
            "Readings refused because their device's clock is ahead of the gateway's by more than clock.future_tolerance_ms.",
            MetricType::Counter,
            c.clocks.ahead().into_iter().map(|(p, n)| ([("protocol", p)], ConstCounter::new(n))),
        )?;
        family(
            e,
            "heartguard_decode_unknown_fields",
            "Payload keys that are neither a field nor an alias (skipped).",
            MetricType::Counter,
            per_source(|s| s.unknown_fields.load(Relaxed)),
        )?;
        family(
            e,
            "heartguard_decode_dropped_fields",
            "Fields dropped for a bad value; the rest of the reading was kept.",
            MetricType::Counter,
            per_source(|s| s.dropped_fields.load(Relaxed)),
        )?;

        // Resolve.
        family(
            e,
            "heartguard_resolve_unbound",
            "Readings with no binding (not stored).",
            MetricType::Counter,
            Counters::UNBOUND
                .iter()
                .zip(&c.unbound)
                .map(|(u, n)| ([("reason", u.as_str())], ConstCounter::new(n.load(Relaxed)))),
        )?;

        counter(
            e,
            "heartguard_resolve_parked",
            "Readings parked (waiting for a binding copy current as of their time, or for a binding).",
            c.parked.load(Relaxed),
        )?;
        counter(
            e,
            "heartguard_resolve_unparked",
            "Parked readings later resolved and queued.",
            c.unparked.load(Relaxed),
        )?;
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

        // Queue.
        counter(e, "heartguard_queue_appended", "Points committed to the queue.", c.readings_queued.load(Relaxed))?;
        counter(
            e,
            "heartguard_queue_dropped",
            "Waiting points deleted to make room (queue full, policy drop_oldest).",
            c.queue_dropped.load(Relaxed),
        )?;
        if let Some(q) = &g.queue {
            gauge(e, "heartguard_queue_points", "Points waiting for delivery.", q.points)?;
            gauge(e, "heartguard_queue_bytes", "Bytes of line protocol waiting.", q.bytes)?;
            let age = q.oldest_enqueued_ns.map_or(0.0, |t| secs((g.now_ns - t).max(0)));
            gauge(e, "heartguard_queue_oldest_age_seconds", "Age of the oldest waiting point (0: none).", age)?;
            gauge(e, "heartguard_queue_database_bytes", "Size of the queue database with its WAL.", q.db_file_bytes)?;
            family(
                e,
                "heartguard_queue_destination_points",
                "Points waiting, per destination.",
                MetricType::Gauge,
                q.destinations.iter().map(|(d, n, _)| ([("destination", destination_label(d))], ConstGauge::new(*n))),
            )?;
            let reasons = [crate::sink::REASON_REJECTED, crate::sink::REASON_TOO_LARGE];
            let mut dead: Vec<(String, u64)> = reasons.iter().map(|r| ((*r).to_owned(), 0)).collect();
            for (r, n) in &q.dead_letters {
                match dead.iter_mut().find(|(k, _)| k == r) {
                    Some(slot) => slot.1 = *n,
                    None => dead.push((r.clone(), *n)),
                }
            }
            let reasons = [crate::queue::PARKED_FRESH, crate::queue::PARKED_UNBOUND];
            family(
                e,
                "heartguard_queue_parked",
                "Parked readings kept, per reason.",
                MetricType::Gauge,
                reasons.iter().map(|r| {
                    let n = q.parked.iter().find(|(k, _)| k == r).map_or(0, |(_, n)| *n);
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
                [(crate::queue::PARKED_FRESH, fresh), (crate::queue::PARKED_UNBOUND, q.unbound_bytes)]
                    .map(|(r, n)| ([("reason", r)], ConstGauge::new(n))),
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
        }

        // Sink, per destination.
        let dests = c.destinations();
        let per_dest = |f: fn(&super::DestinationCounters) -> u64| {
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
            dests.iter().map(|(d, dc)| {
                ([("destination", d.as_str())], ConstGauge::new(secs(dc.last_success_ns.load(Relaxed))))
            }),
        )?;
        {
            let mut m = e.encode_descriptor(
                "heartguard_sink_write_duration_seconds",
                "Duration of write attempts, answered or not (a timeout counts with its full length).",
                None,
                MetricType::Histogram,
            )?;
            for (d, dc) in &dests {
                dc.write_duration.encode(m.encode_family(&[("destination", d.as_str())])?)?;
            }
        }

        // Bindings.
        let b = &g.bindings;
        gauge(e, "heartguard_bindings_cache_size", "Bindings in force.", b.count)?;
        family(
            e,
            "heartguard_bindings_info",
            "Where the bindings in force came from and their version.",
            MetricType::Gauge,
            [([("source", b.source.as_str()), ("version", b.version.as_str())], ConstGauge::new(1))],
        )?;
        gauge(
            e,
            "heartguard_bindings_loaded_timestamp_seconds",
            "When the bindings in force were put in force (Unix time).",
            secs(b.loaded_ns),
        )?;
        gauge(
            e,
            "heartguard_bindings_age_seconds",
            "Time since the bindings in force were put in force.",
            secs((g.now_ns - b.loaded_ns).max(0)),
        )?;
        counter(
            e,
            "heartguard_bindings_sync_errors",
            "Binding loads or syncs that failed (the copy in force stays).",
            c.sync_errors.load(Relaxed),
        )?;
        let refused = c.push_refused_by_reason();
        family(
            e,
            "heartguard_bindings_push_refused",
            "Pushed binding snapshots refused or superseded, per reason.",
            MetricType::Counter,
            crate::bindings::push::refused::Refused::LABELS.iter().map(|r| {
                let n = refused.iter().find(|(x, _)| x == r).map_or(0, |(_, n)| *n);
                ([("reason", *r)], ConstCounter::new(n))
            }),
        )?;
        gauge(
            e,
            "heartguard_bindings_clock_skew_seconds",
            "Database clock minus gateway clock, last measured (0 without PostgreSQL).",
            c.clock_skew_ms.load(Relaxed) as f64 / 1000.0,
        )?;
        counter(
            e,
            "heartguard_report_gaps_opened",
            "Data gaps opened (a stream silent for longer than its threshold).",
            c.gaps_opened.load(Relaxed),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Destination;
    use crate::telemetry::{PROTOCOL_JSON, SOURCE_MQTT};

    /// The value of the sample `name{labels}` (labels exactly as rendered), if present.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
    }

    #[test]
    fn renders_counters_and_gauges_with_bounded_labels() {
        let c = Arc::new(Counters::default());
        let mqtt = c.source(SOURCE_MQTT, PROTOCOL_JSON);
        mqtt.set_connected(true);
        mqtt.messages.fetch_add(7, Relaxed);
        c.port("/dev/ttyUSB0", |p| {
            p.protocol = "nonin_df8".into();
            p.state = "open";
        });
        mqtt.readings.fetch_add(6, Relaxed);
        mqtt.reject("invalid_json");
        c.unbound(crate::resolve::Unbound::UnknownSerial);
        let d = c.destination(&Destination { org: String::new(), bucket: "heartguard_vitals".into() });
        d.written(5, 2_000_000_000);
        d.write_duration.observe(0.02);
        let q = QueueGauges {
            points: 3,
            bytes: 300,
            oldest_enqueued_ns: Some(7_000_000_000),
            db_file_bytes: 4096,
            destinations: vec![(Destination { org: String::new(), bucket: "heartguard_vitals".into() }, 3, None)],
            dead_letters: vec![("rejected".into(), 2)],
            parked: vec![("unbound".into(), 4)],
            parked_bytes: 700,
            unbound_bytes: 500,
            dead_letter_bytes: 90,
            evicted_parked: 6,
            evicted_dead_letters: 1,
        };
        let text = render(
            &c,
            Gauges {
                queue: Some(q),
                bindings: BindingsInfo {
                    count: 3,
                    source: "file".into(),
                    version: "abc".into(),
                    loaded_ns: 1_000_000_000,
                },
                heartbeats: vec![("intake".into(), Duration::from_millis(1500))],
                ready: true,
                started_ns: 1_000_000_000,
                now_ns: 10_000_000_000,
            },
        );
        let v = |s: &str| sample(&text, s).unwrap_or_else(|| panic!("{s} in\n{text}"));
        assert_eq!(v(r#"heartguard_ingest_messages_total{source="mqtt",protocol="json"}"#), 7.0);
        assert_eq!(v(r#"heartguard_ingest_readings_total{source="mqtt",protocol="json"}"#), 6.0);
        assert_eq!(v(r#"heartguard_decode_rejected_total{protocol="json",reason="invalid_json"}"#), 1.0);
        assert_eq!(v(r#"heartguard_resolve_unbound_total{reason="unknown_serial"}"#), 1.0);
        assert_eq!(v(r#"heartguard_ingest_source_connected{source="mqtt",protocol="json"}"#), 1.0);
        assert_eq!(v(r#"heartguard_ingest_serial_port_open{port="/dev/ttyUSB0",protocol="nonin_df8"}"#), 1.0);
        assert_eq!(v(r#"heartguard_resolve_unbound_total{reason="ambiguous_signal_type"}"#), 0.0);
        assert_eq!(v("heartguard_queue_points"), 3.0);
        assert_eq!(v("heartguard_queue_oldest_age_seconds"), 3.0);
        assert_eq!(v(r#"heartguard_queue_dead_letters{reason="rejected"}"#), 2.0);
        assert_eq!(v(r#"heartguard_queue_dead_letters{reason="too_large"}"#), 0.0);
        assert_eq!(v(r#"heartguard_queue_parked{reason="unbound"}"#), 4.0);
        assert_eq!(v(r#"heartguard_queue_parked{reason="fresh"}"#), 0.0);
        assert_eq!(v(r#"heartguard_queue_parked_bytes{reason="unbound"}"#), 500.0);
        assert_eq!(v(r#"heartguard_queue_parked_bytes{reason="fresh"}"#), 200.0);
        assert_eq!(v("heartguard_queue_dead_letter_bytes"), 90.0);
        assert_eq!(v(r#"heartguard_queue_evicted_total{kind="parked"}"#), 6.0);
        assert_eq!(v(r#"heartguard_queue_evicted_total{kind="dead_letter"}"#), 1.0);
        assert_eq!(v(r#"heartguard_sink_points_delivered_total{destination="heartguard_vitals"}"#), 5.0);
        assert_eq!(
            v(r#"heartguard_sink_write_duration_seconds_bucket{destination="heartguard_vitals",le="0.025"}"#),
            1.0
        );
        assert_eq!(v(r#"heartguard_sink_write_duration_seconds_count{destination="heartguard_vitals"}"#), 1.0);
        assert_eq!(v("heartguard_bindings_cache_size"), 3.0);
        assert_eq!(v(r#"heartguard_bindings_info{source="file",version="abc"}"#), 1.0);
        assert_eq!(v("heartguard_bindings_age_seconds"), 9.0);
        assert_eq!(v(r#"heartguard_health_heartbeat_age_seconds{stage="intake"}"#), 1.5);
        assert_eq!(v("heartguard_health_ready"), 1.0);
        assert_eq!(v(&format!(r#"heartguard_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"))), 1.0);
        assert!(text.contains("# TYPE heartguard_sink_write_duration_seconds histogram"), "{text}");
        // Every sample line belongs to a declared family named heartguard_*.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(l.starts_with("heartguard_"), "{l}");
        }
    }
}
