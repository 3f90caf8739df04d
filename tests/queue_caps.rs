//! The queue's caps with a real gateway (Mosquitto → gateway → InfluxDB 1.x): readings from
//! serials nobody bound stay within `queue.max_parked_bytes`, and under `backpressure` they
//! never stop the bound devices' readings.

mod common;

use common::{
    DB, Influx1, Mosquitto, WAIT, eventually, gateway_bin, gateway_cli, gateway_toml_with_queue, ms, msg, publish_qos1,
    start_gateway, wait_count, wait_for_log,
};
use serde_json::json;

/// The value of one sample (`name{labels}` exactly as rendered), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_serials_stays_within_its_cap_and_bound_readings_still_get_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mqtt = Mosquitto::start();
    let influx = Influx1::start();
    influx.create_db(DB).await;
    // The caps take their defaults: an eighth of max_bytes each, 32,768 bytes.
    let queue = "max_bytes = 262144\nfull_policy = \"backpressure\"";
    let toml =
        gateway_toml_with_queue(dir.path(), &mqtt.url(), &influx.url(), "v1", &common::example_bindings(), "", queue);
    let gw = start_gateway(gateway_bin(), dir.path(), &toml).await;

    // 3,000 readings of random serials, about 110 bytes each when parked: more than max_bytes
    // on their own. Among them, 300 readings of a bound device.
    let t0 = ms("2026-11-20T00:00:00Z");
    let mut rng = fastrand::Rng::with_seed(0x0051_5545_5545);
    let mut msgs = Vec::new();
    for i in 0..3000i64 {
        msgs.push(msg(&format!("RND-{:08x}", rng.u32(..)), json!({"ts": t0 + i, "spo2": 97, "heart_rate": 70})));
        if i % 10 == 0 {
            msgs.push(msg("ABC-001", json!({"ts": t0 + i, "heart_rate": 60 + i % 40})));
        }
    }
    publish_qos1(mqtt.port, &msgs).await;
    wait_count(&influx, "vital_signs", 300).await;

    let base = gw.http_url().await;
    let scrape = || async {
        let resp = common::http_client().get(format!("{base}/metrics")).send().await.expect("GET /metrics");
        resp.text().await.expect("body")
    };
    eventually(WAIT, "every unbound reading parked", || async {
        sample(&scrape().await, "heartguard_resolve_parked_total") == Some(3000.0)
    })
    .await;

    let db = rusqlite::Connection::open_with_flags(
        dir.path().join("data/gateway.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the database");
    let (bytes, rows, newest): (i64, i64, String) = db
        .query_row(
            "SELECT sum(length(CAST(serial AS BLOB)) + length(CAST(body AS BLOB))), count(*),
                    (SELECT body FROM parked ORDER BY id DESC LIMIT 1)
             FROM parked WHERE reason = 'unbound'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("parked");
    assert!(bytes <= 32768 && bytes > 30000, "{bytes} bytes parked");
    assert!(newest.contains(&(t0 + 2999).to_string()), "the newest reading is kept: {newest}");
    wait_for_log(&gw, "Readings parked unbound are over queue.max_parked_bytes: deleted the oldest").await;

    let text = scrape().await;
    let v = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
    assert_eq!(v(r#"heartguard_queue_parked_bytes{reason="unbound"}"#), bytes as f64);
    assert_eq!(v(r#"heartguard_queue_evicted_total{kind="parked"}"#), (3000 - rows) as f64);
    assert_eq!(v(r#"heartguard_queue_parked{reason="unbound"}"#), rows as f64);
    let (code, out, err) = gateway_cli(gateway_bin(), &["status", "--url", &base]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!(
            "  - {} unbound parked reading(s) deleted since start: over queue.max_parked_bytes.",
            3000 - rows
        )),
        "{out}"
    );
}
