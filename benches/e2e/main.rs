//! End-to-end benchmark: the gateway beside the ceilings of its own broker and database,
//! measured in one run on one machine (BENCHMARKS.md explains every figure and what limits
//! it). Run it with `scripts/bench-e2e.sh`; it starts real Mosquitto and InfluxDB processes
//! on loopback ports, runs for minutes, and is therefore not in `cargo bench`'s default set.
//!
//! Phases:
//! 1. Broker ceiling: the load generator (32 devices, QoS 1) against a subscriber that only
//!    counts and acknowledges; the highest rate it sustains.
//! 2. Latency: 1,000 readings/s stamped with their publish time; publish-to-visible p50/p99.
//! 3. Gateway: the same load generator against the gateway; the highest rate at which every
//!    reading is in InfluxDB within the same grace, and the gateway's CPU per 1,000 readings.
//! 4. Backlog: InfluxDB down, 1,000,000 readings queued; the same lines posted by a minimal
//!    writer to a fresh InfluxDB (its ceiling), then the gateway's drain when its InfluxDB
//!    returns; peak RSS throughout.
//!
//! Options (after `--`): `--devices N` (32), `--step-secs S` (10), `--backlog N` (1000000),
//! `--latency-secs S` (30), `--latency-rate R` (1000), `--start-rate R` (2000),
//! `--phases broker,gateway,latency,backlog` (all), `--keep-alive-secs S` (30, the gateway's
//! MQTT keep-alive), `--broker-inflight N` (1000, the broker's `max_inflight_messages`),
//! `--out FILE` (a Markdown report; always printed too).

mod mqtt;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use heartguard_testkit::{DB, Gateway, Influx1, Mosquitto};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;

const MEASUREMENT: &str = "vital_signs";
const HOUR_MS: i64 = 3_600_000;
/// Matches the shipped `batch_max_lines`, so the minimal writer posts batches of the size
/// the gateway posts.
const BATCH_LINES: usize = 5000;
/// Flush interval of the gateway under test: the shipped default.
const FLUSH_MS: u64 = 1000;

const PHASES: [&str; 4] = ["broker", "gateway", "latency", "backlog"];

struct Opts {
    devices: usize,
    step_secs: f64,
    backlog: u64,
    latency_secs: f64,
    latency_rate: u64,
    start_rate: u64,
    phases: Vec<String>,
    /// `mqtt.keep_alive_secs` of the gateways (the shipped default: 30).
    keep_alive_secs: u64,
    /// The broker's `max_inflight_messages` (the README's recommendation by default).
    broker_inflight: u64,
    out: Option<PathBuf>,
}

/// The broker as the README recommends it for the gateway ("Broker settings").
const BROKER_INFLIGHT: u64 = 1000;

fn opts() -> Opts {
    let mut o = Opts {
        devices: 32,
        step_secs: 10.0,
        backlog: 1_000_000,
        latency_secs: 30.0,
        latency_rate: 1000,
        start_rate: 2000,
        phases: PHASES.iter().map(|p| (*p).to_owned()).collect(),
        keep_alive_secs: 30,
        broker_inflight: BROKER_INFLIGHT,
        out: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match a.as_str() {
            "--devices" => o.devices = value(&a).parse().expect("--devices N"),
            "--step-secs" => o.step_secs = value(&a).parse().expect("--step-secs S"),
            "--backlog" => o.backlog = value(&a).parse().expect("--backlog N"),
            "--latency-secs" => o.latency_secs = value(&a).parse().expect("--latency-secs S"),
            "--latency-rate" => o.latency_rate = value(&a).parse().expect("--latency-rate R"),
            "--start-rate" => o.start_rate = value(&a).parse().expect("--start-rate R"),
            "--out" => o.out = Some(value(&a).into()),
            "--keep-alive-secs" => o.keep_alive_secs = value(&a).parse().expect("--keep-alive-secs S"),
            "--broker-inflight" => o.broker_inflight = value(&a).parse().expect("--broker-inflight N"),
            "--phases" => o.phases = value(&a).split(',').map(str::to_owned).collect(),
            // `cargo bench` passes `--bench` to every bench target.
            "--bench" => {}
            other => panic!("unknown option {other:?} (see the top of benches/e2e/main.rs)"),
        }
    }
    for p in &o.phases {
        assert!(PHASES.contains(&p.as_str()), "--phases: {p:?} is not one of {PHASES:?}");
    }
    assert!(o.devices > 0 && o.step_secs > 0.0 && o.backlog > 0, "options must be positive");
    o
}

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn say(line: impl AsRef<str>) {
    eprintln!("[{:>7.1}s] {}", started().elapsed().as_secs_f64(), line.as_ref());
}

fn started() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

// ---------------------------------------------------------------------------
// The load generator: one MQTT connection per device, QoS 1.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Stamp {
    /// `ts` = `t0_ms` + the reading's number on its device: unique, in a window of its own.
    Synthetic { t0_ms: i64 },
    /// `ts` = the wall clock at publish (made strictly increasing per device).
    Wall,
}

#[derive(Clone, Copy)]
struct Load {
    port: u16,
    devices: usize,
    total: u64,
    /// Readings per second over all devices; `None`: as fast as PUBACKs come back.
    rate: Option<f64>,
    stamp: Stamp,
    /// Most unacknowledged publishes per device.
    window: u64,
}

struct Published {
    acked: u64,
    /// Wall-clock stamps of every reading (`Stamp::Wall` only).
    stamps: Vec<i64>,
}

struct DeviceConn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    reader: mqtt::Reader,
}

async fn connect(port: u16, client_id: &str) -> std::io::Result<DeviceConn> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(&mqtt::connect(client_id, true, 60)).await?;
    let mut reader = mqtt::Reader::new();
    let mut connack = None;
    while connack.is_none() {
        if !reader
            .read_some(&mut rd, |t, _, body| {
                if t == mqtt::CONNACK {
                    connack = Some(body.get(1).copied().unwrap_or(255));
                }
            })
            .await?
        {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    if connack != Some(0) {
        return Err(std::io::Error::other(format!("CONNACK refused: {connack:?}")));
    }
    Ok(DeviceConn { rd, wr, reader })
}

async fn publish(load: Load) -> std::io::Result<Published> {
    let mut conns = Vec::with_capacity(load.devices);
    for i in 0..load.devices {
        conns.push(connect(load.port, &format!("bench-device-{i:03}")).await?);
    }
    let start = Instant::now();
    let devices = load.devices as u64;
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let n = load.total / devices + u64::from((i as u64) < load.total % devices);
            let rate = load.rate.map(|r| r / devices as f64);
            tokio::spawn(device(i, conn, n, rate, load.stamp, load.window, start))
        })
        .collect();
    let mut out = Published { acked: 0, stamps: Vec::new() };
    for t in tasks {
        let (acked, stamps) = t.await.expect("device task")?;
        out.acked += acked;
        out.stamps.extend(stamps);
    }
    out.stamps.sort_unstable();
    Ok(out)
}

async fn device(
    idx: usize,
    conn: DeviceConn,
    n: u64,
    rate: Option<f64>,
    stamp: Stamp,
    window: u64,
    start: Instant,
) -> std::io::Result<(u64, Vec<i64>)> {
    let DeviceConn { mut rd, mut wr, mut reader } = conn;
    let acked = Arc::new(AtomicU64::new(0));
    let notify = Arc::new(Notify::new());
    let acks = {
        let (acked, notify) = (acked.clone(), notify.clone());
        tokio::spawn(async move {
            while acked.load(Relaxed) < n {
                let mut got = 0;
                let open = reader.read_some(&mut rd, |t, _, _| got += u64::from(t == mqtt::PUBACK)).await?;
                if got > 0 {
                    acked.fetch_add(got, Relaxed);
                    notify.notify_one();
                }
                if !open {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
                }
            }
            Ok::<_, std::io::Error>(rd)
        })
    };
    let serial = format!("BENCH-{idx:03}");
    let topic = format!("devices/{serial}/vitals");
    let (mut sent, mut packet_id, mut last_ts) = (0u64, 0u16, i64::MIN);
    let mut stamps = Vec::new();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut payload = Vec::with_capacity(256);
    while sent < n {
        let by_window = acked.load(Relaxed) + window;
        let by_rate = rate.map_or(u64::MAX, |r| (r * start.elapsed().as_secs_f64()) as u64 + 1);
        let due = by_window.min(by_rate).min(n);
        if due <= sent {
            match rate {
                Some(r) if by_window > sent => {
                    tokio::time::sleep_until((start + Duration::from_secs_f64(sent as f64 / r)).into()).await
                }
                _ => notify.notified().await,
            }
            continue;
        }
        buf.clear();
        for _ in sent..due.min(sent + 256) {
            let ts = match stamp {
                Stamp::Synthetic { t0_ms } => t0_ms + sent as i64,
                Stamp::Wall => {
                    last_ts = wall_ms().max(last_ts + 1);
                    stamps.push(last_ts);
                    last_ts
                }
            };
            payload.clear();
            // A typical multiparameter monitor reading (src/simulate.rs has the same shape).
            write!(
                payload,
                r#"{{"serial":"{serial}","ts":{ts},"heart_rate":{},"spo2":{},"systolic_bp":{},"diastolic_bp":{},"temperature":36.{}}}"#,
                60 + sent % 40,
                94 + sent % 6,
                110 + sent % 30,
                70 + sent % 15,
                sent % 10
            )
            .expect("write to a Vec");
            mqtt::publish_qos1(&mut buf, topic.as_bytes(), mqtt::next_packet_id(&mut packet_id), &payload);
            sent += 1;
        }
        wr.write_all(&buf).await?;
    }
    let rd = acks.await.expect("PUBACK reader")?;
    drop(wr.reunite(rd));
    Ok((acked.load(Relaxed), stamps))
}

// ---------------------------------------------------------------------------
// Consumers: the counting subscriber and the gateway.
// ---------------------------------------------------------------------------

/// A QoS 1 subscriber that only counts and acknowledges.
struct Counter {
    count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Counter {
    async fn start(port: u16) -> Counter {
        let DeviceConn { mut rd, mut wr, mut reader } = connect(port, "bench-counter").await.expect("counter connects");
        wr.write_all(&mqtt::subscribe(1, "devices/+/vitals")).await.expect("SUBSCRIBE");
        let mut subscribed = false;
        while !subscribed {
            reader.read_some(&mut rd, |t, _, _| subscribed |= t == mqtt::SUBACK).await.expect("SUBACK");
        }
        let count = Arc::new(AtomicU64::new(0));
        let task = {
            let count = count.clone();
            tokio::spawn(async move {
                let mut acks = Vec::with_capacity(64 * 1024);
                loop {
                    acks.clear();
                    let mut n = 0;
                    let open = reader
                        .read_some(&mut rd, |t, flags, body| {
                            if t == mqtt::PUBLISH {
                                n += 1;
                                if (flags >> 1) & 3 == 1
                                    && let Some(id) = mqtt::publish_packet_id(body)
                                {
                                    mqtt::puback(&mut acks, id);
                                }
                            }
                        })
                        .await;
                    count.fetch_add(n, Relaxed);
                    if !matches!(open, Ok(true)) || wr.write_all(&acks).await.is_err() {
                        return;
                    }
                }
            })
        };
        Counter { count, task }
    }
}

/// The gateway process, observed through its `/metrics` and `/proc`.
struct Probe {
    pid: u32,
    metrics_url: String,
    http: reqwest::Client,
}

#[derive(Default, Debug, Clone, Copy)]
struct Metrics {
    delivered: u64,
    received: u64,
    appended: u64,
    waiting: u64,
    last_success_s: f64,
}

impl Probe {
    async fn new(gw: &Gateway) -> Probe {
        Probe {
            pid: gw.pid().expect("gateway runs"),
            metrics_url: format!("{}/metrics", gw.http_url().await),
            http: heartguard_testkit::http_client(),
        }
    }

    async fn metrics(&self) -> Metrics {
        let text = self.http.get(&self.metrics_url).send().await.expect("GET /metrics").text().await.expect("body");
        let sum = |name: &str| -> f64 {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.rsplit_once(' '))
                .filter(|(k, _)| k.split('{').next() == Some(name))
                .filter_map(|(_, v)| v.parse::<f64>().ok())
                .sum()
        };
        Metrics {
            delivered: sum("heartguard_sink_points_delivered_total") as u64,
            received: sum("heartguard_ingest_messages_total") as u64,
            appended: sum("heartguard_queue_appended_total") as u64,
            waiting: sum("heartguard_queue_points") as u64,
            last_success_s: sum("heartguard_sink_last_success_timestamp_seconds"),
        }
    }
}

/// Clock ticks per second (`/proc` times are in ticks).
fn ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        let out = std::process::Command::new("getconf").arg("CLK_TCK").output().expect("getconf CLK_TCK");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("CLK_TCK is a number")
    })
}

/// User + system CPU seconds of a process.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    cpu_of_stat(&stat).expect("stat format")
}

fn cpu_of_stat(stat: &str) -> Option<f64> {
    // Fields after the command name (which may hold spaces) start with the state (field 3);
    // utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks())
}

/// Where the machine's CPU went, in CPU seconds: the servers by process name, this process
/// (the load generator and counting subscriber), and the whole machine busy (`/proc/stat`).
#[derive(Debug, Clone, Copy, Default)]
struct CpuSplit {
    broker: f64,
    influx: f64,
    bench: f64,
    busy: f64,
}

impl CpuSplit {
    fn now() -> Self {
        let mut split = CpuSplit::default();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            let Some(cpu) = cpu_of_stat(&stat) else { continue };
            if stat.contains("(mosquitto)") {
                split.broker += cpu;
            } else if stat.contains("(influxd)") {
                split.influx += cpu;
            }
        }
        split.bench = cpu_secs(std::process::id());
        // The first line of /proc/stat: user nice system idle iowait irq softirq steal ...
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let f: Vec<f64> =
            stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        split.busy =
            f.iter().enumerate().filter(|(i, _)| ![3, 4].contains(i)).map(|(_, v)| v).take(6).sum::<f64>() / ticks();
        split
    }

    /// Cores used per second of `secs` since `earlier`.
    fn cores_since(&self, earlier: &CpuSplit, secs: f64) -> CpuSplit {
        let per = |a: f64, b: f64| (a - b) / secs;
        CpuSplit {
            broker: per(self.broker, earlier.broker),
            influx: per(self.influx, earlier.influx),
            bench: per(self.bench, earlier.bench),
            busy: per(self.busy, earlier.busy),
        }
    }
}

/// A line of /proc/PID/status in MiB (`VmRSS`, `VmHWM`).
fn mem_mib(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"));
    kb / 1024.0
}

enum Consumer<'a> {
    Counter(&'a Counter),
    Gateway { probe: &'a Probe, influx: &'a Influx1 },
}

impl Consumer<'_> {
    async fn mark(&self) -> Mark {
        match self {
            Consumer::Counter(c) => Mark { delivered: c.count.load(Relaxed), received: 0 },
            Consumer::Gateway { probe, .. } => {
                let m = probe.metrics().await;
                Mark { delivered: m.delivered, received: m.received }
            }
        }
    }

    /// True once the consumer has every one of the `total` readings published since `from`.
    /// The gateway's counters include broker redeliveries (a message received twice is one
    /// point written twice), so they only say when to look: the readings are counted in
    /// InfluxDB, in the step's own time window.
    async fn has_all(&self, from: Mark, total: u64, window_ms: i64) -> bool {
        let now = self.mark().await;
        match self {
            Consumer::Counter(_) => now.delivered - from.delivered >= total,
            Consumer::Gateway { influx, .. } => {
                let received = now.received - from.received;
                received >= total
                    && now.delivered - from.delivered >= received
                    && count_between(influx, window_ms, window_ms + HOUR_MS).await >= total
            }
        }
    }

    fn poll(&self) -> Duration {
        match self {
            Consumer::Counter(_) => Duration::from_millis(10),
            // Each scrape costs the gateway a little; 5 per second is plenty.
            Consumer::Gateway { .. } => Duration::from_millis(200),
        }
    }

    /// How long after the last publish a reading may still be on its way in a consumer
    /// that keeps up: the gateway holds readings up to one flush interval by design.
    fn inherent_delay(&self) -> Duration {
        match self {
            Consumer::Counter(_) => Duration::from_millis(250),
            Consumer::Gateway { .. } => Duration::from_millis(FLUSH_MS + 250),
        }
    }

    fn cpu(&self) -> Option<f64> {
        match self {
            Consumer::Counter(_) => None,
            Consumer::Gateway { probe, .. } => Some(cpu_secs(probe.pid)),
        }
    }
}

// ---------------------------------------------------------------------------
// Sustained rate: fixed-rate steps.
// ---------------------------------------------------------------------------

/// Each step writes readings stamped in an hour of its own, three days back, so steps never
/// overwrite each other's points and can be counted separately.
#[derive(Clone, Copy)]
struct Mark {
    delivered: u64,
    received: u64,
}

struct Windows {
    base_ms: i64,
    next: i64,
}

impl Windows {
    fn take(&mut self) -> i64 {
        self.next += 1;
        self.base_ms + self.next * HOUR_MS
    }
}

#[derive(Clone, Debug)]
struct Step {
    rate: u64,
    total: u64,
    /// Seconds from the first publish until the consumer had every reading (None: never).
    done_s: Option<f64>,
    pass: bool,
    cpu_per_1000_ms: Option<f64>,
    /// Readings not in InfluxDB when the step ended (caught up, or gave up waiting).
    missing: Option<u64>,
    /// Messages the gateway received beyond those published (broker redeliveries).
    extra: Option<u64>,
    /// Cores used during the step by each process, and the machine busy.
    cores: CpuSplit,
    /// Cores the gateway used during the step.
    gateway_cores: Option<f64>,
}

async fn step(o: &Opts, port: u16, rate: u64, windows: &mut Windows, consumer: &Consumer<'_>) -> Step {
    let total = (rate as f64 * o.step_secs).round() as u64;
    let t0_ms = windows.take();
    let before = consumer.mark().await;
    let cpu0 = consumer.cpu();
    let split0 = CpuSplit::now();
    let start = Instant::now();
    // Per device, at most 2 s of readings unacknowledged: a broker that falls further behind
    // stalls the publisher, and the step fails on time.
    let window = (2 * rate / o.devices as u64).clamp(100, 30_000);
    let load =
        Load { port, devices: o.devices, total, rate: Some(rate as f64), stamp: Stamp::Synthetic { t0_ms }, window };
    let publisher = tokio::spawn(publish(load));
    let pass_by = Duration::from_secs_f64(o.step_secs * 1.05) + consumer.inherent_delay();
    // A consumer that fell behind gets this long to catch up before the next step starts.
    let give_up = Duration::from_secs_f64(o.step_secs * 4.0 + 30.0);
    let mut done = None;
    while start.elapsed() < give_up {
        tokio::time::sleep(consumer.poll()).await;
        if consumer.has_all(before, total, t0_ms).await {
            done = Some(start.elapsed());
            break;
        }
    }
    let published = publisher.await.expect("publisher task").expect("publisher");
    let secs = start.elapsed().as_secs_f64();
    let cores = CpuSplit::now().cores_since(&split0, secs);
    let gateway_cores = match (cpu0, consumer.cpu()) {
        (Some(a), Some(b)) => Some((b - a) / secs),
        _ => None,
    };
    let cpu_per_1000_ms = match (cpu0, consumer.cpu(), done) {
        (Some(a), Some(b), Some(_)) => Some((b - a) * 1000.0 / total as f64 * 1000.0),
        _ => None,
    };
    let missing = match consumer {
        Consumer::Gateway { influx, .. } => {
            Some(total.saturating_sub(count_between(influx, t0_ms, t0_ms + HOUR_MS).await))
        }
        _ => None,
    };
    let pass = published.acked == total && done.is_some_and(|d| d <= pass_by);
    let extra = match consumer {
        Consumer::Gateway { .. } => Some((consumer.mark().await.received - before.received).saturating_sub(total)),
        Consumer::Counter(_) => None,
    };
    let s = Step {
        rate,
        total,
        done_s: done.map(|d| d.as_secs_f64()),
        pass,
        cpu_per_1000_ms,
        missing,
        extra,
        cores,
        gateway_cores,
    };
    say(format!(
        "  {rate:>7} readings/s x {:.0} s: {} (all in after {}{}{})",
        o.step_secs,
        if pass { "sustained" } else { "NOT sustained" },
        s.done_s.map_or("never".into(), |d| format!("{d:.2} s")),
        s.cpu_per_1000_ms.map_or(String::new(), |c| format!(", {c:.2} ms CPU/1000")),
        s.missing.map_or(String::new(), |l| format!(", {l} missing")),
    ));
    if let Some(x) = s.extra.filter(|x| *x > 0) {
        say(format!("    ({x} messages received twice: broker redeliveries)"));
    }
    s
}

/// Points of the benchmark measurement stamped in [from_ms, to_ms).
async fn count_between(influx: &Influx1, from_ms: i64, to_ms: i64) -> u64 {
    let q = format!("SELECT count(heart_rate) FROM {MEASUREMENT} WHERE time >= {from_ms}ms AND time < {to_ms}ms");
    influx.query(DB, &q).await["results"][0]["series"][0]["values"][0][1].as_u64().unwrap_or(0)
}

struct Ladder {
    steps: Vec<Step>,
    best: Option<Step>,
}

/// Rates rise by half until a step fails, then three bisections between the last rate that
/// held and the first that did not (about 5% resolution).
async fn ladder(o: &Opts, port: u16, windows: &mut Windows, consumer: &Consumer<'_>) -> Ladder {
    let mut steps = Vec::new();
    let mut best: Option<Step> = None;
    let mut rate = o.start_rate;
    let mut failed = None;
    while rate <= 400_000 {
        let s = step(o, port, rate, windows, consumer).await;
        steps.push(s.clone());
        if s.done_s.is_none() {
            return Ladder { steps, best };
        }
        if !s.pass {
            failed = Some(rate);
            break;
        }
        best = Some(s);
        rate = rate * 3 / 2;
    }
    if let (Some(mut hi), Some(b)) = (failed, best.clone()) {
        let mut lo = b.rate;
        for _ in 0..3 {
            let mid = (((lo as f64) * (hi as f64)).sqrt() / 100.0).round() as u64 * 100;
            if mid <= lo || mid >= hi {
                break;
            }
            let s = step(o, port, mid, windows, consumer).await;
            steps.push(s.clone());
            if s.done_s.is_none() {
                break;
            }
            if s.pass {
                lo = mid;
                best = Some(s);
            } else {
                hi = mid;
            }
        }
    }
    Ladder { steps, best }
}

/// Waits until the broker answers a QoS 1 publish within 100 ms three times in a row. After
/// the ceiling's overloaded steps Mosquitto goes on working off the counting subscriber's
/// backlog for seconds (the gateway's counters showed it: nothing delivered for 2 s), and
/// that stall must not be measured as the gateway's latency.
async fn settle(port: u16, windows: &mut Windows) {
    let start = Instant::now();
    let mut fast = 0;
    while fast < 3 && start.elapsed() < Duration::from_secs(60) {
        let t = Instant::now();
        let load = Load {
            port,
            devices: 1,
            total: 1,
            rate: None,
            stamp: Stamp::Synthetic { t0_ms: windows.take() },
            window: 1,
        };
        let answered = publish(load).await.is_ok_and(|p| p.acked == 1);
        fast = if answered && t.elapsed() < Duration::from_millis(100) { fast + 1 } else { 0 };
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    say(format!("broker settled {:.1} s after the ceiling's last step", start.elapsed().as_secs_f64()));
}

// ---------------------------------------------------------------------------
// Latency at a fixed rate.
// ---------------------------------------------------------------------------

struct Latency {
    readings: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    cpu_per_1000_ms: f64,
    polls: usize,
    /// Readings later than the target (flush interval + 100 ms), and the span of their
    /// publish times in seconds after the first publish: where to look for a tail.
    late: (usize, f64, f64),
}

async fn latency(o: &Opts, port: u16, influx: &Influx1, probe: &Probe) -> Latency {
    let total = (o.latency_rate as f64 * o.latency_secs).round() as u64;
    let from_ms = wall_ms() - 1000;
    let cpu0 = cpu_secs(probe.pid);
    let load =
        Load { port, devices: o.devices, total, rate: Some(o.latency_rate as f64), stamp: Stamp::Wall, window: 30_000 };
    let publisher = tokio::spawn(publish(load));
    // (wall ms when the answer came, points visible): the count can only understate what was
    // visible when the answer was sent, so latencies err on the long side.
    let mut polls: Vec<(i64, u64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(o.latency_secs + 60.0);
    let q = format!("SELECT count(heart_rate) FROM {MEASUREMENT} WHERE time >= {from_ms}ms");
    loop {
        let json = influx.query(DB, &q).await;
        let n = json["results"][0]["series"][0]["values"][0][1].as_u64().unwrap_or(0);
        polls.push((wall_ms(), n));

        if n >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = cpu_secs(probe.pid) - cpu0;
    let published = publisher.await.expect("publisher task").expect("publisher");
    assert_eq!(published.stamps.len() as u64, total, "every reading was stamped");
    // Readings become visible roughly in publish order (one subscription, one FIFO queue):
    // the k-th reading by stamp is taken to be visible at the first poll counting more than
    // k points.
    let mut lat: Vec<i64> = Vec::with_capacity(total as usize);
    let mut p = 0;
    for (k, ts) in published.stamps.iter().enumerate() {
        while p < polls.len() && polls[p].1 <= k as u64 {
            p += 1;
        }
        let Some(&(seen, _)) = polls.get(p) else { break };
        lat.push(seen - ts);
    }
    let t0 = published.stamps.iter().copied().min().unwrap_or(0);
    let late_at: Vec<f64> = published
        .stamps
        .iter()
        .zip(&lat)
        .filter(|(_, l)| **l > FLUSH_MS as i64 + 100)
        .map(|(ts, _)| (ts - t0) as f64 / 1000.0)
        .collect();
    let late = (
        late_at.len(),
        late_at.iter().copied().fold(f64::INFINITY, f64::min),
        late_at.iter().copied().fold(0.0, f64::max),
    );
    if late.0 > 0 {
        say(format!(
            "  {} readings later than {} ms, published {:.1}-{:.1} s after the start",
            late.0,
            FLUSH_MS + 100,
            late.1,
            late.2
        ));
    }
    assert_eq!(lat.len() as u64, total, "every latency reading reached InfluxDB in time");
    lat.sort_unstable();
    let pct = |q: f64| lat[((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1] as f64;
    Latency {
        readings: total,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: *lat.last().expect("readings") as f64,
        cpu_per_1000_ms: cpu * 1000.0 / total as f64 * 1000.0,
        polls: polls.len(),
        late,
    }
}

// ---------------------------------------------------------------------------
// Backlog: fill while InfluxDB is down, InfluxDB's own ceiling, drain.
// ---------------------------------------------------------------------------

struct Backlog {
    points: u64,
    fill_s: f64,
    fill_cpu_per_1000_ms: f64,
    rss_waiting_mib: f64,
    queue_file_mib: f64,
    ceiling_s: f64,
    drain_s: f64,
    /// InfluxDB's own start-up, from its process start until it answered queries.
    influx_start_s: f64,
    drain_cpu_per_1000_ms: f64,
    hwm_mib: f64,
}

fn queued_lines(data_dir: &Path) -> Vec<String> {
    let conn = heartguard_gateway::queue::schema::open_read_only(data_dir).expect("open the queue read-only");
    heartguard_gateway::queue::points::waiting_lines(&conn).expect("read the queue")
}

async fn backlog(o: &Opts, broker: &Mosquitto, work: &Path, bindings: &Path, windows: &mut Windows) -> Backlog {
    let mut target = Influx1::start();
    target.create_db(DB).await;
    target.stop();
    let dir = work.join("gateway-backlog");
    let gw =
        start_gateway(&dir, &gateway_toml(o, &dir, "bench-gw-backlog", broker, &target.url(), bindings, "100", "250"))
            .await;
    let probe = Probe::new(&gw).await;

    say(format!("backlog: InfluxDB down, publishing {} readings as fast as the broker takes them", o.backlog));
    let cpu0 = cpu_secs(probe.pid);
    let start = Instant::now();
    let m0 = probe.metrics().await;
    let t0_ms = windows.take();
    let load = Load {
        port: broker.port,
        devices: o.devices,
        total: o.backlog,
        rate: None,
        stamp: Stamp::Synthetic { t0_ms },
        window: 100,
    };
    let published = publish(load).await.expect("publisher");
    assert_eq!(published.acked, o.backlog);
    loop {
        let m = probe.metrics().await;
        if m.appended - m0.appended >= o.backlog {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(1800), "the backlog was not queued in 30 minutes");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let fill_s = start.elapsed().as_secs_f64();
    let fill_cpu = cpu_secs(probe.pid) - cpu0;
    say(format!("backlog: {} readings queued in {fill_s:.1} s; waiting 10 s", o.backlog));
    let mut rss_waiting_mib: f64 = 0.0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_waiting_mib = rss_waiting_mib.max(mem_mib(probe.pid, "VmRSS"));
    }
    let m = probe.metrics().await;
    assert_eq!(m.waiting, o.backlog, "the whole backlog waits in the queue");
    let db = dir.join("data").join(heartguard_gateway::queue::schema::DB_FILE);
    let file = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) as f64;
    let queue_file_mib = (file(db.clone()) + file(PathBuf::from(format!("{}-wal", db.display())))) / 1048576.0;

    // InfluxDB's ceiling: the very lines the gateway queued, gzipped beforehand (so only
    // InfluxDB's side is timed), posted one batch at a time as the gateway does.
    let lines = queued_lines(&dir.join("data"));
    assert_eq!(lines.len() as u64, o.backlog);
    let bodies: Vec<Vec<u8>> = lines
        .chunks(BATCH_LINES)
        .map(|c| heartguard_gateway::sink::influx::gzip(c.join("\n").as_bytes()).expect("gzip"))
        .collect();
    drop(lines);
    let ceiling_s = {
        let ceiling = Influx1::start();
        ceiling.create_db(DB).await;
        let http = heartguard_testkit::http_client();
        let url = format!("{}/write?db={DB}&precision=ns", ceiling.url());
        say(format!("backlog: minimal writer posts {} batches to a fresh InfluxDB", bodies.len()));
        let start = Instant::now();
        for body in bodies {
            let resp = http
                .post(&url)
                .header("Content-Encoding", "gzip")
                .header("Content-Type", "text/plain; charset=utf-8")
                .body(body)
                .send()
                .await
                .expect("POST /write");
            let status = resp.status().as_u16();
            assert_eq!(status, 204, "minimal writer: {}", resp.text().await.unwrap_or_default());
        }
        let s = start.elapsed().as_secs_f64();
        assert_eq!(ceiling.count(DB, MEASUREMENT).await, o.backlog, "minimal writer: every point stored");
        s
    };

    say("backlog: InfluxDB is back; the gateway drains");
    let cpu1 = cpu_secs(probe.pid);
    let up_wall_s = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
    let restart_began = Instant::now();
    target.restart();
    let restarted = Instant::now();
    let m = loop {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let m = probe.metrics().await;
        if m.waiting == 0 && m.delivered >= m0.delivered + o.backlog {
            break m;
        }
        assert!(restarted.elapsed() < Duration::from_secs(1800), "the backlog did not drain in 30 minutes: {m:?}");
    };
    // `restart` returns once InfluxDB answers queries. The minimal writer is timed from a
    // ready InfluxDB, and so is the drain: from then to the gateway's last successful write.
    // InfluxDB's own start-up is reported beside it; the gateway's retry delay (at most
    // 250 ms here) stays in the drain.
    let influx_start_s = restarted.duration_since(restart_began).as_secs_f64();
    let drain_s = m.last_success_s - up_wall_s - influx_start_s;
    let drain_cpu = cpu_secs(probe.pid) - cpu1;
    let hwm_mib = mem_mib(probe.pid, "VmHWM");
    assert_eq!(count_between(&target, t0_ms, t0_ms + HOUR_MS).await, o.backlog, "every backlog point in InfluxDB");
    let n = o.backlog as f64;
    Backlog {
        points: o.backlog,
        fill_s,
        fill_cpu_per_1000_ms: fill_cpu * 1000.0 / n * 1000.0,
        rss_waiting_mib,
        queue_file_mib,
        ceiling_s,
        drain_s,
        influx_start_s,
        drain_cpu_per_1000_ms: drain_cpu * 1000.0 / n * 1000.0,
        hwm_mib,
    }
}

// ---------------------------------------------------------------------------
// Setup and report.
// ---------------------------------------------------------------------------

fn write_bindings(dir: &Path, devices: usize) -> PathBuf {
    let mut text = String::from("# Written by benches/e2e: one active stream per simulated device.\n");
    for i in 0..devices {
        write!(
            text,
            r#"
[[binding]]
serial = "BENCH-{i:03}"
device_id = "00000000-0000-4000-8000-{dev:012}"
stream_id = "00000000-0000-4000-8000-{stream:012}"
patient_id = "00000000-0000-4000-8000-{patient:012}"
org_id = "00000000-0000-4000-8000-000000000999"
signal_type = "vital_signs"
influx_org = "heartguard"
influx_bucket = "{DB}"
measurement = "{MEASUREMENT}"
started_at = "2020-01-01 00:00:00"

[binding.tags]
location = "ICU-{ward}"
"#,
            dev = 100_000 + i,
            stream = 200_000 + i,
            patient = 300_000 + i,
            ward = i % 8,
        )
        .expect("write to a String");
    }
    let path = dir.join("bindings.toml");
    std::fs::write(&path, text).expect("write bindings");
    path
}

/// The shipped configuration (config/heartguard-gateway.toml) except for addresses, the data
/// directory, and — for the backlog — retries every 100..250 ms instead of up to 60 s, so
/// the drain starts when InfluxDB is back rather than when a long back-off ends.
fn gateway_toml(
    o: &Opts,
    dir: &Path,
    id: &str,
    broker: &Mosquitto,
    influx_url: &str,
    bindings: &Path,
    retry_ms: &str,
    retry_max_ms: &str,
) -> String {
    format!(
        r#"
[gateway]
id = "{id}"
data_dir = "{data}"

[mqtt]
url = "{mqtt}"
keep_alive_secs = {keep_alive}

[influx]
url = "{influx_url}"
api = "v1"
flush_interval_ms = {FLUSH_MS}
batch_max_lines = {BATCH_LINES}
retry_initial_ms = {retry_ms}
retry_max_ms = {retry_max_ms}

[bindings]
file = "{bindings}"

[http]
listen = "127.0.0.1:0"
"#,
        data = dir.join("data").display(),
        mqtt = broker.url(),
        keep_alive = o.keep_alive_secs,
        bindings = bindings.display(),
    )
}

/// Starts the gateway built for this benchmark, or the one `HEARTGUARD_BENCH_GATEWAY` names
/// (a profiling build, an older release to compare with), and waits for its subscription.
async fn start_gateway(dir: &Path, toml: &str) -> Gateway {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_heartguard-gateway"));
    let bin = std::env::var_os("HEARTGUARD_BENCH_GATEWAY").map_or(built, PathBuf::from);
    let env = unit_environment();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let gw = Gateway::start_with_env(&bin, dir, toml, &env);
    heartguard_testkit::wait_for_log(&gw, "Subscribed.").await;
    say(format!("gateway {} runs as pid {}", dir.display(), gw.pid().expect("running")));
    gw
}

/// The `Environment=` settings of the shipped systemd unit, so the gateway runs as it does
/// there; a variable set for the benchmark itself wins (it is inherited).
fn unit_environment() -> Vec<(String, String)> {
    include_str!("../../systemd/heartguard-gateway.service")
        .lines()
        .filter_map(|l| l.strip_prefix("Environment=")?.split_once('='))
        .filter(|(k, _)| std::env::var_os(k).is_none())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next()?.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1048576.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version = |cmd: &str, arg: &str| {
        std::process::Command::new(cmd)
            .arg(arg)
            .output()
            .map(|o| {
                let s = String::from_utf8_lossy(if o.stdout.is_empty() { &o.stderr } else { &o.stdout }).into_owned();
                s.lines().next().unwrap_or("").trim().to_owned()
            })
            .unwrap_or_else(|_| "not found".into())
    };
    format!(
        "{cores} cores ({model}), {mem_gib:.0} GiB, Linux {}; {}; {}",
        kernel.trim(),
        version("mosquitto", "-h"),
        version("influxd", "version"),
    )
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 { format!("{:.2}", a / b) } else { "n/a".into() }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    started();
    let o = opts();
    let has = |p: &str| o.phases.iter().any(|x| x == p);
    let work = tempfile::TempDir::new().expect("temp dir");
    let bindings = write_bindings(work.path(), o.devices);
    let broker = Mosquitto::start_with_config(&format!("max_inflight_messages {}\n", o.broker_inflight));
    let mut windows = Windows { base_ms: wall_ms() - 72 * HOUR_MS, next: 0 };
    let machine = machine();
    say(format!("machine: {machine}"));

    let broker_ladder = if has("broker") {
        say("broker ceiling: a QoS 1 subscriber that only counts");
        let counter = Counter::start(broker.port).await;
        let l = ladder(&o, broker.port, &mut windows, &Consumer::Counter(&counter)).await;
        counter.task.abort();
        settle(broker.port, &mut windows).await;
        Some(l)
    } else {
        None
    };

    let (mut gw_ladder, mut lat, mut hwm_latency, mut hwm_live) = (None, None, None, None);
    if has("gateway") || has("latency") {
        let influx = Influx1::start();
        influx.create_db(DB).await;
        let dir = work.path().join("gateway");
        let toml = gateway_toml(&o, &dir, "bench-gw", &broker, &influx.url(), &bindings, "500", "60000");
        let mut gw = start_gateway(&dir, &toml).await;
        let probe = Probe::new(&gw).await;
        // Latency first: the ladder ends by overloading the gateway on purpose, and what an
        // overload leaves behind (broker redeliveries, see BENCHMARKS.md) must not be measured
        // as latency.
        if has("latency") {
            say(format!("latency at {} readings/s for {:.0} s", o.latency_rate, o.latency_secs));
            lat = Some(latency(&o, broker.port, &influx, &probe).await);
            hwm_latency = Some(mem_mib(probe.pid, "VmHWM"));
        }
        if has("gateway") {
            say("gateway: the same load as the broker ceiling, every reading into InfluxDB");
            let consumer = Consumer::Gateway { probe: &probe, influx: &influx };
            gw_ladder = Some(ladder(&o, broker.port, &mut windows, &consumer).await);
        }
        hwm_live = Some(mem_mib(probe.pid, "VmHWM"));
        let reconnects = gw.log().matches("MQTT connection lost").count();
        if reconnects > 0 {
            say(format!("NOTE: the gateway lost its MQTT connection {reconnects} time(s); see its log"));
        }
        gw.terminate();
    }

    let b = if has("backlog") {
        say("backlog");
        Some(backlog(&o, &broker, work.path(), &bindings, &mut windows).await)
    } else {
        None
    };

    let r = report(
        &o,
        &machine,
        broker_ladder.as_ref(),
        gw_ladder.as_ref(),
        lat.as_ref(),
        [hwm_latency, hwm_live],
        b.as_ref(),
    );
    println!("{r}");
    if let Some(out) = &o.out {
        std::fs::write(out, &r).unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
        say(format!("report written to {}", out.display()));
    }
}

fn report(
    o: &Opts,
    machine: &str,
    broker: Option<&Ladder>,
    gateway: Option<&Ladder>,
    lat: Option<&Latency>,
    [hwm_latency, hwm_live]: [Option<f64>; 2],
    b: Option<&Backlog>,
) -> String {
    let mut r = String::new();
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    let _ = writeln!(r, "## End-to-end run, {date}\n");
    let _ = writeln!(r, "Machine: {machine}.\n");
    let _ = writeln!(
        r,
        "Command: `scripts/bench-e2e.sh --phases {} --devices {} --step-secs {} --backlog {} --latency-rate {} --latency-secs {} --broker-inflight {}`.\n",
        o.phases.join(","),
        o.devices,
        o.step_secs,
        o.backlog,
        o.latency_rate,
        o.latency_secs,
        o.broker_inflight
    );
    let _ = writeln!(r, "| figure | gateway | ceiling | ratio | target |");
    let _ = writeln!(r, "|---|---|---|---|---|");
    let best = |l: Option<&Ladder>| l.and_then(|l| l.best.clone());
    let (broker_best, gw_best) = (best(broker), best(gateway));
    if gateway.is_some() || broker.is_some() {
        let rate = |s: &Option<Step>| s.as_ref().map_or(0, |s| s.rate);
        let _ = writeln!(
            r,
            "| sustained rate, {} devices, QoS 1, zero loss | {} | {} | {} | ≥ 0.90 |",
            o.devices,
            gateway.map_or("not run".into(), |_| format!("{} readings/s", rate(&gw_best))),
            broker.map_or("not run".into(), |_| format!("{} msg/s (broker + counting subscriber)", rate(&broker_best))),
            ratio(rate(&gw_best) as f64, rate(&broker_best) as f64)
        );
    }
    if let Some(b) = b {
        let (ceiling, drain) = (b.points as f64 / b.ceiling_s, b.points as f64 / b.drain_s);
        let _ = writeln!(
            r,
            "| backlog drain, {} points, from InfluxDB ready (its start-up took {:.2} s more) | {drain:.0} points/s ({:.2} s) | {ceiling:.0} points/s ({:.2} s, minimal writer) | {} | ≥ 0.90 |",
            b.points,
            b.influx_start_s,
            b.drain_s,
            b.ceiling_s,
            ratio(drain, ceiling)
        );
    }
    if let Some(c) = gw_best.as_ref().and_then(|s| s.cpu_per_1000_ms) {
        let rate = gw_best.as_ref().map_or(0, |s| s.rate);
        let _ = writeln!(r, "| gateway CPU per 1,000 readings at {rate} readings/s | {c:.2} ms | | | ≤ 5 ms |");
    }
    if let Some(l) = lat {
        let _ = writeln!(
            r,
            "| gateway CPU per 1,000 readings at {} readings/s | {:.2} ms | | | ≤ 5 ms |",
            o.latency_rate, l.cpu_per_1000_ms
        );
    }
    if let Some(b) = b {
        let _ = writeln!(
            r,
            "| gateway CPU per 1,000 readings, backlog: queueing + draining | {:.2} + {:.2} = {:.2} ms | | | ≤ 5 ms |",
            b.fill_cpu_per_1000_ms,
            b.drain_cpu_per_1000_ms,
            b.fill_cpu_per_1000_ms + b.drain_cpu_per_1000_ms
        );
    }
    if let Some(l) = lat {
        let _ = writeln!(
            r,
            "| publish-to-visible latency at {} readings/s ({} readings) | p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms | | | p99 ≤ {} ms |",
            o.latency_rate,
            l.readings,
            l.p50_ms,
            l.p99_ms,
            l.max_ms,
            FLUSH_MS + 100
        );
        if l.late.0 > 0 {
            let _ = writeln!(
                r,
                "| readings later than {} ms in that run | {} (published {:.1}-{:.1} s after the first) | | | |",
                FLUSH_MS + 100,
                l.late.0,
                l.late.1,
                l.late.2
            );
        }
    }
    if let Some(h) = hwm_latency {
        let _ = writeln!(r, "| peak RSS (VmHWM) after the latency run | {h:.1} MiB | | | ≤ 32 MiB |");
    }
    if let Some(h) = hwm_live.filter(|_| gateway.is_some()) {
        let _ = writeln!(r, "| peak RSS (VmHWM) after the rate steps, overload included | {h:.1} MiB | | | ≤ 32 MiB |");
    }
    if let Some(b) = b {
        let _ = writeln!(r, "| peak RSS (VmHWM), backlog phase | {:.1} MiB | | | ≤ 32 MiB |", b.hwm_mib);
        let _ = writeln!(
            r,
            "| RSS while {} points wait on disk ({:.0} MiB queue file) | {:.1} MiB | | | ≤ 32 MiB |",
            b.points, b.queue_file_mib, b.rss_waiting_mib
        );
        let _ = writeln!(
            r,
            "| backlog queued while InfluxDB is down (publish to committed) | {:.0} readings/s | | | |",
            b.points as f64 / b.fill_s
        );
    }
    if broker.is_some() || gateway.is_some() {
        let _ = writeln!(
            r,
            "\nSteps ({:.0} s each; \"all in\": seconds from the first publish until the consumer had every reading; \
             \"missing\": readings not in InfluxDB when the step ended, after catching up or after giving up; \
             \"extra\": messages the gateway received beyond those published, i.e. broker redeliveries; \
             \"cores\": CPU used from the first publish until all were in, per second, by the gateway, Mosquitto, \
             InfluxDB and the benchmark's load generator, and by the whole machine ({} cores)):\n",
            o.step_secs,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let _ = writeln!(
            r,
            "| consumer | readings/s | readings | all in | sustained | gateway CPU/1000 | missing | extra | cores: gateway / broker / InfluxDB / load / machine |"
        );
        let _ = writeln!(r, "|---|---|---|---|---|---|---|---|---|");
        for (name, l) in [("counting subscriber", broker), ("gateway", gateway)] {
            for s in l.map(|l| l.steps.as_slice()).unwrap_or_default() {
                let opt = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
                let _ = writeln!(
                    r,
                    "| {name} | {} | {} | {} | {} | {} | {} | {} | {} / {:.2} / {:.2} / {:.2} / {:.2} |",
                    s.rate,
                    s.total,
                    s.done_s.map_or("never".into(), |d| format!("{d:.2} s")),
                    if s.pass { "yes" } else { "no" },
                    s.cpu_per_1000_ms.map_or(String::new(), |c| format!("{c:.2} ms")),
                    opt(s.missing),
                    opt(s.extra),
                    s.gateway_cores.map_or("-".into(), |c| format!("{c:.2}")),
                    s.cores.broker,
                    s.cores.influx,
                    s.cores.bench,
                    s.cores.busy,
                );
            }
        }
    }
    if let Some(l) = lat {
        let _ = writeln!(r, "\nLatency: {} polls of InfluxDB, one every 20 ms.", l.polls);
    }
    r
}
