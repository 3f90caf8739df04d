//! Every counter of the data path: plain atomics, cheap on the hot path, read at each scrape
//! and for the periodic summary log. A leaf: every stage imports it, it imports no stage
//! (reasons arrive as label text, see [`super::labels`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::histogram::Histogram;

use super::labels::UNBOUND_REASONS;
use super::lock::lock;
use super::{clocks, devices, health, mllp};
use crate::model::Destination;

/// Every counter of the data path, and the stages' heartbeats.
#[derive(Debug, Default)]
pub struct Counters {
    /// Per (source, protocol): what came in and what the decoder made of it.
    sources: Mutex<BTreeMap<(&'static str, &'static str), Arc<SourceCounters>>>,
    /// Readings resolved to a binding and committed to the queue.
    pub readings_queued: AtomicU64,
    /// Waiting points deleted to make room (queue full, policy `drop_oldest`).
    pub queue_dropped: AtomicU64,
    /// Readings without a binding, by reason: one slot per [`UNBOUND_REASONS`] entry, so
    /// counting one takes no lock.
    unbound: [AtomicU64; UNBOUND_REASONS.len()],
    /// Per destination: what the sink did.
    destinations: Mutex<BTreeMap<String, Arc<DestinationCounters>>>,
    /// Readings parked: waiting for a fresh binding copy or for a binding at all.
    pub parked: AtomicU64,
    /// Parked readings later resolved and queued.
    pub unparked: AtomicU64,
    /// Readings resolved on a copy whose freshness mark had stopped (PostgreSQL away).
    pub resolved_stale: AtomicU64,
    /// Parked readings that found no binding within `max_park_age_ms`.
    pub expired_unbound: AtomicU64,
    /// Binding loads or syncs that failed (a failed PostgreSQL sync, a bindings file refused
    /// at reload), while the copy in force stays.
    pub sync_errors: AtomicU64,
    /// Pushed binding snapshots refused (untrusted, bad signature, older, …), by reason
    /// (rare: a lock is fine).
    push_refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Data gaps opened (a stream silent for longer than its threshold).
    pub gaps_opened: AtomicU64,
    /// Database clock minus gateway clock, last measured (ms).
    pub clock_skew_ms: AtomicI64,
    /// Valid frames read from serial ports.
    pub serial_frames: AtomicU64,
    /// Serial devices lost (EOF, I/O error) and reopened.
    pub serial_disconnects: AtomicU64,
    /// Times a serial port went silent for its watchdog period.
    pub serial_watchdog: AtomicU64,
    /// Serial ports silent right now (a gauge).
    pub serial_ports_silent: AtomicU64,
    /// Serial readings dropped, oldest first, because intake was behind.
    pub serial_overflow: AtomicU64,
    /// HL7 messages received over MLLP, and how many of them were retries already stored.
    pub hl7_messages: AtomicU64,
    pub hl7_duplicates: AtomicU64,
    /// The HL7 listener's connections.
    pub mllp: mllp::MllpConnections,
    /// Each serial port's state, by path, for `status`.
    pub ports: Mutex<BTreeMap<String, PortStatus>>,
    /// Stages' heartbeats, for `/healthz` and the systemd watchdog.
    pub health: health::Health,
    /// Devices seen recently, for `status` (never a metric label).
    pub devices: devices::DevicesSeen,
    /// The clock tolerance the decoders apply, and the devices whose clocks are ahead.
    pub clocks: clocks::DeviceClocks,
}

/// What `status` shows of one serial port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortStatus {
    pub protocol: String,
    /// `opening`, `open`, `silent` (watchdog) or `disconnected`.
    pub state: &'static str,
    pub frames: u64,
    /// When the last valid frame arrived (ns since the epoch), if one did.
    pub last_frame_ns: Option<i64>,
}

/// Counters of one source and payload protocol (`mqtt`/`json`, `serial`/`nonin`, …).
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Messages (MQTT) or frames (serial) received.
    pub messages: AtomicU64,
    /// Readings decoded successfully.
    pub readings: AtomicU64,
    /// Payload keys that are neither a field nor an alias.
    pub unknown_fields: AtomicU64,
    /// Fields dropped for a bad value; the rest of the reading was kept.
    pub dropped_fields: AtomicU64,
    /// Whether the source is connected (MQTT: to its broker); see [`Self::set_connected`].
    connected: AtomicBool,
    /// Whether the source reports a connection at all (serial ports have their own state).
    has_connection: AtomicBool,
    /// Refused payloads and readings by reason (rare: a lock is fine).
    rejected: Mutex<BTreeMap<&'static str, u64>>,
}

impl SourceCounters {
    pub fn set_connected(&self, connected: bool) {
        self.has_connection.store(true, Relaxed);
        self.connected.store(connected, Relaxed);
    }

    /// `None` for sources without a connection of their own.
    pub fn connection(&self) -> Option<bool> {
        self.has_connection.load(Relaxed).then(|| self.connected.load(Relaxed))
    }

    pub fn reject(&self, reason: &'static str) {
        *lock(&self.rejected).entry(reason).or_default() += 1;
    }

    pub fn rejected(&self) -> Vec<(&'static str, u64)> {
        lock(&self.rejected).iter().map(|(r, n)| (*r, *n)).collect()
    }
}

/// Counters and state of one InfluxDB destination's sink worker.
#[derive(Debug)]
pub struct DestinationCounters {
    /// Points InfluxDB answered 2xx for.
    pub delivered: AtomicU64,
    /// Failed write attempts (each retry counts).
    pub write_failures: AtomicU64,
    /// Points moved to the dead letters, by reason.
    dead_lettered: Mutex<BTreeMap<&'static str, u64>>,
    /// Whether the last write attempt failed.
    pub failing: AtomicBool,
    /// When InfluxDB last answered 2xx (ns since the epoch; 0: never since start).
    pub last_success_ns: AtomicI64,
    /// The last failure, short and content-free (status code or error kind).
    last_error: Mutex<Option<String>>,
    /// Duration of write attempts, in seconds.
    pub write_duration: Histogram,
}

/// Buckets of the write latency histogram, in seconds: a LAN write takes milliseconds, a
/// large gzip batch over a slow link seconds, and the request timeout is 30 s by default.
pub const WRITE_DURATION_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

impl Default for DestinationCounters {
    fn default() -> Self {
        Self {
            delivered: AtomicU64::new(0),
            write_failures: AtomicU64::new(0),
            dead_lettered: Mutex::default(),
            failing: AtomicBool::new(false),
            last_success_ns: AtomicI64::new(0),
            last_error: Mutex::default(),
            write_duration: Histogram::new(WRITE_DURATION_BUCKETS),
        }
    }
}

impl DestinationCounters {
    pub fn written(&self, points: u64, now_ns: i64) {
        self.delivered.fetch_add(points, Relaxed);
        self.last_success_ns.store(now_ns, Relaxed);
        self.failing.store(false, Relaxed);
    }

    pub fn failed(&self, why: String) {
        self.write_failures.fetch_add(1, Relaxed);
        self.failing.store(true, Relaxed);
        *lock(&self.last_error) = Some(why);
    }

    pub fn dead_lettered(&self, reason: &'static str, points: u64) {
        *lock(&self.dead_lettered).entry(reason).or_default() += points;
    }

    pub fn dead_letters(&self) -> Vec<(&'static str, u64)> {
        lock(&self.dead_lettered).iter().map(|(r, n)| (*r, *n)).collect()
    }

    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }
}

/// The label value of a destination: `org/bucket`, or the bucket alone when there is no org
/// (v1: `db` or `db/rp`). Destinations are few, so the label stays low-cardinality.
pub fn destination_label(d: &Destination) -> String {
    if d.org.is_empty() { d.bucket.clone() } else { format!("{}/{}", d.org, d.bucket) }
}

impl Counters {
    /// Updates the status of serial port `path`.
    pub fn port(&self, path: &str, update: impl FnOnce(&mut PortStatus)) {
        update(lock(&self.ports).entry(path.to_owned()).or_default());
    }

    /// Every serial port's state, by path.
    pub fn ports(&self) -> Vec<(String, PortStatus)> {
        lock(&self.ports).iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The counters of a source and protocol, created on first use. Keep the handle: it is
    /// lock-free to update.
    pub fn source(&self, source: &'static str, protocol: &'static str) -> Arc<SourceCounters> {
        lock(&self.sources).entry((source, protocol)).or_default().clone()
    }

    /// The counters of a destination, created on first use.
    pub fn destination(&self, d: &Destination) -> Arc<DestinationCounters> {
        lock(&self.destinations).entry(destination_label(d)).or_default().clone()
    }

    pub fn sources(&self) -> Vec<((&'static str, &'static str), Arc<SourceCounters>)> {
        lock(&self.sources).iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    pub fn destinations(&self) -> Vec<(String, Arc<DestinationCounters>)> {
        lock(&self.destinations).iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Counts a reading without a binding, by its reason (one of [`UNBOUND_REASONS`]).
    pub fn unbound(&self, reason: &str) {
        if let Some(i) = UNBOUND_REASONS.iter().position(|r| *r == reason) {
            self.unbound[i].fetch_add(1, Relaxed);
        }
    }

    /// Readings without a binding since start, per reason, every reason listed.
    pub fn unbound_by_reason(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        UNBOUND_REASONS.into_iter().zip(&self.unbound).map(|(r, n)| (r, n.load(Relaxed)))
    }

    pub fn unbound_total(&self) -> u64 {
        self.unbound.iter().map(|c| c.load(Relaxed)).sum()
    }

    fn sum_sources(&self, f: impl Fn(&SourceCounters) -> u64) -> u64 {
        lock(&self.sources).values().map(|s| f(s)).sum()
    }

    /// Points InfluxDB answered 2xx for, over every destination.
    pub fn delivered_total(&self) -> u64 {
        lock(&self.destinations).values().map(|d| d.delivered.load(Relaxed)).sum()
    }

    pub fn write_failures_total(&self) -> u64 {
        lock(&self.destinations).values().map(|d| d.write_failures.load(Relaxed)).sum()
    }

    pub fn dead_lettered_total(&self) -> u64 {
        lock(&self.destinations).values().flat_map(|d| d.dead_letters()).map(|(_, n)| n).sum()
    }

    pub fn push_refused(&self, reason: &'static str) {
        *lock(&self.push_refused).entry(reason).or_default() += 1;
    }

    pub fn push_refused_by_reason(&self) -> Vec<(&'static str, u64)> {
        lock(&self.push_refused).iter().map(|(r, n)| (*r, *n)).collect()
    }

    /// One line for the periodic summary log.
    pub fn summary(&self) -> String {
        let mut rejected: BTreeMap<&str, u64> = BTreeMap::new();
        for (_, s) in self.sources() {
            for (r, n) in s.rejected() {
                *rejected.entry(r).or_default() += n;
            }
        }
        let rejected_total: u64 = rejected.values().sum();
        let rejected: Vec<String> = rejected.iter().map(|(r, n)| format!("{r}={n}")).collect();
        let unbound: Vec<String> =
            self.unbound_by_reason().filter(|(_, n)| *n > 0).map(|(r, n)| format!("{r}={n}")).collect();
        format!(
            "messages={} readings={} queued={} delivered={} rejected={} [{}] unbound={} [{}] unknown_fields={} dropped_fields={} write_failures={} dead_lettered={} parked={} unparked={} resolved_stale={} expired_unbound={} sync_errors={} push_refused={} gaps_opened={} clock_skew_ms={}",
            self.sum_sources(|s| s.messages.load(Relaxed)),
            self.sum_sources(|s| s.readings.load(Relaxed)),
            self.readings_queued.load(Relaxed),
            self.delivered_total(),
            rejected_total,
            rejected.join(" "),
            self.unbound_total(),
            unbound.join(" "),
            self.sum_sources(|s| s.unknown_fields.load(Relaxed)),
            self.sum_sources(|s| s.dropped_fields.load(Relaxed)),
            self.write_failures_total(),
            self.dead_lettered_total(),
            self.parked.load(Relaxed),
            self.unparked.load(Relaxed),
            self.resolved_stale.load(Relaxed),
            self.expired_unbound.load(Relaxed),
            self.sync_errors.load(Relaxed),
            lock(&self.push_refused).values().sum::<u64>(),
            self.gaps_opened.load(Relaxed),
            self.clock_skew_ms.load(Relaxed),
        ) + &self.device_summary()
    }

    /// The serial and HL7 part of the summary; empty while neither saw anything.
    fn device_summary(&self) -> String {
        let serial = [
            self.serial_frames.load(Relaxed),
            self.serial_disconnects.load(Relaxed),
            self.serial_watchdog.load(Relaxed),
            self.serial_ports_silent.load(Relaxed),
            self.serial_overflow.load(Relaxed),
        ];
        let hl7 = [self.hl7_messages.load(Relaxed), self.hl7_duplicates.load(Relaxed)];
        let mut out = String::new();
        if serial.iter().any(|n| *n > 0) {
            out += &format!(
                " serial_frames={} serial_disconnects={} serial_watchdog={} serial_ports_silent={} serial_overflow={}",
                serial[0], serial[1], serial[2], serial[3], serial[4]
            );
        }
        if hl7.iter().any(|n| *n > 0) {
            out += &format!(" hl7_messages={} hl7_duplicates={}", hl7[0], hl7[1]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::labels::{PROTOCOL_JSON, SOURCE_MQTT};

    #[test]
    fn summary_adds_up_sources_and_destinations() {
        let c = Counters::default();
        let mqtt = c.source(SOURCE_MQTT, PROTOCOL_JSON);
        mqtt.messages.fetch_add(5, Relaxed);
        mqtt.readings.fetch_add(4, Relaxed);
        mqtt.reject("invalid_json");
        c.source("serial", "nonin").reject("invalid_json");
        c.source("serial", "nonin").reject("bad_checksum");
        c.unbound("no_stream_at_time");
        let d = c.destination(&Destination { org: String::new(), bucket: "db".into() });
        d.written(3, 1);
        d.failed("HTTP 503".into());
        d.dead_lettered("rejected", 2);
        assert_eq!(
            c.summary(),
            "messages=5 readings=4 queued=0 delivered=3 rejected=3 [bad_checksum=1 invalid_json=2] unbound=1 \
             [no_stream_at_time=1] unknown_fields=0 dropped_fields=0 write_failures=1 dead_lettered=2 parked=0 \
             unparked=0 resolved_stale=0 expired_unbound=0 sync_errors=0 push_refused=0 gaps_opened=0 clock_skew_ms=0"
        );
        assert!(Arc::ptr_eq(&d, &c.destination(&Destination { org: String::new(), bucket: "db".into() })));
        assert_eq!(d.last_error().as_deref(), Some("HTTP 503"));
    }

    #[test]
    fn destination_labels_are_short() {
        let d = |o: &str, b: &str| destination_label(&Destination { org: o.into(), bucket: b.into() });
        assert_eq!(d("", "heartguard_vitals/30d"), "heartguard_vitals/30d");
        assert_eq!(d("heartguard", "vitals"), "heartguard/vitals");
    }
}
