//! The HTTP endpoint during a real end-to-end run (Mosquitto → gateway → InfluxDB 1.x):
//! `/metrics` values, `/healthz`, `/readyz`, and the operator's `status`.

mod common;

use common::{
    DB, Influx1, Mosquitto, eventually, example_bindings, gateway_bin, gateway_cli, gateway_toml, ms, msg,
    publish_qos1, start_gateway, wait_count,
};
use serde_json::json;

/// The value of one sample (`name{labels}` exactly as rendered), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn get(url: &str) -> (u16, String) {
    let client = common::http_client();
    let resp = client.get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_status_follow_an_end_to_end_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mqtt = Mosquitto::start();
    let mut influx = Influx1::start();
    influx.create_db(DB).await;
    let mut gw = start_gateway(
        gateway_bin(),
        dir.path(),
        &gateway_toml(dir.path(), &mqtt.url(), &influx.url(), "v1", &example_bindings(), ""),
    )
    .await;
    let base = gw.http_url().await;
    eventually(common::WAIT, "/readyz answers 200", || async { get(&format!("{base}/readyz")).await.0 == 200 }).await;
    assert_eq!(get(&format!("{base}/healthz")).await, (200, "ok\n".to_owned()));

    let t = ms("2026-11-05T10:00:00Z");
    publish_qos1(
        mqtt.port,
        &[
            msg("ABC-001", json!({"ts": t, "heart_rate": 72})),
            msg("ABC-001", json!({"ts": t + 1000, "heart_rate": 73, "bogus": 1})),
            msg("MAS-R7-0007", json!({"ts": t, "spo2": 97})),
            msg("UNKNOWN-1", json!({"ts": t, "spo2": 97})),
            ("devices/ABC-001/vitals".to_owned(), b"{not json".to_vec()),
        ],
    )
    .await;
    wait_count(&influx, "vital_signs", 3).await;

    let scrape = || async { get(&format!("{base}/metrics")).await.1 };
    // Delivery is counted right after InfluxDB answers: wait for the counter, not the data.
    eventually(common::WAIT, "3 points counted as delivered", || async {
        sample(&scrape().await, r#"heartguard_sink_points_delivered_total{destination="heartguard/heartguard_vitals"}"#)
            == Some(3.0)
    })
    .await;
    let text = scrape().await;
    let v = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
    assert_eq!(v(r#"heartguard_ingest_messages_total{source="mqtt",protocol="json"}"#), 5.0);
    assert_eq!(v(r#"heartguard_ingest_readings_total{source="mqtt",protocol="json"}"#), 4.0);
    assert_eq!(v(r#"heartguard_ingest_source_connected{source="mqtt",protocol="json"}"#), 1.0);
    assert_eq!(v(r#"heartguard_decode_rejected_total{protocol="json",reason="invalid_json"}"#), 1.0);
    assert_eq!(v(r#"heartguard_decode_unknown_fields_total{source="mqtt",protocol="json"}"#), 1.0);
    assert_eq!(v(r#"heartguard_resolve_unbound_total{reason="unknown_serial"}"#), 1.0);
    assert_eq!(v("heartguard_queue_appended_total"), 3.0);
    // The unknown device's reading waits for a binding.
    assert_eq!(v("heartguard_resolve_parked_total"), 1.0);
    assert_eq!(v(r#"heartguard_queue_parked{reason="unbound"}"#), 1.0);
    // Its stored form with its serial, a few dozen bytes.
    let parked_bytes = v(r#"heartguard_queue_parked_bytes{reason="unbound"}"#);
    assert!((20.0..1024.0).contains(&parked_bytes), "{parked_bytes}");
    assert_eq!(v(r#"heartguard_queue_parked_bytes{reason="fresh"}"#), 0.0);
    assert_eq!(v("heartguard_queue_dead_letter_bytes"), 0.0);
    assert_eq!(v(r#"heartguard_queue_evicted_total{kind="parked"}"#), 0.0);
    assert_eq!(v(r#"heartguard_queue_evicted_total{kind="dead_letter"}"#), 0.0);
    assert_eq!(v("heartguard_queue_points"), 0.0);
    assert_eq!(v("heartguard_queue_oldest_age_seconds"), 0.0);
    assert_eq!(v(r#"heartguard_queue_destination_points{destination="heartguard/heartguard_vitals"}"#), 0.0);
    assert!(v(r#"heartguard_sink_write_duration_seconds_count{destination="heartguard/heartguard_vitals"}"#) >= 1.0);
    assert_eq!(v(r#"heartguard_sink_destination_failing{destination="heartguard/heartguard_vitals"}"#), 0.0);
    assert_eq!(v("heartguard_bindings_cache_size"), 3.0);
    assert_eq!(v("heartguard_health_ready"), 1.0);
    for stage in ["intake", "mqtt", "sinks", "sink heartguard/heartguard_vitals"] {
        assert!(v(&format!(r#"heartguard_health_heartbeat_age_seconds{{stage="{stage}"}}"#)) < 10.0, "{stage}");
    }
    assert!(!text.contains("ABC-001"), "device serials never become labels");

    let (code, out, err) = gateway_cli(gateway_bin(), &["status", "--url", &base]);
    assert_eq!(code, Some(0), "{err}");
    let queue_line = format!("Queue        0 points waiting (0 B); 1 parked ({parked_bytes} B); database ");
    for line in [
        "— gateway test-gw: running, ready, up ",
        "Source       mqtt/json: connected; 5 messages, 4 readings, 1 rejected",
        &queue_line,
        "  - 1 reading(s) parked, waiting for a binding or a current copy of the bindings.",
        "Destination  heartguard/heartguard_vitals: ok, 0 waiting, 3 delivered, 0 failed attempts, last write ",
        "Bindings     3 from file, version ",
        "Devices      3 seen in the last minute; 1 unbound reading(s) since start",
        "  - 1 device(s) seen in the last minute have no binding: UNKNOWN-1.",
    ] {
        assert!(out.contains(line), "{line:?} in:\n{out}");
    }

    // InfluxDB goes away: the destination shows as failing, its point waits, health stays.
    influx.stop();
    publish_qos1(mqtt.port, &[msg("ABC-001", json!({"ts": t + 2000, "heart_rate": 74}))]).await;
    eventually(common::WAIT, "the destination counts as failing", || async {
        sample(&scrape().await, r#"heartguard_sink_destination_failing{destination="heartguard/heartguard_vitals"}"#)
            == Some(1.0)
    })
    .await;
    let text = scrape().await;
    assert_eq!(sample(&text, "heartguard_queue_points"), Some(1.0), "{text}");
    assert!(
        sample(&text, r#"heartguard_sink_write_failures_total{destination="heartguard/heartguard_vitals"}"#)
            >= Some(1.0)
    );
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200, "an outage of InfluxDB is not a sick gateway");
    let (_, out, _) = gateway_cli(gateway_bin(), &["status", "--url", &base]);
    assert!(out.contains("Destination  heartguard/heartguard_vitals: FAILING, 1 waiting"), "{out}");
    assert!(out.contains("  - Destination heartguard/heartguard_vitals is failing (connection failed"), "{out}");

    let status = gw.terminate();
    assert!(status.success(), "{status:?}");
    // With the daemon gone, status reads the database.
    let (code, out, _) =
        gateway_cli(gateway_bin(), &["status", "--url", &base, "--config", &gw.config_path().display().to_string()]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("(daemon not reachable: "), "{out}");
    assert!(out.contains("gateway test-gw: daemon not reachable: figures from the database only"), "{out}");
    assert!(out.contains("Destination  heartguard/heartguard_vitals: -, 1 waiting"), "{out}");
}
