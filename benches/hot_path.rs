//! Micro-benchmarks of the hot path, stage by stage, in the order data flows:
//! decode (MQTT JSON, serial frames) → resolve → encode → queue commit → batch body + gzip.
//!
//! Run with `cargo bench --bench hot_path`; pass a filter to run some (`cargo bench --bench
//! hot_path -- queue`). Inputs come from the device simulator (`simulate`), so they have the
//! shape real devices send; every benchmark reports throughput (items and/or bytes per
//! second) next to the time per iteration. Each benchmark samples for at least half a
//! second (`min_time`), so a whole run takes about ten seconds once built; building it takes
//! minutes, since benches use the release profile (fat LTO, one codegen unit, `opt-level =
//! "s"`), which is also what the shipped binary runs.
//!
//! The queue benchmark commits to a real SQLite database in a temporary directory with the
//! shipped `synchronous = "full"`: every commit waits for fsync, so its figures measure the
//! disk under the temporary directory as much as the code.

use divan::counter::{BytesCount, ItemsCount};
use divan::{Bencher, black_box};

use heartguard_gateway::bindings::source::BindingSource;
use heartguard_gateway::bindings::table::{BindingTable, Compiled};
use heartguard_gateway::model::Binding;
use heartguard_gateway::model::Reading;
use heartguard_gateway::protocols::Protocol;
use heartguard_gateway::protocols::decoded::PortIdentity;
use heartguard_gateway::queue::delivery::Leased;
use heartguard_gateway::queue::handle::QueueHandle;
use heartguard_gateway::queue::points::NewPoint;
use heartguard_gateway::simulate::{self, SimVitals};
use heartguard_gateway::{decode, ingest, resolve, sink};

fn main() {
    divan::main();
}

const NS_PER_S: i64 = 1_000_000_000;

/// The simulated wall clock at tick 0: 2026-11-03T10:00:00Z.
fn wall(tick: u64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_793_700_000 + tick as i64, 0).expect("valid time")
}

fn ns(tick: u64) -> i64 {
    wall(tick).timestamp_nanos_opt().expect("in range")
}

/// The gateway clock at `tick`, with the default tolerance for device clocks.
fn now(tick: u64) -> decode::Now {
    decode::Now {
        ns: ns(tick),
        future_tolerance_ns: heartguard_gateway::decode::config::Clock::default().future_tolerance_ns(),
    }
}

fn serial_of(device: usize) -> String {
    format!("SIM-{device:04}")
}

/// Readings as the MQTT intake sees them: the simulator's JSON, decoded by the real decoder
/// (heart rate, blood pressure, temperature and, unless the finger is out, SpO2).
fn readings(devices: usize, count: usize) -> Vec<Reading> {
    (0..count)
        .map(|i| {
            let tick = (i / devices) as u64;
            let serial = serial_of(i % devices);
            let payload = simulate::json_tick(&serial, &SimVitals::at(tick), wall(tick));
            let mut d = decode::json::decode(&payload, Some(&serial), now(tick), usize::MAX);
            assert!(d.rejected.is_empty(), "simulated payload rejected: {:?}", d.rejected);
            d.readings.pop().expect("one reading")
        })
        .collect()
}

/// Bindings shaped like `config/bindings.example.toml`, two per device: the stream of the
/// previous patient (ended two days ago) and the active one, with two custom tags. Compiled
/// as `bindings::compile` does, without registering ids in a queue.
fn table(devices: usize) -> BindingTable {
    let day = 24 * 3600 * NS_PER_S;
    let binding = |device: usize, nth: usize, started_at, ended_at| {
        let id = |kind: u32| format!("00000000-0000-4000-{kind:04}-{:012}", device * 2 + nth);
        let mut tags = std::collections::BTreeMap::new();
        tags.insert("location".to_owned(), format!("Ward {}, bed={}", device / 16 + 1, device % 16 + 1));
        tags.insert("priority".to_owned(), "high".to_owned());
        Binding {
            serial: serial_of(device),
            device_id: id(8000),
            stream_id: id(8001),
            patient_id: id(8002),
            org_id: "00000000-0000-4000-8000-000000000999".into(),
            signal_type: "vital_signs".into(),
            influx_org: "heartguard".into(),
            influx_bucket: "heartguard_vitals".into(),
            measurement: "vital_signs".into(),
            started_at,
            ended_at,
            sample_rate_hz: Some(1.0),
            tags,
        }
    };
    let compiled = (0..devices)
        .flat_map(|d| {
            [binding(d, 0, Some(ns(0) - 30 * day), Some(ns(0) - 2 * day)), binding(d, 1, Some(ns(0) - 2 * day), None)]
        })
        .enumerate()
        .map(|(i, b)| Compiled { prefix: b.series_prefix(), binding: b, dest_id: 1, stream_key: i as i64 + 1 })
        .collect();
    BindingTable::new(compiled, BindingSource::None, "1".into())
}

/// Resolved and encoded points, as intake hands them to the queue.
fn points(devices: usize, count: usize) -> Vec<NewPoint> {
    let table = table(devices);
    readings(devices, count)
        .iter()
        .map(|r| {
            let c = resolve::resolve_one(&table, r).expect("bound");
            ingest::intake::encode(c, r, r.ts_ns)
        })
        .collect()
}

/// 1. The MQTT JSON payload decoder: one reading per message (as the simulator publishes on
///    `devices/{serial}/vitals`), or an array of 25 readings (a device sending a backlog).
mod decode_json {
    use super::*;

    #[divan::bench(args = [1, 25], min_time = 0.5)]
    fn decode(bencher: Bencher<'_, '_>, readings: usize) {
        let serial = "ABC-001";
        let objects: Vec<String> = (0..readings as u64)
            .map(|t| String::from_utf8(simulate::json_tick(serial, &SimVitals::at(t), wall(t))).expect("utf-8"))
            .collect();
        let payload = if readings == 1 { objects[0].clone() } else { format!("[{}]", objects.join(",")) };
        let max_bytes = heartguard_gateway::ingest::mqtt::config::Mqtt::default().max_payload_bytes;
        let now = now(readings as u64);
        let check = decode::json::decode(payload.as_bytes(), Some(serial), now, max_bytes);
        assert_eq!(check.readings.len(), readings, "{:?}", check.rejected);
        bencher
            .counter(ItemsCount::new(readings))
            .counter(BytesCount::of_str(&payload))
            .bench(|| decode::json::decode(black_box(payload.as_bytes()), black_box(Some(serial)), now, max_bytes));
    }

    /// Baseline for `decode`: the same bytes parsed into a generic `serde_json::Value`, with no
    /// validation and no `Reading` built. `decode` / `baseline_value` is what the gateway's own
    /// checks and field table cost on top of parsing.
    #[divan::bench(args = [1, 25], min_time = 0.5)]
    fn baseline_value(bencher: Bencher<'_, '_>, readings: usize) {
        let objects: Vec<String> = (0..readings as u64)
            .map(|t| String::from_utf8(simulate::json_tick("ABC-001", &SimVitals::at(t), wall(t))).expect("utf-8"))
            .collect();
        let payload = if readings == 1 { objects[0].clone() } else { format!("[{}]", objects.join(",")) };
        bencher
            .counter(ItemsCount::new(readings))
            .counter(BytesCount::of_str(&payload))
            .bench(|| serde_json::from_slice::<serde_json::Value>(black_box(payload.as_bytes())).expect("JSON"));
    }
}

/// 2. Serial stream decoders: five minutes of one simulated device, fed one second (one
///    device burst, one read) at a time into a fresh decoder, as `ingest::serial` does.
///    Items are readings produced (Nonin #7/#2 send 75 frames a second for one reading).
mod decode_serial {
    use super::*;

    const TICKS: u64 = 300;

    #[divan::bench(args = Protocol::ALL, min_time = 0.5)]
    fn feed(bencher: Bencher<'_, '_>, protocol: Protocol) {
        let serial = "SIM-0001";
        let chunks: Vec<(Vec<u8>, i64)> = (0..TICKS)
            .map(|t| (simulate::serial_tick(protocol, serial, &SimVitals::at(t), wall(t)), ns(t) + NS_PER_S / 2))
            .collect();
        let identity =
            PortIdentity { serial: (!protocol.carries_serial()).then(|| serial.to_owned()), signal_type: None };
        let run = |chunks: &[(Vec<u8>, i64)]| {
            let mut decoder = protocol.decoder(identity.clone());
            let mut readings = 0;
            for (bytes, now) in chunks {
                readings += black_box(decoder.feed(black_box(bytes), *now)).readings.len();
            }
            readings
        };
        let readings = run(&chunks);
        assert!(readings > 0, "{protocol}: no readings");
        let bytes: usize = chunks.iter().map(|(b, _)| b.len()).sum();
        bencher.counter(ItemsCount::new(readings)).counter(BytesCount::new(bytes)).bench(|| run(&chunks));
    }
}

/// 3. Resolution against a binding table of a ward (32 devices) and of a large site (1000
///    devices), two bindings per device. Items are readings resolved, spread over every
///    device; `out` is reused as intake reuses it.
mod resolution {
    use super::*;

    const READINGS: usize = 1024;

    #[divan::bench(name = "resolve", args = [32, 1000], min_time = 0.5)]
    fn resolve_readings(bencher: Bencher<'_, '_>, devices: usize) {
        let table = table(devices);
        let readings = readings(devices, READINGS);
        let mut out = Vec::new();
        let mut run = || {
            let mut found = 0;
            for r in &readings {
                if resolve::resolve(black_box(&table), black_box(r), &mut out).is_ok() {
                    found += out.len();
                }
            }
            found
        };
        assert_eq!(run(), READINGS, "every reading resolves to one binding");
        bencher.counter(ItemsCount::new(readings.len())).bench_local(run);
    }
}

/// 4. Line-protocol encoding of a resolved reading (4–5 fields, 7 tags, about 360 bytes). `line` appends to one
///    reused buffer (`resolve::encode`, the encoder itself); `point` is what intake does per
///    reading (`ingest::intake::encode`: a new line string and the queue's `NewPoint`).
mod encode {
    use super::*;

    const READINGS: usize = 1024;

    fn inputs() -> (BindingTable, Vec<Reading>) {
        (table(32), readings(32, READINGS))
    }

    #[divan::bench(min_time = 0.5)]
    fn line(bencher: Bencher<'_, '_>) {
        let (table, readings) = inputs();
        let resolved: Vec<(&Compiled, &Reading)> =
            readings.iter().map(|r| (resolve::resolve_one(&table, r).expect("bound"), r)).collect();
        let mut buf = String::with_capacity(512);
        let bytes: usize = resolved
            .iter()
            .map(|(c, r)| {
                buf.clear();
                resolve::encode(c, r, &mut buf);
                buf.len() + 1
            })
            .sum();
        bencher.counter(ItemsCount::new(resolved.len())).counter(BytesCount::new(bytes)).bench_local(|| {
            for (c, r) in &resolved {
                buf.clear();
                resolve::encode(black_box(c), black_box(r), &mut buf);
                black_box(&buf);
            }
        });
    }

    #[divan::bench(min_time = 0.5)]
    fn point(bencher: Bencher<'_, '_>) {
        let (table, readings) = inputs();
        let resolved: Vec<(&Compiled, &Reading)> =
            readings.iter().map(|r| (resolve::resolve_one(&table, r).expect("bound"), r)).collect();
        bencher.counter(ItemsCount::new(resolved.len())).bench_local(|| {
            for (c, r) in &resolved {
                black_box(ingest::intake::encode(black_box(c), black_box(r), r.ts_ns));
            }
        });
    }
}

/// 5. Queue commit and drain: one `QueueHandle::append` of a batch of points (one intake
///    batch) into the real SQLite queue with the shipped defaults (`synchronous = "full"`,
///    size and free-disk limits), and the lease and delete of one delivered batch. Each append is one transaction and one fsync, so the time per
///    point falls with the batch size, and the figures depend on the disk under the
///    temporary directory (`TMPDIR`), not only on the code.
mod queue {
    use super::*;

    /// Gives `points` the destination and stream ids of a queue, as `bindings::compile` does.
    fn register(queue: &QueueHandle, rt: &tokio::runtime::Runtime, points: &mut [NewPoint]) {
        let table = table(32);
        rt.block_on(async {
            // As `bindings::compile` does: the destination and every stream get their ids.
            let dest_id = queue.destination_id(table.iter().next().expect("binding").binding.destination()).await?;
            let mut keys = std::collections::HashMap::new();
            for c in table.iter() {
                keys.insert(c.stream_key, queue.stream_key(c.binding.stream_id.clone()).await?);
            }
            for p in points.iter_mut() {
                p.dest_id = dest_id;
                p.stream_key = keys[&p.stream_key];
            }
            Ok::<_, heartguard_gateway::queue::QueueError>(())
        })
        .expect("register destination and streams");
    }

    #[divan::bench(args = [1, 64, 512], min_time = 0.5, max_time = 10)]
    fn append(bencher: Bencher<'_, '_>, batch: usize) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = heartguard_gateway::queue::config::Queue::default();
        let (queue, store) = QueueHandle::open(dir.path(), cfg.synchronous, cfg.limits()).expect("open queue");
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let mut points = points(32, batch);
        register(&queue, &rt, &mut points);
        let bytes: usize = points.iter().map(|p| p.line.len() + 1).sum();
        bencher
            .counter(ItemsCount::new(batch))
            .counter(BytesCount::new(bytes))
            .with_inputs(|| points.clone())
            .bench_local_values(|points| rt.block_on(queue.append(points)).expect("append"));
        rt.block_on(queue.close()).expect("close queue");
        store.join().expect("store thread");
    }

    /// The queue's side of delivering one full batch (`influx.batch_max_lines`): lease it and
    /// delete it as the sink does after a 2xx. The batch is committed before each iteration
    /// (as 64-point intake commits), untimed.
    #[divan::bench(min_time = 0.5, max_time = 10)]
    fn drain(bencher: Bencher<'_, '_>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = heartguard_gateway::queue::config::Queue::default();
        let (queue, store) = QueueHandle::open(dir.path(), cfg.synchronous, cfg.limits()).expect("open queue");
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let n = sink::config::Influx::default().batch_max_lines;
        let mut points = points(32, n);
        register(&queue, &rt, &mut points);
        let dest_id = points[0].dest_id;
        let bytes: usize = points.iter().map(|p| p.line.len() + 1).sum();
        bencher
            .counter(ItemsCount::new(n))
            .counter(BytesCount::new(bytes))
            .with_inputs(|| {
                for chunk in points.chunks(64) {
                    rt.block_on(queue.append(chunk.to_vec())).expect("append");
                }
            })
            .bench_local_values(|()| {
                rt.block_on(async {
                    let rows = queue.lease(dest_id, n, usize::MAX).await.expect("lease");
                    assert_eq!(rows.len(), n);
                    let seen = heartguard_gateway::queue::delivery::Delivered::of(&rows);
                    queue.delete_delivered(dest_id, rows[0].id, rows[n - 1].id, seen).await.expect("delete")
                })
            });
        rt.block_on(queue.close()).expect("close queue");
        store.join().expect("store thread");
    }

    /// Baseline for `drain`: the same lines, a row each in a bare one-table database (the
    /// queue's journal settings), read in id order, then deleted by id range (one commit).
    #[divan::bench(min_time = 0.5, max_time = 10)]
    fn baseline_sqlite_drain(bencher: Bencher<'_, '_>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = std::cell::RefCell::new(rusqlite::Connection::open(dir.path().join("baseline.db")).expect("open"));
        conn.borrow()
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
                 CREATE TABLE points (id INTEGER PRIMARY KEY, line TEXT NOT NULL);",
            )
            .expect("schema");
        let n = sink::config::Influx::default().batch_max_lines;
        let lines: Vec<String> = points(32, n).into_iter().map(|p| p.line).collect();
        let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
        bencher
            .counter(ItemsCount::new(n))
            .counter(BytesCount::new(bytes))
            .with_inputs(|| {
                let mut conn = conn.borrow_mut();
                let tx = conn.transaction().expect("begin");
                {
                    let mut insert = tx.prepare_cached("INSERT INTO points (line) VALUES (?1)").expect("prepare");
                    for l in &lines {
                        insert.execute([l]).expect("insert");
                    }
                }
                tx.commit().expect("commit");
            })
            .bench_local_values(|()| {
                let conn = conn.borrow();
                let rows: Vec<(i64, String)> = conn
                    .prepare_cached("SELECT id, line FROM points ORDER BY id LIMIT ?1")
                    .expect("prepare")
                    .query_map([n as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                    .expect("select")
                    .collect::<Result<_, _>>()
                    .expect("rows");
                conn.execute("DELETE FROM points WHERE id BETWEEN ?1 AND ?2", [rows[0].0, rows[n - 1].0])
                    .expect("delete")
            });
    }

    /// Baseline for `append`: the same lines inserted with bare rusqlite into a one-table
    /// database with the queue's journal settings (WAL, `synchronous = FULL`), one transaction
    /// per batch. `append` / `baseline_sqlite` is what the queue adds: its index, per-stream
    /// activity, limits and the hand-off to its writer thread.
    #[divan::bench(args = [1, 64, 512], min_time = 0.5, max_time = 10)]
    fn baseline_sqlite(bencher: Bencher<'_, '_>, batch: usize) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = rusqlite::Connection::open(dir.path().join("baseline.db")).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
             CREATE TABLE points (id INTEGER PRIMARY KEY, line TEXT NOT NULL);",
        )
        .expect("schema");
        let lines: Vec<String> = points(32, batch).into_iter().map(|p| p.line).collect();
        let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
        bencher.counter(ItemsCount::new(batch)).counter(BytesCount::new(bytes)).bench_local(|| {
            let tx = conn.transaction().expect("begin");
            {
                let mut insert = tx.prepare_cached("INSERT INTO points (line) VALUES (?1)").expect("prepare");
                for l in &lines {
                    insert.execute([l]).expect("insert");
                }
            }
            tx.commit().expect("commit");
        });
    }
}

/// 6. The request body of one full leased batch (`influx.batch_max_lines`, 5000 by default):
///    `sink::deliver::batch_body` joins the lines, `influx::gzip` compresses it as every write does
///    with the shipped `gzip = true`. Bytes are the uncompressed body.
mod batch {
    use super::*;

    fn leased() -> Vec<Leased> {
        let n = sink::config::Influx::default().batch_max_lines;
        points(32, n)
            .into_iter()
            .enumerate()
            .map(|(i, p)| Leased { id: i as i64 + 1, line: p.line, stream_key: p.stream_key, ts_ns: p.ts_ns })
            .collect()
    }

    #[divan::bench(min_time = 0.5)]
    fn body(bencher: Bencher<'_, '_>) {
        let rows = leased();
        let bytes = sink::deliver::batch_body(&rows).len();
        bencher
            .counter(ItemsCount::new(rows.len()))
            .counter(BytesCount::new(bytes))
            .bench(|| sink::deliver::batch_body(black_box(&rows)));
    }

    #[divan::bench(min_time = 0.5)]
    fn body_gzip(bencher: Bencher<'_, '_>) {
        let rows = leased();
        let bytes = sink::deliver::batch_body(&rows).len();
        bencher.counter(ItemsCount::new(rows.len())).counter(BytesCount::new(bytes)).bench(|| {
            let body = sink::deliver::batch_body(black_box(&rows));
            sink::influx::gzip(&body).expect("gzip")
        });
    }
}
