//! SIGHUP: the bindings file and the log level are applied, a changed setting that needs a
//! restart is named in the log, a bad file is refused without harm; JSON logs.

mod common;

use std::process::Command;

use common::{
    DB, Influx1, Mosquitto, eventually, example_bindings, gateway_toml, msg, publish_qos1, start_gateway, wait_count,
    wait_for_log,
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
    let gw = common::Gateway::start_with_env(dir.path(), &toml, &[("RUST_LOG", "")]);
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
    let gw = start_gateway(dir.path(), &toml).await;
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
