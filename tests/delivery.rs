//! Delivery hardening against real servers: partial writes and type conflicts, unknown
//! databases, wrong credentials, the queue's size limit and both policies, the free-disk
//! floor, a damaged database, and torture runs of outages and SIGKILLs, once straight to
//! InfluxDB and once through a proxy that answers with HTML 400s and redirects now and then.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{
    DB, Fault, FaultProxy, Gateway, Influx1, Mosquitto, Victoria, WAIT, empty_400, eventually, gateway_bin,
    gateway_cli, gateway_toml, gateway_toml_with_queue, html_400, ms, msg, publish_qos1, redirect, start_gateway,
    wait_count, wait_for_log,
};
use serde_json::json;

/// A bindings file with one device per (serial, measurement, bucket).
fn bindings_file(dir: &Path, devices: &[(&str, &str, &str)]) -> std::path::PathBuf {
    let mut text = String::new();
    for (serial, measurement, bucket) in devices {
        text.push_str(&format!(
            "[[binding]]\nserial = \"{serial}\"\ndevice_id = \"dev-{serial}\"\nstream_id = \"stream-{serial}\"\npatient_id = \"patient-{serial}\"\norg_id = \"org\"\nsignal_type = \"vital_signs\"\ninflux_bucket = \"{bucket}\"\nmeasurement = \"{measurement}\"\n\n"
        ));
    }
    let path = dir.join("bindings.toml");
    std::fs::write(&path, text).expect("bindings file");
    path
}

fn config_arg(gw: &Gateway) -> String {
    gw.config_path().display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_conflict_dead_letters_exactly_the_refused_lines_and_replay_delivers_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mqtt = Mosquitto::start();
    let influx = Influx1::start();
    influx.create_db(DB).await;
    let t0 = ms("2026-11-10T00:00:00Z");
    // `heart_rate` already exists as a string in measurement "conflicted" (same shard).
    let (status, body) = influx.write(DB, &format!("conflicted heart_rate=\"seventy\" {}", t0 * 1_000_000)).await;
    assert_eq!(status, 204, "{body}");

    let bindings = bindings_file(dir.path(), &[("GOOD", "vital_signs", DB), ("BAD", "conflicted", DB)]);
    let gw = start_gateway(
        gateway_bin(),
        dir.path(),
        &gateway_toml(dir.path(), &mqtt.url(), &influx.url(), "v1", &bindings, ""),
    )
    .await;

    let mut msgs = Vec::new();
    for i in 0..100i64 {
        msgs.push(msg("GOOD", json!({"ts": t0 + i, "heart_rate": 60 + i % 30})));
        if i % 20 == 7 {
            msgs.push(msg("BAD", json!({"ts": t0 + i, "heart_rate": 70})));
        }
    }
    publish_qos1(mqtt.port, &msgs).await;
    wait_count(&influx, "vital_signs", 100).await;
    wait_for_log(&gw, "moved them to the dead letters").await;

    let cfg = config_arg(&gw);
    eventually(WAIT, "five dead letters", || {
        let (_, out, _) = gateway_cli(gateway_bin(), &["dead-letters", "list", "--config", &cfg]);
        async move { out.contains("# rejected: 5") }
    })
    .await;
    let (code, out, err) = gateway_cli(gateway_bin(), &["dead-letters", "export", "--config", &cfg]);
    assert_eq!(code, Some(0), "{err}");
    let dead: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(dead.len(), 5);
    for d in &dead {
        assert_eq!(d["reason"], json!("rejected"));
        assert_eq!(d["status"], json!(400));
        assert!(d["line"].as_str().is_some_and(|l| l.starts_with("conflicted,")), "{d}");
        assert!(d["detail"].as_str().is_some_and(|m| m.contains("conflict")), "the server's reason is kept: {d}");
    }
    assert_eq!(influx.count(DB, "vital_signs").await, 100, "every good point, none lost to its neighbours");

    // The cause is fixed (the conflicting measurement dropped); replay delivers them.
    influx.query(DB, "DROP MEASUREMENT conflicted").await;
    let (code, out, err) =
        gateway_cli(gateway_bin(), &["dead-letters", "replay", "--reason", "rejected", "--config", &cfg]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("5 dead letter(s) moved back"), "{out}");
    wait_count(&influx, "conflicted", 5).await;
    let (_, out, _) = gateway_cli(gateway_bin(), &["dead-letters", "list", "--config", &cfg]);
    assert!(!out.contains("# rejected"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_database_holds_only_its_own_points_until_it_exists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mqtt = Mosquitto::start();
    let influx = Influx1::start();
    influx.create_db(DB).await;
    let bindings = bindings_file(dir.path(), &[("A", "vital_signs", DB), ("B", "vital_signs", "later_db")]);
    let gw = start_gateway(
        gateway_bin(),
        dir.path(),
        &gateway_toml(dir.path(), &mqtt.url(), &influx.url(), "v1", &bindings, ""),
    )
    .await;

    let t0 = ms("2026-11-11T00:00:00Z");
    let msgs: Vec<_> = (0..50i64)
        .flat_map(|i| [msg("A", json!({"ts": t0 + i, "spo2": 97})), msg("B", json!({"ts": t0 + i, "spo2": 96}))])
        .collect();
    publish_qos1(mqtt.port, &msgs).await;
    wait_count(&influx, "vital_signs", 50).await;
    wait_for_log(&gw, "does the database or bucket exist?").await;
    let (_, out, _) = gateway_cli(gateway_bin(), &["queue", "stats", "--config", &config_arg(&gw)]);
    assert!(
        out.contains("later_db\" (org \"\"): 50 waiting") || out.contains("bucket \"later_db\": 50 waiting"),
        "{out}"
    );

    influx.create_db("later_db").await;
    eventually(WAIT, "later_db receives its 50 points", || async {
        influx.query("later_db", "SELECT count(spo2) FROM vital_signs").await["results"][0]["series"][0]["values"][0][1]
            == json!(50)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_keep_every_point_until_fixed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mqtt = Mosquitto::start();
    let vm = Victoria::start_with_basic_auth("gateway", "right-password");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "wrong-password\n").expect("pw");
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod 600");
    let extra = format!("username = \"gateway\"\npassword_file = \"{}\"", pw.display());
    let toml = gateway_toml(dir.path(), &mqtt.url(), &vm.url(), "v1", &common::example_bindings(), &extra);
    let mut gw = start_gateway(gateway_bin(), dir.path(), &toml).await;
    let t0 = ms("2026-11-12T00:00:00Z");
    publish_qos1(
        mqtt.port,
        &(0..30i64).map(|i| msg("ABC-001", json!({"ts": t0 + i * 1000, "spo2": 95}))).collect::<Vec<_>>(),
    )
    .await;
    wait_for_log(&gw, "InfluxDB refused the credentials").await;
    assert!(gw.log().contains("status=401"), "{}", gw.log());

    std::fs::write(&pw, "right-password\n").expect("pw");
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod 600");
    gw.terminate();
    gw.restart();
    eventually(WAIT, "30 samples after the password was fixed", || async {
        vm.export(r#"{__name__="vital_signs_spo2"}"#)
            .await
            .iter()
            .map(|s| s["values"].as_array().map_or(0, Vec::len))
            .sum::<usize>()
            == 30
    })
    .await;
}

/// Readings of ~330 bytes each for ABC-001, one millisecond apart.
fn readings(from: i64, n: i64) -> Vec<(String, Vec<u8>)> {
    let t0 = ms("2026-11-13T00:00:00Z");
    (from..from + n).map(|i| msg("ABC-001", json!({"ts": t0 + i, "heart_rate": 60 + i % 40, "spo2": 97}))).collect()
}

/// A gateway with a 64 KiB queue and `policy`, whose InfluxDB is down (not yet started again).
async fn small_queue(dir: &Path, policy: &str) -> (Mosquitto, Influx1, Gateway) {
    let mqtt = Mosquitto::start();
    let mut influx = Influx1::start();
    influx.create_db(DB).await;
    influx.stop();
    let queue = format!("max_bytes = 65536\nfull_policy = \"{policy}\"");
    let toml = gateway_toml_with_queue(dir, &mqtt.url(), &influx.url(), "v1", &common::example_bindings(), "", &queue);
    let gw = start_gateway(gateway_bin(), dir, &toml).await;
    (mqtt, influx, gw)
}

/// A figure from `queue stats` (`points waiting`, `bytes waiting`, …).
fn queue_stat(gw: &Gateway, what: &str) -> u64 {
    let (_, out, _) = gateway_cli(gateway_bin(), &["queue", "stats", "--config", &config_arg(gw)]);
    out.lines()
        .find_map(|l| l.strip_prefix(what)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{what} in {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_with_drop_oldest_keeps_the_newest_and_says_what_it_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mqtt, mut influx, gw) = small_queue(dir.path(), "drop_oldest").await;
    publish_qos1(mqtt.port, &readings(0, 1000)).await;
    wait_for_log(&gw, "dropped the oldest waiting points").await;
    // Everything the broker delivered was committed or dropped: nothing more is in flight.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = queue_stat(&gw, "bytes waiting");
    assert!(waiting <= 65536, "queue within its limit: {waiting}");
    let points = queue_stat(&gw, "points waiting");
    assert!(points > 50 && points < 1000, "{points}");

    influx.restart();
    wait_count(&influx, "vital_signs", points).await;
    let newest = influx.query(DB, "SELECT last(heart_rate) FROM vital_signs").await;
    assert_eq!(
        newest["results"][0]["series"][0]["values"][0][0],
        json!((ms("2026-11-13T00:00:00Z") + 999) * 1_000_000),
        "the newest reading survived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_with_backpressure_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mqtt, mut influx, gw) = small_queue(dir.path(), "backpressure").await;
    publish_qos1(mqtt.port, &readings(0, 1500)).await;
    wait_for_log(&gw, "Queue full: refusing new readings").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waiting = queue_stat(&gw, "bytes waiting");
    assert!(waiting <= 65536, "{waiting}");
    influx.restart();
    wait_count(&influx, "vital_signs", 1500).await;
}

/// While the queue refuses readings, intake stops taking envelopes and the MQTT reader stops
/// reading, with thousands of messages sent by the broker unread. The session must stay up:
/// a keep-alive that took this for a dead broker would reconnect, and the broker would send
/// everything in flight again (the redelivery storm of BENCHMARKS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_intake_keeps_the_mqtt_session_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No inflight limit: the broker sends everything at once, more than intake's channel holds.
    let mqtt = Mosquitto::start_with_config("max_inflight_messages 0\n");
    let mut influx = Influx1::start();
    influx.create_db(DB).await;
    influx.stop();
    let queue = "max_bytes = 65536\nfull_policy = \"backpressure\"";
    let toml =
        gateway_toml_with_queue(dir.path(), &mqtt.url(), &influx.url(), "v1", &common::example_bindings(), "", queue)
            .replace("[mqtt]\n", "[mqtt]\nkeep_alive_secs = 2\n");
    let gw = start_gateway(gateway_bin(), dir.path(), &toml).await;
    publish_qos1(mqtt.port, &readings(0, 8000)).await;
    wait_for_log(&gw, "Queue full: refusing new readings").await;
    // Four keep-alive periods with the reader held back.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let log = gw.log();
    assert!(!log.contains("MQTT connection lost"), "{log}");
    assert_eq!(log.matches("Connected to the MQTT broker.").count(), 1, "{log}");
    let broker = mqtt.log();
    assert!(!broker.contains("heartguard-gateway-test-gw has exceeded timeout"), "{broker}");
    influx.restart();
    wait_count(&influx, "vital_signs", 8000).await;
    assert_eq!(gw.log().matches("Connected to the MQTT broker.").count(), 1, "no reconnect while draining");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_disk_floor_stops_intake_before_the_disk_is_full_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A small filesystem of its own for the data directory (the tests run as root in CI).
    let small = dir.path().join("small");
    std::fs::create_dir(&small).expect("mkdir");
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&small)
        .status()
        .expect("run mount");
    assert!(mount.success(), "mounting a 4 MiB tmpfs needs root");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());

    let mqtt = Mosquitto::start();
    let mut influx = Influx1::start();
    influx.create_db(DB).await;
    influx.stop();
    let toml = gateway_toml_with_queue(
        &small,
        &mqtt.url(),
        &influx.url(),
        "v1",
        &common::example_bindings(),
        "",
        "min_free_bytes = 3000000",
    );
    let mut gw = start_gateway(gateway_bin(), dir.path(), &toml).await;
    publish_qos1(mqtt.port, &readings(0, 6000)).await;
    wait_for_log(&gw, "less than queue.min_free_bytes").await;
    assert!(gw.is_running(), "a full disk never stops the daemon");
    influx.restart();
    wait_count(&influx, "vital_signs", 6000).await;
    assert!(gw.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_database_is_moved_aside_and_the_gateway_runs() {
    for damage in ["garbage", "truncated"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mqtt = Mosquitto::start();
        let mut influx = Influx1::start();
        influx.create_db(DB).await;
        let toml = gateway_toml(dir.path(), &mqtt.url(), &influx.url(), "v1", &common::example_bindings(), "");
        let db = dir.path().join("data/gateway.db");
        match damage {
            "garbage" => {
                std::fs::create_dir_all(db.parent().expect("parent")).expect("mkdir");
                std::fs::write(&db, vec![0x5a; 64 * 1024]).expect("garbage");
            }
            _ => {
                // A real queue with points waiting, then cut in half.
                influx.stop();
                let mut gw = start_gateway(gateway_bin(), dir.path(), &toml).await;
                publish_qos1(mqtt.port, &readings(0, 3000)).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                gw.terminate();
                let len = std::fs::metadata(&db).expect("db").len();
                std::fs::OpenOptions::new().write(true).open(&db).expect("open").set_len(len / 2).expect("truncate");
                influx.restart();
            }
        }
        let mut gw = Gateway::start(gateway_bin(), dir.path(), &toml);
        wait_for_log(&gw, "Subscribed.").await;
        let log = gw.log();
        assert!(log.contains("The queue database is damaged"), "{damage}: {log}");
        let aside = std::fs::read_dir(dir.path().join("data"))
            .expect("dir")
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("gateway.db.damaged-"));
        assert!(aside, "{damage}: the damaged file is kept for recovery");
        let t0 = ms("2026-11-14T00:00:00Z");
        publish_qos1(
            mqtt.port,
            &(0..10i64).map(|i| msg("ABC-001", json!({"ts": t0 + i, "spo2": 99}))).collect::<Vec<_>>(),
        )
        .await;
        eventually(WAIT, "new readings arrive", || async { influx.query(DB, "SELECT count(spo2) FROM vital_signs WHERE spo2 = 99").await["results"][0]["series"][0]["values"][0][1] == json!(10) }).await;
        assert!(gw.is_running());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture_outages_and_sigkills_lose_nothing_and_add_nothing() {
    torture(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture_with_proxy_400s_and_redirects_loses_nothing_and_dead_letters_nothing() {
    torture(true).await;
}

/// A proxy in front of `influx` that answers about one request in three itself: an HTML 400
/// or an empty one (what a load balancer or a TLS port says), a 302 to InfluxDB's `/ping`
/// (which answers a GET with 204), a 307 to InfluxDB's own write URL.
async fn faulty_proxy(influx: &Influx1) -> FaultProxy {
    let ping = format!("http://127.0.0.1:{}/ping", influx.port);
    let write = format!("http://127.0.0.1:{}/write?db={DB}&precision=ns", influx.port);
    // Seeded like the schedule below: the same faults every run.
    let rng = std::sync::Mutex::new(fastrand::Rng::with_seed(0x5052_4f58_5934_3030));
    FaultProxy::start(influx.port, move |_, _| match rng.lock().expect("rng").u8(0..16) {
        0 | 1 => html_400(),
        2 => empty_400(),
        3 | 4 => redirect(302, &ping),
        5 => redirect(307, &write),
        _ => Fault::Forward,
    })
    .await
}

/// Readings flow while the gateway is SIGKILLed and InfluxDB stopped, on a fixed schedule;
/// `faults`: the gateway writes through [`faulty_proxy`]. Every reading arrives exactly, and
/// nothing is dead-lettered.
async fn torture(faults: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mqtt = Mosquitto::start();
    let mut influx = Influx1::start();
    influx.create_db(DB).await;
    let proxy = if faults { Some(faulty_proxy(&influx).await) } else { None };
    let url = proxy.as_ref().map_or_else(|| influx.url(), FaultProxy::url);
    let mut toml = gateway_toml(dir.path(), &mqtt.url(), &url, "v1", &common::example_bindings(), "");
    if faults {
        // Smaller batches, so more requests meet a fault; shorter waits after one, so the run
        // stays short.
        toml = toml
            .replace("retry_initial_ms = 100\nretry_max_ms = 1000", "retry_initial_ms = 10\nretry_max_ms = 100")
            .replace("[influx]\n", "[influx]\nbatch_max_lines = 50\n");
        assert!(toml.contains("retry_max_ms = 100\n") && toml.contains("batch_max_lines = 50"), "{toml}");
    }
    let mut gw = start_gateway(gateway_bin(), dir.path(), &toml).await;

    const CHUNKS: i64 = 8;
    const PER_CHUNK: i64 = 500;
    let port = mqtt.port;
    let publisher = tokio::spawn(async move {
        for c in 0..CHUNKS {
            publish_qos1(port, &readings(c * PER_CHUNK, PER_CHUNK)).await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    // A fixed seed: the same "random" schedule every run, so a failure can be replayed.
    let mut rng = fastrand::Rng::with_seed(0x4845_4152_5447_5244);
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(rng.u64(50..400))).await;
        match rng.u8(0..3) {
            0 => {
                gw.kill9();
                tokio::time::sleep(Duration::from_millis(rng.u64(0..200))).await;
                gw.restart();
            }
            1 => {
                influx.stop();
                tokio::time::sleep(Duration::from_millis(rng.u64(100..600))).await;
                influx.restart();
            }
            _ => {
                gw.kill9();
                influx.stop();
                gw.restart();
                tokio::time::sleep(Duration::from_millis(rng.u64(100..400))).await;
                influx.restart();
            }
        }
    }
    publisher.await.expect("publisher");
    let n = CHUNKS * PER_CHUNK;
    wait_count(&influx, "vital_signs", n as u64).await;
    // Exactly as sent: each reading's own timestamp and values, nothing extra.
    let r = influx.query(DB, "SELECT count(heart_rate), sum(heart_rate), count(spo2) FROM vital_signs").await;
    let row = &r["results"][0]["series"][0]["values"][0];
    let want_sum: i64 = (0..n).map(|i| 60 + i % 40).sum();
    assert_eq!((row[1].clone(), row[2].clone(), row[3].clone()), (json!(n), json!(want_sum), json!(n)), "{r}");
    let (code, out, err) = gateway_cli(gateway_bin(), &["dead-letters", "export", "--config", &config_arg(&gw)]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "", "nothing dead-lettered");
    if let Some(proxy) = proxy {
        let answered: Vec<String> = proxy.requests().into_iter().map(|r| r.answered).collect();
        let seen = |statuses: &[&str]| answered.iter().any(|a| statuses.iter().any(|s| a.contains(s)));
        assert!(seen(&[" 400 "]) && seen(&[" 302 ", " 307 "]), "faults were answered: {answered:?}");
    }
}
