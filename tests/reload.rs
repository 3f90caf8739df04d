//! SIGHUP: the bindings file and the log level are applied, a changed setting that needs a
//! restart is named in the log, a bad file is refused without harm; JSON logs.

mod common;

use std::process::Command;

use common::{
    DB, Influx1, Mosquitto, eventually, example_bindings, gateway_bin, gateway_toml, gateway_toml_with_queue, msg,
    publish_qos1, start_gateway, wait_count, wait_for_log,
};
use serde_json::json;

fn hup(pid: u32) {
    let ok = Command::new("kill").arg("-HUP").arg(pid.to_string()).status().expect("kill -HUP").success();
    assert!(ok, "kill -HUP {pid}");
}

/// The example bindings without the ones of `serial`.
fn bindings_without(serial: &str) -> String {
    let text = std::fs::read_to_string(example_bindings()).expect("read the example bindings");
    let mut parts = text.split("[[binding]]");
    let head = parts.next().unwrap_or_default().to_owned();
    parts.filter(|b| !b.contains(&format!("serial = \"{serial}\""))).fold(head, |acc, b| acc + "[[binding]]" + b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_bindings_and_log_level_and_names_what_needs_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mqtt, influx) = (Mosquitto::start(), Influx1::start());
    influx.create_db(DB).await;
    let bindings = dir.path().join("bindings.toml");
    std::fs::write(&bindings, bindings_without("ABC-001")).expect("write");
    let toml = gateway_toml(dir.path(), &mqtt.url(), &influx.url(), "v1", &bindings, "");
    // No RUST_LOG (the harness sets one): `log.level` decides.
    let gw = common::Gateway::start_with_env(gateway_bin(), dir.path(), &toml, &[("RUST_LOG", "")]);
    wait_for_log(&gw, "Subscribed.").await;
    let pid = gw.pid().expect("running");

    // No binding yet: the reading is parked.
    let t = chrono::Utc::now().timestamp_millis();
    publish_qos1(mqtt.port, &[msg("ABC-001", json!({"ts": t, "heart_rate": 72}))]).await;
    wait_for_log(&gw, "Reading has no binding").await;

    // The binding arrives in the file; the log level and a restart-only key change too.
    std::fs::copy(example_bindings(), &bindings).expect("copy");
    let changed = toml.replace("flush_interval_ms = 100", "flush_interval_ms = 200")
        + "\n[log]\nlevel = \"info,heartguard_gateway::sink=debug\"\n";
    std::fs::write(gw.config_path(), format!("{changed}\n[http]\nlisten = \"127.0.0.1:0\"\n")).expect("rewrite");
    hup(pid);
    wait_for_log(&gw, "Bindings reloaded.").await;
    wait_count(&influx, "vital_signs", 1).await;
    let log = gw.log();
    assert!(
        log.contains("Setting changed in the configuration file; it takes effect only after a restart. key=influx.flush_interval_ms"),
        "{log}"
    );
    assert_eq!(log.matches("takes effect only after a restart").count(), 1, "only that key: {log}");
    // The sink's debug lines appear now.
    eventually(common::WAIT, "a debug line from the sink", || {
        let found = gw.log().contains("Batch written.");
        async move { found }
    })
    .await;

    // A broken bindings file is refused whole; the bindings in force stay and it is counted.
    std::fs::write(&bindings, "[[binding]]\nserial = \"X\"\n").expect("break");
    hup(pid);
    wait_for_log(&gw, "Bindings file refused at reload; the bindings in force stay.").await;
    publish_qos1(mqtt.port, &[msg("ABC-001", json!({"ts": t + 1000, "heart_rate": 73}))]).await;
    wait_count(&influx, "vital_signs", 2).await;
    let metrics = common::http_client()
        .get(format!("{}/metrics", gw.http_url().await))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    assert!(metrics.lines().any(|l| l == "heartguard_bindings_sync_errors_total 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mqtt, influx) = (Mosquitto::start(), Influx1::start());
    influx.create_db(DB).await;
    let toml = gateway_toml(dir.path(), &mqtt.url(), &influx.url(), "v1", &example_bindings(), "")
        + "\n[log]\nformat = \"json\"\n";
    let gw = start_gateway(gateway_bin(), dir.path(), &toml).await;
    publish_qos1(mqtt.port, &[("devices/ABC-001/vitals".into(), b"{\"heart_rate\": \"Juan Perez\"}".to_vec())]).await;
    wait_for_log(&gw, "Rejected a reading").await;
    let log = gw.log();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    let subscribed = log.lines().find(|l| l.contains("\"Subscribed.\"")).expect("subscribed line");
    let v: serde_json::Value = serde_json::from_str(subscribed).expect("json");
    assert_eq!(v["topic"], json!("devices/+/vitals"));
    assert!(!log.contains("Juan"), "a payload's contents never reach the log: {log}");
}

/// A reading intake parks as unbound while its commit waits (here: a full queue under
/// `backpressure`, held by an InfluxDB outage) is checked against the table that was put in
/// force meanwhile, however long the commit waited; it used to be rechecked only for 2 s after
/// the swap, and then stayed parked until it expired into the dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_parked_while_its_commit_waited_finds_the_binding_put_in_force_meanwhile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mqtt, mut influx) = (Mosquitto::start(), Influx1::start());
    influx.create_db(DB).await;
    influx.stop();
    let bindings = dir.path().join("bindings.toml");
    std::fs::write(&bindings, bindings_without("ABC-001")).expect("write");
    let toml = gateway_toml_with_queue(
        dir.path(),
        &mqtt.url(),
        &influx.url(),
        "v1",
        &bindings,
        "",
        "max_bytes = 65536\nfull_policy = \"backpressure\"\nmin_free_bytes = 0",
    )
    .replace(
        &format!("url = \"{}\"", mqtt.url()),
        &format!("url = \"{}\"\ntopics = [\"devices/{{serial}}/vitals\", \"ward/batch\"]", mqtt.url()),
    );
    let gw = start_gateway(gateway_bin(), dir.path(), &toml).await;
    let pid = gw.pid().expect("running");

    // Something waits in the queue, so a commit larger than the limit is refused.
    let t = chrono::Utc::now().timestamp_millis() - 60_000;
    publish_qos1(mqtt.port, &[msg("MAS-R7-0007", json!({"ts": t, "spo2": 97}))]).await;
    eventually(common::WAIT, "the first reading is queued", || async {
        let out = common::gateway_cli(
            gateway_bin(),
            &["queue", "stats", "--config", gw.config_path().to_str().expect("utf8")],
        )
        .1;
        out.lines().any(|l| l.trim() == "points waiting: 1")
    })
    .await;

    // One message: 300 readings of a bound device and one of ABC-001, which has no binding
    // yet. Intake resolves them together, then its commit waits for room.
    let mut batch: Vec<serde_json::Value> =
        (1..=300).map(|i| json!({"serial": "MAS-R7-0007", "ts": t + i, "spo2": 96})).collect();
    batch.push(json!({"serial": "ABC-001", "ts": t + 500, "heart_rate": 72}));
    publish_qos1(mqtt.port, &[("ward/batch".into(), serde_json::Value::Array(batch).to_string().into_bytes())]).await;
    wait_for_log(&gw, "Queue full: refusing new readings").await;

    // ABC-001's binding is put in force while that commit waits, and the commit lands well
    // after the swap.
    std::fs::copy(example_bindings(), &bindings).expect("copy");
    hup(pid);
    wait_for_log(&gw, "Bindings reloaded.").await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    influx.restart();

    // Every reading, ABC-001's included, reaches InfluxDB.
    wait_count(&influx, "vital_signs", 302).await;
    let rows = influx.rows(DB, "vital_signs").await;
    assert_eq!(rows.iter().filter(|r| r["device_id"] == json!("00000000-0000-4000-8000-000000000123")).count(), 1);
}
