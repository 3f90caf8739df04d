//! Bindings from a real PostgreSQL (a throw-away `initdb` cluster loaded with the central
//! schema fixture): full and scoped sync, changes by NOTIFY and by periodic refresh, a
//! device moved between patients while readings flow, offline start from the cache, parked
//! unknown devices and their expiry.

mod common;

use std::time::Duration;

use common::{
    DB, Gateway, Influx1, Mosquitto, Postgres, WAIT, eventually, gateway_bin, gateway_cli, gateway_toml_pg, msg,
    publish_qos1, wait_count, wait_for_log,
};
use serde_json::json;

const ABC_STREAM: &str = "00000000-0000-4000-8000-000000000789";

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn start(dir: &std::path::Path, mqtt: &Mosquitto, influx: &Influx1, pg: &Postgres, extra: &str) -> Gateway {
    let gw = Gateway::start(gateway_bin(), dir, &gateway_toml_pg(dir, &mqtt.url(), &influx.url(), pg, extra));
    wait_for_log(&gw, "Subscribed.").await;
    wait_for_log(&gw, "Bindings updated.").await;
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sync_attributes_by_the_central_data_and_parks_ended_streams() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mqtt, influx, pg) = (Mosquitto::start(), Influx1::start(), Postgres::start());
    influx.create_db(DB).await;
    let gw = start(dir.path(), &mqtt, &influx, &pg, "").await;
    let t = now_ms();
    publish_qos1(
        mqtt.port,
        &[
            msg("ABC-001", json!({"ts": t, "heart_rate": 72})),
            msg("MAS-R7-0007", json!({"ts": t, "spo2": 97})),
            // Its stream ended on 2026-11-02: never María's any more.
            msg("NON-7500-0042", json!({"ts": t, "spo2": 90})),
        ],
    )
    .await;
    wait_count(&influx, "vital_signs", 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = influx.rows(DB, "vital_signs").await;
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let abc = rows.iter().find(|r| r["stream_id"] == json!(ABC_STREAM)).expect("ABC-001 point");
    assert_eq!(
        (abc["patient_id"].clone(), abc["location"].clone(), abc["priority"].clone()),
        (json!("00000000-0000-4000-8000-000000000456"), json!("ICU-5"), json!("high"))
    );
    assert_eq!(abc["org_id"], json!("00000000-0000-4000-8000-000000000999"));
    let mas = rows.iter().find(|r| r["stream_id"] == json!("00000000-0000-4000-8000-000000000791")).expect("MAS point");
    assert_eq!((mas["signal_type"].clone(), mas["location"].clone()), (json!("spo2"), json!("Ward 3, bed=7")));

    let cfg = gw.config_path().display().to_string();
    let (code, out, _) = gateway_cli(gateway_bin(), &["bindings", "list", "--config", &cfg]);
    assert_eq!(code, Some(0));
    assert!(out.contains("source: postgres 127.0.0.1/heartguard"), "{out}");
    assert!(out.contains("ABC-001") && out.contains("MAS-R7-0007"), "{out}");
    let (_, out, _) = gateway_cli(gateway_bin(), &["queue", "stats", "--config", &cfg]);
    assert!(out.contains("parked readings: 1"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_sync_loads_only_its_devices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mqtt, influx, pg) = (Mosquitto::start(), Influx1::start(), Postgres::start());
    influx.create_db(DB).await;
    let gw = start(dir.path(), &mqtt, &influx, &pg, "serials = [\"MAS-R7-0007\"]").await;
    let (_, out, _) =
        gateway_cli(gateway_bin(), &["bindings", "list", "--config", &gw.config_path().display().to_string()]);
    assert!(out.contains("MAS-R7-0007") && !out.contains("ABC-001"), "{out}");
    let t = now_ms();
    publish_qos1(
        mqtt.port,
        &[msg("ABC-001", json!({"ts": t, "heart_rate": 72})), msg("MAS-R7-0007", json!({"ts": t, "spo2": 97}))],
    )
    .await;
    wait_count(&influx, "vital_signs", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(influx.count(DB, "vital_signs").await, 1, "ABC-001 is outside this gateway's scope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_moved_while_readings_flow_has_zero_misattributed_points() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mqtt, influx, pg) = (Mosquitto::start(), Influx1::start(), Postgres::start());
    influx.create_db(DB).await;
    let _gw = start(dir.path(), &mqtt, &influx, &pg, "").await;

    // One reading every 10 ms for 4 s, stamped when sent.
    let port = mqtt.port;
    let publisher = tokio::spawn(async move {
        let mut sent = 0u64;
        let end = tokio::time::Instant::now() + Duration::from_secs(4);
        while tokio::time::Instant::now() < end {
            publish_qos1(port, &[msg("ABC-001", json!({"ts": now_ms(), "heart_rate": 70}))]).await;
            sent += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sent
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The administrator moves ABC-001 from Juan to María, in one transaction.
    let c = pg.client().await;
    c.batch_execute(
        "BEGIN;
         UPDATE signal_streams SET ended_at = now() AT TIME ZONE 'UTC' WHERE id = '00000000-0000-4000-8000-000000000789';
         INSERT INTO signal_streams (id, patient_id, device_id, signal_type_id, sample_rate_hz, started_at)
           VALUES ('00000000-0000-4000-8000-000000000799', '00000000-0000-4000-8000-000000000457',
                   '00000000-0000-4000-8000-000000000123', '00000000-0000-4000-8000-0000000000a1', 1, now() AT TIME ZONE 'UTC');
         INSERT INTO timeseries_binding (id, stream_id, influx_org, influx_bucket, measurement)
           VALUES ('00000000-0000-4000-8000-0000000000b9', '00000000-0000-4000-8000-000000000799', 'heartguard', 'heartguard_vitals', 'vital_signs');
         INSERT INTO timeseries_binding_tag (id, binding_id, tag_key, tag_value)
           VALUES ('00000000-0000-4000-8000-0000000000c9', '00000000-0000-4000-8000-0000000000b9', 'location', 'Ward 2');
         COMMIT;",
    )
    .await
    .expect("move the device");
    let row = c
        .query_one("SELECT ended_at FROM signal_streams WHERE id = '00000000-0000-4000-8000-000000000789'", &[])
        .await
        .expect("ended_at");
    let moved_at: chrono::NaiveDateTime = row.get(0);
    let moved_ns = moved_at.and_utc().timestamp_nanos_opt().expect("ns");
    let sent = publisher.await.expect("publisher");

    wait_count(&influx, "vital_signs", sent).await;
    let rows = influx.rows(DB, "vital_signs").await;
    let (mut before, mut after) = (0, 0);
    for r in &rows {
        let t = r["time"].as_i64().expect("time");
        let (stream, patient) = (r["stream_id"].as_str().unwrap_or(""), r["patient_id"].as_str().unwrap_or(""));
        if t < moved_ns {
            before += 1;
            assert_eq!(
                (stream, patient),
                (ABC_STREAM, "00000000-0000-4000-8000-000000000456"),
                "reading at {t} (< {moved_ns})"
            );
        } else {
            after += 1;
            assert_eq!(
                (stream, patient),
                ("00000000-0000-4000-8000-000000000799", "00000000-0000-4000-8000-000000000457"),
                "reading at {t} (>= {moved_ns})"
            );
            assert_eq!(r["location"], json!("Ward 2"));
        }
    }
    assert!(before > 50 && after > 50, "readings on both sides of the move: {before} / {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_with_a_lost_notification_is_picked_up_by_the_periodic_refresh() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mqtt, influx, pg) = (Mosquitto::start(), Influx1::start(), Postgres::start());
    influx.create_db(DB).await;
    let gw = start(dir.path(), &mqtt, &influx, &pg, "refresh_interval_ms = 1000").await;
    // Triggers do not fire in this session: the NOTIFY is "lost".
    pg.client()
        .await
        .batch_execute(
            "SET session_replication_role = replica;
             UPDATE timeseries_binding_tag SET tag_value = 'ICU-7' WHERE id = '00000000-0000-4000-8000-0000000000c1';",
        )
        .await
        .expect("silent update");
    eventually(WAIT, "the refresh applied the change", || {
        let n = gw.log().matches("Bindings updated.").count();
        async move { n >= 2 }
    })
    .await;
    publish_qos1(mqtt.port, &[msg("ABC-001", json!({"ts": now_ms(), "heart_rate": 72}))]).await;
    wait_count(&influx, "vital_signs", 1).await;
    assert_eq!(influx.rows(DB, "vital_signs").await[0]["location"], json!("ICU-7"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notified_change_applies_within_two_seconds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mqtt, influx, pg) = (Mosquitto::start(), Influx1::start(), Postgres::start());
    influx.create_db(DB).await;
    // A refresh so slow it cannot be what applies the change.
    let gw = start(dir.path(), &mqtt, &influx, &pg, "refresh_interval_ms = 600000").await;
    let changed = tokio::time::Instant::now();
    pg.client()
        .await
        .batch_execute(
            "UPDATE timeseries_binding_tag SET tag_value = 'ICU-9' WHERE id = '00000000-0000-4000-8000-0000000000c1'",
        )
        .await
        .expect("update");
    eventually(Duration::from_secs(2), "the notified change applied within 2 s", || {
        let n = gw.log().matches("Bindings updated.").count();
        async move { n >= 2 }
    })
    .await;
    assert!(changed.elapsed() < Duration::from_secs(2));
    publish_qos1(mqtt.port, &[msg("ABC-001", json!({"ts": now_ms(), "heart_rate": 72}))]).await;
    wait_count(&influx, "vital_signs", 1).await;
    assert_eq!(influx.rows(DB, "vital_signs").await[0]["location"], json!("ICU-9"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_start_serves_the_cached_copy_and_catches_up_when_postgres_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mqtt, influx, mut pg) = (Mosquitto::start(), Influx1::start(), Postgres::start());
    influx.create_db(DB).await;
    let mut gw = start(dir.path(), &mqtt, &influx, &pg, "stale_grace_ms = 500").await;
    gw.terminate();
    pg.stop();
    gw.restart();
    wait_for_log(&gw, "Subscribed.").await;
    publish_qos1(mqtt.port, &[msg("ABC-001", json!({"ts": now_ms(), "heart_rate": 71}))]).await;
    wait_count(&influx, "vital_signs", 1).await;
    assert_eq!(influx.rows(DB, "vital_signs").await[0]["location"], json!("ICU-5"), "the cached binding served");

    pg.restart();
    pg.client()
        .await
        .batch_execute(
            "UPDATE timeseries_binding_tag SET tag_value = 'ICU-8' WHERE id = '00000000-0000-4000-8000-0000000000c1'",
        )
        .await
        .expect("update");
    eventually(WAIT, "reconnected and caught up", || {
        let n = gw.log().matches("Bindings updated.").count();
        async move { n >= 2 }
    })
    .await;
    publish_qos1(mqtt.port, &[msg("ABC-001", json!({"ts": now_ms(), "heart_rate": 72}))]).await;
    wait_count(&influx, "vital_signs", 2).await;
    let rows = influx.rows(DB, "vital_signs").await;
    assert!(rows.iter().any(|r| r["location"] == json!("ICU-8")), "{rows:#?}");
    gw.terminate();
    assert!(
        gw.log().contains("resolved_stale=1"),
        "the offline reading is counted as resolved on a stale copy:\n{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_device_is_parked_then_delivered_once_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mqtt, influx, pg) = (Mosquitto::start(), Influx1::start(), Postgres::start());
    influx.create_db(DB).await;
    let gw = start(dir.path(), &mqtt, &influx, &pg, "").await;
    let t0 = now_ms();
    publish_qos1(mqtt.port, &(0..20).map(|i| msg("NEW-0001", json!({"ts": t0 + i, "spo2": 96}))).collect::<Vec<_>>())
        .await;
    wait_for_log(&gw, "Reading has no binding; parked").await;
    assert_eq!(influx.count(DB, "vital_signs").await, 0);

    // Registered centrally, with a stream that started before the readings were taken.
    pg.client()
        .await
        .batch_execute(
            "BEGIN;
             INSERT INTO devices (id, org_id, serial, device_type_id, owner_patient_id)
               VALUES ('00000000-0000-4000-8000-000000000126', '00000000-0000-4000-8000-000000000999', 'NEW-0001',
                       '00000000-0000-4000-8000-0000000000d2', NULL);
             INSERT INTO signal_streams (id, patient_id, device_id, signal_type_id, started_at)
               VALUES ('00000000-0000-4000-8000-000000000800', '00000000-0000-4000-8000-000000000458',
                       '00000000-0000-4000-8000-000000000126', '00000000-0000-4000-8000-0000000000a2', (now() AT TIME ZONE 'UTC') - interval '1 hour');
             INSERT INTO timeseries_binding (id, stream_id, influx_org, influx_bucket, measurement)
               VALUES ('00000000-0000-4000-8000-0000000000ba', '00000000-0000-4000-8000-000000000800', 'heartguard', 'heartguard_vitals', 'vital_signs');
             COMMIT;",
        )
        .await
        .expect("register the device");
    wait_count(&influx, "vital_signs", 20).await;
    let rows = influx.rows(DB, "vital_signs").await;
    assert!(rows.iter().all(|r| r["stream_id"] == json!("00000000-0000-4000-8000-000000000800")), "{rows:#?}");
    let (_, out, _) =
        gateway_cli(gateway_bin(), &["queue", "stats", "--config", &gw.config_path().display().to_string()]);
    assert!(out.contains("parked readings: 0"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_readings_expire_to_dead_letters_as_unbound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mqtt, influx, pg) = (Mosquitto::start(), Influx1::start(), Postgres::start());
    influx.create_db(DB).await;
    let gw = start(dir.path(), &mqtt, &influx, &pg, "max_park_age_ms = 1000").await;
    publish_qos1(
        mqtt.port,
        &(0..5).map(|i| msg("NOBODY-1", json!({"ts": now_ms() + i, "spo2": 96}))).collect::<Vec<_>>(),
    )
    .await;
    wait_for_log(&gw, "moved to the dead letters (reason unbound)").await;
    let cfg = gw.config_path().display().to_string();
    let (_, out, _) = gateway_cli(gateway_bin(), &["dead-letters", "list", "--config", &cfg]);
    assert!(out.contains("# unbound: 5"), "{out}");
    assert!(out.contains("device NOBODY-1"), "{out}");
    assert_eq!(influx.count(DB, "vital_signs").await, 0);
}

/// A central schema change the gateway does not expect (here: a NULL where it reads a text,
/// then a timestamp column turned into `timestamptz`) refuses that snapshot and keeps the
/// bindings in force; once the data is readable again the sync carries on. It used to panic
/// in the sync task (in a release build, `panic = "abort"`: the whole daemon).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_central_row_refuses_the_snapshot_and_keeps_the_bindings_in_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mqtt, influx, pg) = (Mosquitto::start(), Influx1::start(), Postgres::start());
    influx.create_db(DB).await;
    let mut gw = start(dir.path(), &mqtt, &influx, &pg, "stale_grace_ms = 500").await;
    let db = pg.client().await;
    db.batch_execute(
        "ALTER TABLE timeseries_binding ALTER COLUMN measurement DROP NOT NULL;
         UPDATE timeseries_binding SET measurement = NULL
           WHERE stream_id = '00000000-0000-4000-8000-000000000789';",
    )
    .await
    .expect("a NULL where the gateway reads a text");
    wait_for_log(&gw, "Refused a binding snapshot from PostgreSQL").await;
    assert!(gw.is_running(), "{}", gw.log());

    // The copy in force still serves ABC-001 (after the stale grace: the snapshot that would
    // have moved the freshness mark was refused).
    publish_qos1(mqtt.port, &[msg("ABC-001", json!({"ts": now_ms(), "heart_rate": 70}))]).await;
    wait_count(&influx, "vital_signs", 1).await;
    assert_eq!(influx.rows(DB, "vital_signs").await[0]["location"], json!("ICU-5"));

    // Readable again, and a timestamp column changed type on the way: the sync carries on.
    db.batch_execute(
        "UPDATE timeseries_binding SET measurement = 'vital_signs'
           WHERE stream_id = '00000000-0000-4000-8000-000000000789';
         ALTER TABLE signal_streams ALTER COLUMN started_at TYPE timestamptz USING started_at AT TIME ZONE 'UTC';
         UPDATE timeseries_binding_tag SET tag_value = 'ICU-6' WHERE id = '00000000-0000-4000-8000-0000000000c1';",
    )
    .await
    .expect("repair");
    eventually(WAIT, "the repaired bindings applied", || {
        let n = gw.log().matches("Bindings updated.").count();
        async move { n >= 2 }
    })
    .await;
    publish_qos1(mqtt.port, &[msg("ABC-001", json!({"ts": now_ms(), "heart_rate": 71}))]).await;
    wait_count(&influx, "vital_signs", 2).await;
    assert!(influx.rows(DB, "vital_signs").await.iter().any(|r| r["location"] == json!("ICU-6")));
    let log = gw.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(gw.is_running(), "{log}");
}
