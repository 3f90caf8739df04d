//! `/metrics`: the counters and the figures of the moment, in the Prometheus text format
//! (0.0.4), rendered with prometheus-client on each scrape.
//!
//! Names follow `heartguard_<stage>_<noun>_<unit|total>`; counters get their `_total` from the
//! encoder. Labels are bounded: `source`, `protocol`, `reason`, `kind`, `stage` come from code,
//! and `destination` from the bindings' few InfluxDB destinations.
//!
//! One file per family of stages, in the order data flows: `ingest` (and decode), `queue`
//! (and resolve), `sinks`; the process, its health and the bindings are here.

mod family;
mod ingest;
mod queue;
mod sinks;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::counters::Counters;
use super::labels::PUSH_REFUSED_REASONS;
use crate::queue::inspect::QueueGauges;
use family::{counter, family, gauge, secs};

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
    /// The label of a binding table's source: its first word (`file`, `cache`, `none`, …).
    pub fn source_label(source: &str) -> String {
        source.split_whitespace().next().unwrap_or("none").to_owned()
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

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let (c, g, e) = (&self.counters, &self.g, &mut enc);
        process(e, g)?;
        ingest::encode(e, c)?;
        queue::encode(e, c, g.queue.as_ref(), g.now_ns)?;
        sinks::encode(e, c)?;
        bindings(e, c, &g.bindings, g.now_ns)
    }
}

/// The build, when it started, whether it is ready and its stages' heartbeats.
fn process(e: &mut DescriptorEncoder<'_>, g: &Gauges) -> fmt::Result {
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
    Ok(())
}

/// The binding table in force, its syncs and pushes, and the gaps the report opened.
fn bindings(e: &mut DescriptorEncoder<'_>, c: &Counters, b: &BindingsInfo, now_ns: i64) -> fmt::Result {
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
        secs((now_ns - b.loaded_ns).max(0)),
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
        PUSH_REFUSED_REASONS.iter().map(|r| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Destination;
    use crate::telemetry::labels::{PROTOCOL_JSON, SOURCE_MQTT};

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
        c.unbound("unknown_serial");
        let d = c.destination(&Destination { org: String::new(), bucket: "heartguard_vitals".into() });
        d.written(5, 2_000_000_000);
        d.write_duration.observe(0.02);
        let q = QueueGauges {
            points: 3,
            bytes: 300,
            oldest_enqueued_ns: Some(7_000_000_000),
            db_file_bytes: 4096,
            destinations: vec![(Destination { org: String::new(), bucket: "heartguard_vitals".into() }, 3, None)],
            dead_letters: vec![(crate::queue::dead_letters::DeadLetterReason::Rejected, 2)],
            parked: vec![(crate::queue::parked::ParkReason::Unbound, 4)],
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
