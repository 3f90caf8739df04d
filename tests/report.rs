//! Reporting to PostgreSQL (real cluster): activity rows match what was sent and
//! delivered, one closed gap per silence with the right bounds, no counts lost while the
//! database is away, two gateways side by side.

mod common;

use std::time::Duration;

use common::{
    DB, Gateway, Influx1, Mosquitto, Postgres, WAIT, eventually, gateway_bin, gateway_toml_pg, msg, publish_qos1,
    wait_count, wait_for_log,
};
use serde_json::json;

const ABC: &str = "00000000-0000-4000-8000-000000000789";
const MAS: &str = "00000000-0000-4000-8000-000000000791";
const REPORT: &str = "[report]\nenabled = true\ninterval_ms = 1000\ngap_factor = 1.0\ngap_min_ms = 1000\n";

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn gateway(
    dir: &std::path::Path,
    mqtt: &Mosquitto,
    influx: &Influx1,
    pg: &Postgres,
    id: &str,
    bindings: &str,
) -> Gateway {
    let toml = gateway_toml_pg(dir, &mqtt.url(), &influx.url(), pg, bindings)
        .replace("id = \"test-gw\"", &format!("id = \"{id}\""))
        + REPORT;
    Gateway::start(gateway_bin(), dir, &toml)
}

/// (readings_received, points_delivered, last_reading_at in ms) for a gateway and stream.
async fn activity(pg: &Postgres, gw: &str, stream: &str) -> Option<(i64, i64, Option<i64>)> {
    let c = pg.client().await;
    let row = c
        .query_opt(
            "SELECT readings_received, points_delivered, last_reading_at FROM stream_activity WHERE gateway_id = $1 AND stream_id = $2::text::uuid",
            &[&gw, &stream],
        )
        .await
        .ok()?;
    row.map(|r| {
        (r.get(0), r.get(1), r.get::<_, Option<chrono::NaiveDateTime>>(2).map(|t| t.and_utc().timestamp_millis()))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_rows_match_what_was_sent_and_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mqtt, influx, pg) = (Mosquitto::start(), Influx1::start(), Postgres::start());
    influx.create_db(DB).await;
    let gw = gateway(dir.path(), &mqtt, &influx, &pg, "gw-1", "");
    wait_for_log(&gw, "Bindings updated.").await;
    wait_for_log(&gw, "Subscribed.").await;
    let t0 = now_ms();
    let mut msgs: Vec<_> = (0..30).map(|i| msg("ABC-001", json!({"ts": t0 + i, "heart_rate": 70}))).collect();
    msgs.extend((0..10).map(|i| msg("MAS-R7-0007", json!({"ts": t0 + i, "spo2": 97}))));
    publish_qos1(mqtt.port, &msgs).await;
    wait_count(&influx, "vital_signs", 40).await;
    eventually(WAIT, "activity reported", || async {
        activity(&pg, "gw-1", ABC).await == Some((30, 30, Some(t0 + 29)))
            && activity(&pg, "gw-1", MAS).await == Some((10, 10, Some(t0 + 9)))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_and_a_resume_give_exactly_one_closed_gap_with_its_bounds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mqtt, influx, pg) = (Mosquitto::start(), Influx1::start(), Postgres::start());
    influx.create_db(DB).await;
    let gw = gateway(dir.path(), &mqtt, &influx, &pg, "gw-1", "");
    wait_for_log(&gw, "Bindings updated.").await;
    wait_for_log(&gw, "Subscribed.").await;
    let mut last_before = 0;
    for _ in 0..10 {
        last_before = now_ms();
        publish_qos1(mqtt.port, &[msg("ABC-001", json!({"ts": last_before, "heart_rate": 70}))]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Silent for 3 s: longer than the 1 s threshold (1 Hz stream, factor 1, floor 1 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let first_after = now_ms();
    publish_qos1(mqtt.port, &[msg("ABC-001", json!({"ts": first_after, "heart_rate": 71}))]).await;
    for i in 1..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        publish_qos1(mqtt.port, &[msg("ABC-001", json!({"ts": first_after + i * 100, "heart_rate": 71}))]).await;
    }
    let c = pg.client().await;
    eventually(WAIT, "one closed gap reported", || {
        let c = &c;
        async move {
            let rows = c
                .query("SELECT started_at, ended_at FROM stream_gaps WHERE gateway_id = 'gw-1' AND stream_id = $1::text::uuid", &[&ABC])
                .await
                .expect("query");
            rows.len() == 1 && rows[0].get::<_, Option<chrono::NaiveDateTime>>(1).is_some()
        }
    })
    .await;
    let row = c
        .query_one(
            "SELECT started_at, ended_at, threshold_ms FROM stream_gaps WHERE stream_id = $1::text::uuid",
            &[&ABC],
        )
        .await
        .expect("gap");
    let started: chrono::NaiveDateTime = row.get(0);
    let ended: chrono::NaiveDateTime = row.get(1);
    assert_eq!(
        started.and_utc().timestamp_millis(),
        last_before,
        "the gap starts at the last reading before the silence"
    );
    assert_eq!(ended.and_utc().timestamp_millis(), first_after, "and ends at the first reading after it");
    assert_eq!(row.get::<_, i64>(2), 1000);
    let all = c.query_one("SELECT count(*) FROM stream_gaps", &[]).await.expect("count");
    assert_eq!(all.get::<_, i64>(0), 1, "exactly one gap: the other streams never sent, so there is nothing to watch");
    let (code, out, _) =
        common::gateway_cli(gateway_bin(), &["activity", "--config", &gw.config_path().display().to_string()]);
    assert_eq!(code, Some(0));
    assert!(out.lines().any(|l| l.starts_with(ABC) && l.ends_with("\t-")), "the gap is closed: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_during_reporting_loses_no_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mqtt, influx, mut pg) = (Mosquitto::start(), Influx1::start(), Postgres::start());
    influx.create_db(DB).await;
    let gw = gateway(dir.path(), &mqtt, &influx, &pg, "gw-1", "stale_grace_ms = 200");
    wait_for_log(&gw, "Bindings updated.").await;
    wait_for_log(&gw, "Subscribed.").await;
    let t0 = now_ms();
    publish_qos1(
        mqtt.port,
        &(0..10).map(|i| msg("ABC-001", json!({"ts": t0 + i, "heart_rate": 70}))).collect::<Vec<_>>(),
    )
    .await;
    eventually(WAIT, "first report", || async { activity(&pg, "gw-1", ABC).await.is_some_and(|a| a.1 == 10) }).await;
    pg.stop();
    let t1 = now_ms();
    publish_qos1(
        mqtt.port,
        &(0..15).map(|i| msg("ABC-001", json!({"ts": t1 + i, "heart_rate": 70}))).collect::<Vec<_>>(),
    )
    .await;
    wait_count(&influx, "vital_signs", 25).await;
    wait_for_log(&gw, "PostgreSQL to report activity").await;
    pg.restart();
    eventually(WAIT, "every count reported after the outage", || async {
        activity(&pg, "gw-1", ABC).await == Some((25, 25, Some(t1 + 14)))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_report_their_own_streams_without_interfering() {
    let (da, db) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let (mqtt, influx, pg) = (Mosquitto::start(), Influx1::start(), Postgres::start());
    influx.create_db(DB).await;
    let a = gateway(da.path(), &mqtt, &influx, &pg, "gw-a", "serials = [\"ABC-001\"]");
    let b = gateway(db.path(), &mqtt, &influx, &pg, "gw-b", "serials = [\"MAS-R7-0007\"]");
    for g in [&a, &b] {
        wait_for_log(g, "Bindings updated.").await;
        wait_for_log(g, "Subscribed.").await;
    }
    let t0 = now_ms();
    let mut msgs: Vec<_> = (0..12).map(|i| msg("ABC-001", json!({"ts": t0 + i, "heart_rate": 70}))).collect();
    msgs.extend((0..7).map(|i| msg("MAS-R7-0007", json!({"ts": t0 + i, "spo2": 97}))));
    publish_qos1(mqtt.port, &msgs).await;
    eventually(WAIT, "each gateway reported its own stream", || async {
        activity(&pg, "gw-a", ABC).await.is_some_and(|x| x.0 == 12 && x.1 == 12)
            && activity(&pg, "gw-b", MAS).await.is_some_and(|x| x.0 == 7 && x.1 == 7)
    })
    .await;
    assert_eq!(activity(&pg, "gw-a", MAS).await, None);
    assert_eq!(activity(&pg, "gw-b", ABC).await, None);
}
