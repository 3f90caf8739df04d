//! `heartguard-gateway demo` on a fresh directory delivers simulated devices of every kind to a
//! real InfluxDB, and `status` shows it working.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Influx1, WAIT, eventually, gateway_bin, gateway_cli};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_delivers_every_simulated_device_and_status_shows_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let influx = Influx1::start();
    let data = dir.path().join("demo");
    let log = std::fs::File::create(dir.path().join("demo.log")).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_heartguard-gateway"))
        .args(["demo", "--data-dir", data.to_str().expect("utf8"), "--influx-url", &influx.url()])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone"))
        .stderr(log)
        .spawn()
        .expect("start the demo");

    // The demo creates its database; wait for it and its first points.
    eventually(WAIT, "the demo database with points", || async {
        let v = influx.query(heartguard_gateway::demo::DEMO_DB, "SELECT count(*) FROM vital_signs").await;
        v["results"][0]["series"].is_array()
    })
    .await;
    // Three serial devices every second, the HL7 monitor every five.
    eventually(WAIT, "points of all four demo devices", || async {
        let rows = influx.rows(heartguard_gateway::demo::DEMO_DB, "vital_signs").await;
        (1..=4).all(|n| rows.iter().any(|r| r["device_id"] == json!(format!("demo-device-{n}"))))
    })
    .await;
    let rows = influx.rows(heartguard_gateway::demo::DEMO_DB, "vital_signs").await;
    assert!(rows.iter().all(
        |r| r["demo"] == json!("true") && r["patient_id"].as_str().is_some_and(|p| p.starts_with("demo-patient-"))
    ));

    tokio::time::sleep(Duration::from_secs(6)).await; // one status-file period
    let (code, out, err) = gateway_cli(gateway_bin(), &["status", "--data-dir", data.to_str().expect("utf8")]);
    let _ = Command::new("kill").arg("-INT").arg(child.id().to_string()).status();
    let exit = child.wait().expect("wait for the demo");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("running"), "{out}");
    assert!(out.contains("Source       serial/nonin_df8: "), "{out}");
    assert_eq!(out.matches("Serial port  ").count(), 3, "{out}");
    assert!(out.contains("(nonin_df8): open,"), "{out}");
    assert!(exit.success(), "{}", std::fs::read_to_string(dir.path().join("demo.log")).unwrap_or_default());
}
