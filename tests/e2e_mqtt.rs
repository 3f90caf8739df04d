//! End to end against real servers: Mosquitto → gateway process → InfluxDB 1.x / VictoriaMetrics.
//! Every test starts its own servers on free loopback ports in temp dirs.

mod common;

use std::time::Duration;

use common::{
    DB, Influx1, Mosquitto, Victoria, eventually, example_bindings, gateway_bin, gateway_toml, ms, msg, publish_qos1,
    start_gateway,
};
use serde_json::{Value, json};

async fn wait_count(influx: &Influx1, n: u64) {
    common::wait_count(influx, "vital_signs", n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_data_arrives_in_influxdb_v1_with_exact_tags_fields_and_timestamps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mqtt = Mosquitto::start();
    let influx = Influx1::start();
    influx.create_db(DB).await;
    let mut gw = start_gateway(
        gateway_bin(),
        dir.path(),
        &gateway_toml(dir.path(), &mqtt.url(), &influx.url(), "v1", &example_bindings(), ""),
    )
    .await;

    let t1 = ms("2026-11-05T10:00:00.123Z");
    publish_qos1(
        mqtt.port,
        &[
            msg("ABC-001", json!({"serial": "ABC-001", "ts": t1, "heart_rate": 72, "spo2": 98, "systolic_bp": 120, "diastolic_bp": 80, "temperature": 36.5})),
            // Legacy name, whole-number temperature, RFC 3339 time, serial from the topic only.
            msg("ABC-001", json!({"ts": "2026-11-05T10:00:01.123Z", "body_temperature": 37, "heart_rate": 73.0})),
            msg("MAS-R7-0007", json!({"ts": t1, "spo2": 97, "heart_rate": 71, "perfusion_index": 2.28})),
            // NON-7500-0042's stream ended at 2026-11-02 09:30: a reading taken before goes to
            // the patient it was measured on; one taken at the end or later goes nowhere.
            msg("NON-7500-0042", json!({"ts": ms("2026-11-02T09:29:59Z"), "spo2": 95})),
            msg("NON-7500-0042", json!({"ts": ms("2026-11-02T09:30:00Z"), "spo2": 94})),
            msg("NON-7500-0042", json!({"ts": ms("2026-11-05T10:00:00Z"), "spo2": 93})),
        ],
    )
    .await;
    wait_count(&influx, 4).await;
    // Give a wrongly attributed point time to show up before asserting it did not.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let rows = influx.rows(DB, "vital_signs").await;
    assert_eq!(rows.len(), 4, "{rows:#?}");
    let by_time_device = |t: i64, dev: &str| {
        rows.iter()
            .find(|r| r["time"] == json!(t * 1_000_000) && r["device_id"] == json!(dev))
            .unwrap_or_else(|| panic!("no row at {t} for {dev}: {rows:#?}"))
            .clone()
    };
    let abc = by_time_device(t1, "00000000-0000-4000-8000-000000000123");
    let expect_tags = |row: &serde_json::Map<String, Value>, tags: &[(&str, &str)]| {
        for (k, v) in tags {
            assert_eq!(row[*k], json!(v), "tag {k} in {row:#?}");
        }
    };
    expect_tags(
        &abc,
        &[
            ("patient_id", "00000000-0000-4000-8000-000000000456"),
            ("stream_id", "00000000-0000-4000-8000-000000000789"),
            ("org_id", "00000000-0000-4000-8000-000000000999"),
            ("signal_type", "vital_signs"),
            ("location", "ICU-5"),
            ("priority", "high"),
        ],
    );
    assert_eq!(
        (abc["heart_rate"].clone(), abc["spo2"].clone(), abc["systolic_bp"].clone(), abc["diastolic_bp"].clone()),
        (json!(72), json!(98), json!(120), json!(80))
    );
    assert_eq!(abc["temperature"], json!(36.5));
    let abc2 = by_time_device(ms("2026-11-05T10:00:01.123Z"), "00000000-0000-4000-8000-000000000123");
    assert_eq!((abc2["temperature"].as_f64(), abc2["heart_rate"].clone()), (Some(37.0), json!(73)));

    let mas = by_time_device(t1, "00000000-0000-4000-8000-000000000125");
    expect_tags(
        &mas,
        &[
            ("patient_id", "00000000-0000-4000-8000-000000000458"),
            ("stream_id", "00000000-0000-4000-8000-000000000791"),
            ("signal_type", "spo2"),
            ("location", "Ward 3, bed=7"),
            ("monitor_brand", "Masimo"),
        ],
    );
    assert_eq!(mas["perfusion_index"], json!(2.28));

    let non = by_time_device(ms("2026-11-02T09:29:59Z"), "00000000-0000-4000-8000-000000000124");
    expect_tags(
        &non,
        &[
            ("patient_id", "00000000-0000-4000-8000-000000000457"),
            ("stream_id", "00000000-0000-4000-8000-000000000790"),
        ],
    );
    assert_eq!(non["spo2"], json!(95));
    assert!(rows.iter().all(|r| r.keys().all(|k| !k.contains("name"))), "no name column may exist: {rows:#?}");

    // One type per field, forever: counts are integers, measured quantities floats.
    let keys = influx.query(DB, "SHOW FIELD KEYS FROM vital_signs").await;
    let types: Vec<(String, String)> = keys["results"][0]["series"][0]["values"]
        .as_array()
        .expect("field keys")
        .iter()
        .map(|v| (v[0].as_str().unwrap_or("").to_owned(), v[1].as_str().unwrap_or("").to_owned()))
        .collect();
    for (field, ty) in &types {
        let want = if ["temperature", "perfusion_index"].contains(&field.as_str()) { "float" } else { "integer" };
        assert_eq!(ty, want, "{field}");
    }
    assert_eq!(types.len(), 6, "{types:?}");

    let status = gw.terminate();
    assert!(status.success(), "clean stop: {status:?}\n{}", gw.log());
    let log = gw.log();
    assert!(log.contains("unbound=2"), "two readings had no covering stream:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_write_path_stores_series_tags_values_and_timestamps_in_victoriametrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mqtt = Mosquitto::start();
    let vm = Victoria::start();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cr3t-token\n").expect("token");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod 600");
    let extra = format!("token_file = \"{}\"", token.display());
    let _gw = start_gateway(
        gateway_bin(),
        dir.path(),
        &gateway_toml(dir.path(), &mqtt.url(), &vm.url(), "v2", &example_bindings(), &extra),
    )
    .await;

    let t = ms("2026-11-05T11:00:00.250Z");
    let msgs: Vec<_> = (0..20)
        .map(|i| msg("ABC-001", json!({"ts": t + i * 1000, "heart_rate": 60 + i, "temperature": 36.5})))
        .collect();
    publish_qos1(mqtt.port, &msgs).await;

    let selector = r#"{__name__="vital_signs_heart_rate"}"#;
    eventually(common::WAIT, "20 samples in VictoriaMetrics", || async {
        vm.export(selector).await.iter().map(|s| s["values"].as_array().map_or(0, Vec::len)).sum::<usize>() == 20
    })
    .await;
    let series = vm.export(selector).await;
    assert_eq!(series.len(), 1, "one series: {series:#?}");
    let labels = &series[0]["metric"];
    assert_eq!(labels["stream_id"], json!("00000000-0000-4000-8000-000000000789"));
    assert_eq!(labels["patient_id"], json!("00000000-0000-4000-8000-000000000456"));
    assert_eq!(labels["location"], json!("ICU-5"));
    let values: Vec<f64> = series[0]["values"].as_array().expect("values").iter().filter_map(Value::as_f64).collect();
    assert_eq!(values, (0..20).map(|i| f64::from(60 + i)).collect::<Vec<_>>());
    let stamps: Vec<i64> =
        series[0]["timestamps"].as_array().expect("timestamps").iter().filter_map(Value::as_i64).collect();
    assert_eq!(stamps, (0..20).map(|i| t + i * 1000).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influxdb_outage_then_every_point_arrives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mqtt = Mosquitto::start();
    let mut influx = Influx1::start();
    influx.create_db(DB).await;
    let gw = start_gateway(
        gateway_bin(),
        dir.path(),
        &gateway_toml(dir.path(), &mqtt.url(), &influx.url(), "v1", &example_bindings(), ""),
    )
    .await;

    let t0 = ms("2026-11-06T00:00:00Z");
    let batch = |from: i64, n: i64| -> Vec<_> {
        (from..from + n).map(|i| msg("ABC-001", json!({"ts": t0 + i, "heart_rate": 70}))).collect()
    };
    publish_qos1(mqtt.port, &batch(0, 300)).await;
    wait_count(&influx, 300).await;

    influx.stop();
    publish_qos1(mqtt.port, &batch(300, 1700)).await;
    common::wait_for_log(&gw, "InfluxDB write failed").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    influx.restart();
    wait_count(&influx, 2000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_reading() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mqtt = Mosquitto::start();
    let influx = Influx1::start();
    influx.create_db(DB).await;
    let mut gw = start_gateway(
        gateway_bin(),
        dir.path(),
        &gateway_toml(dir.path(), &mqtt.url(), &influx.url(), "v1", &example_bindings(), ""),
    )
    .await;

    const N: i64 = 6000;
    let t0 = ms("2026-11-07T00:00:00Z");
    let port = mqtt.port;
    let publisher = tokio::spawn(async move {
        for chunk in 0..6 {
            let msgs: Vec<_> = (chunk * 1000..(chunk + 1) * 1000)
                .map(|i| msg("ABC-001", json!({"ts": t0 + i, "spo2": 90 + i % 10})))
                .collect();
            publish_qos1(port, &msgs).await;
        }
    });
    for pause_ms in [150u64, 400, 250] {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        gw.kill9();
        tokio::time::sleep(Duration::from_millis(100)).await;
        gw.restart();
    }
    publisher.await.expect("publisher");
    wait_count(&influx, N as u64).await;
    // Nothing extra either: every point is one of the readings, at its own timestamp.
    let r = influx.query(DB, "SELECT count(spo2), min(spo2), max(spo2) FROM vital_signs").await;
    assert_eq!(r["results"][0]["series"][0]["values"][0][1], json!(N), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tricky_tag_values_arrive_intact_or_by_the_documented_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mqtt = Mosquitto::start();
    let influx = Influx1::start();
    influx.create_db(DB).await;

    let values = [
        "with space",
        "comma, and = equals",
        "quote \"q\" 'single'",
        "back\\slash and \\\\ double",
        "tab\there",
        "ünïcødé 心拍 🫀",
        "trailing backslash\\",
        "new\nline and\r\ncrlf",
        "\\, backslash before comma",
        "ends with space ",
    ];
    let mut file = String::new();
    for (i, v) in values.iter().enumerate() {
        file.push_str(&format!(
            "[[binding]]\nserial = \"T-{i}\"\ndevice_id = \"dev-{i}\"\nstream_id = \"stream-{i}\"\npatient_id = \"patient-{i}\"\norg_id = \"org\"\nsignal_type = \"vital_signs\"\ninflux_bucket = \"{DB}\"\nmeasurement = \"vital_signs\"\n[binding.tags]\nnote = {}\n\n",
            toml_string(v)
        ));
    }
    let bindings = dir.path().join("bindings.toml");
    std::fs::write(&bindings, file).expect("bindings");
    let _gw = start_gateway(
        gateway_bin(),
        dir.path(),
        &gateway_toml(dir.path(), &mqtt.url(), &influx.url(), "v1", &bindings, ""),
    )
    .await;

    let t0 = ms("2026-11-08T00:00:00Z");
    let mut msgs = Vec::new();
    for round in 0..3 {
        for i in 0..values.len() {
            msgs.push(msg(&format!("T-{i}"), json!({"ts": t0 + round, "heart_rate": i})));
        }
    }
    publish_qos1(mqtt.port, &msgs).await;
    wait_count(&influx, (3 * values.len()) as u64).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let rows = influx.rows(DB, "vital_signs").await;
    assert_eq!(rows.len(), 3 * values.len(), "no point split or lost: {rows:#?}");
    for (i, v) in values.iter().enumerate() {
        let mine: Vec<_> = rows.iter().filter(|r| r["device_id"] == json!(format!("dev-{i}"))).collect();
        assert_eq!(mine.len(), 3, "device {i}");
        for r in mine {
            assert_eq!(r["note"], json!(heartguard_gateway::lineproto::carried(v)), "value {v:?}");
            assert_eq!(r["heart_rate"], json!(i), "value {v:?}");
            assert_eq!(r["stream_id"], json!(format!("stream-{i}")));
        }
    }
}

/// A TOML basic string for any text.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_mixed_into_a_good_stream_do_not_cost_a_good_point() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mqtt = Mosquitto::start();
    let influx = Influx1::start();
    influx.create_db(DB).await;
    let mut gw = start_gateway(
        gateway_bin(),
        dir.path(),
        &gateway_toml(dir.path(), &mqtt.url(), &influx.url(), "v1", &example_bindings(), ""),
    )
    .await;

    let t0 = ms("2026-11-09T00:00:00Z");
    let bad: Vec<Vec<u8>> = vec![
        b"garbage".to_vec(),
        Vec::new(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"{}".to_vec(),
        b"\xff\xfe\x00".to_vec(),
        br#"{"heart_rate": "seventy"}"#.to_vec(),
        br#"{"serial": "OTHER", "heart_rate": 70}"#.to_vec(),
        br#"{"ts": "not a time", "heart_rate": 70}"#.to_vec(),
        br#"{"ts": 1, "heart_rate": 70}"#.to_vec(),
        br#"[{"heart_rate": 70, "ts": 1}, 5, "x"]"#.to_vec(),
        format!(r#"{{"heart_rate": 70, "pad": "{}"}}"#, "x".repeat(300 * 1024)).into_bytes(),
    ];
    let mut msgs = Vec::new();
    for i in 0..240i64 {
        msgs.push(msg("ABC-001", json!({"ts": t0 + i, "heart_rate": 60 + i % 40})));
        let b = &bad[i as usize % bad.len()];
        msgs.push(("devices/ABC-001/vitals".to_owned(), b.clone()));
    }
    publish_qos1(mqtt.port, &msgs).await;
    wait_count(&influx, 240).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(influx.count(DB, "vital_signs").await, 240);
    assert!(gw.is_running());
    let status = gw.terminate();
    assert!(status.success());
    let log = gw.log();
    for reason in [
        "invalid_json",
        "empty",
        "not_an_object",
        "invalid_field",
        "serial_mismatch",
        "invalid_timestamp",
        "timestamp_out_of_range",
        "oversized",
        "no_fields",
    ] {
        assert!(log.contains(&format!("{reason}=")), "{reason} counted:\n{log}");
    }
    assert!(!log.contains("seventy"), "payload contents never reach the log");
}

/// A broker that wants a user name and password: a wrong password is refused with a clear
/// error and no data; the right one (from `mqtt.password_file`) logs in and readings flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_logs_in_with_its_user_name_and_password_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwd = dir.path().join("mosquitto.passwd");
    for (i, (user, pw)) in [("gateway", "s3cret-gw"), ("monitor", "s3cret-mon")].into_iter().enumerate() {
        let mut cmd = std::process::Command::new(common::find_binary("mosquitto_passwd"));
        cmd.arg("-b");
        if i == 0 {
            cmd.arg("-c");
        }
        let st = cmd.arg(&passwd).args([user, pw]).status().expect("run mosquitto_passwd");
        assert!(st.success(), "mosquitto_passwd {user}");
    }
    let mqtt = Mosquitto::start_with_config(&format!("allow_anonymous false\npassword_file {}\n", passwd.display()));
    let influx = Influx1::start();
    influx.create_db(DB).await;
    let secret = dir.path().join("mqtt-password");
    common::write_secret(&secret, "not-the-password-7q\n");
    let toml = gateway_toml(dir.path(), &mqtt.url(), &influx.url(), "v1", &example_bindings(), "")
        .replace("[mqtt]\n", &format!("[mqtt]\nusername = \"gateway\"\npassword_file = \"{}\"\n", secret.display()));
    let mut gw = common::Gateway::start(gateway_bin(), dir.path(), &toml);
    common::wait_for_log(&gw, "The MQTT broker refused the gateway's login").await;
    let log = gw.log();
    // Mosquitto 2.0 answers a wrong password with "not authorized" (CONNACK 5), others with 4.
    let reason = log.contains("reason=\"not authorized\"") || log.contains("reason=\"bad user name or password\"");
    assert!(reason && !log.contains("Subscribed."), "{log}");
    assert!(!log.contains("not-the-password-7q"), "the password never reaches the log: {log}");

    common::write_secret(&secret, "s3cret-gw\n");
    gw.terminate();
    gw.restart();
    common::wait_for_log(&gw, "Subscribed.").await;
    let t0 = ms("2026-11-08T00:00:00Z");
    let st = std::process::Command::new(common::find_binary("mosquitto_pub"))
        .args(["-h", "127.0.0.1", "-p", &mqtt.port.to_string(), "-u", "monitor", "-P", "s3cret-mon", "-q", "1"])
        .args(["-t", "devices/ABC-001/vitals", "-m", &json!({"ts": t0, "heart_rate": 61}).to_string()])
        .status()
        .expect("run mosquitto_pub");
    assert!(st.success(), "mosquitto_pub");
    wait_count(&influx, 1).await;
}

/// The broker goes away and comes back (without persistence, so the session is gone): the
/// gateway says so, reconnects, subscribes again, and what is published afterwards arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_reconnects_and_subscribes_again_after_the_broker_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut mqtt = Mosquitto::start();
    let influx = Influx1::start();
    influx.create_db(DB).await;
    let gw = start_gateway(
        gateway_bin(),
        dir.path(),
        &gateway_toml(dir.path(), &mqtt.url(), &influx.url(), "v1", &example_bindings(), ""),
    )
    .await;
    let t0 = ms("2026-11-09T00:00:00Z");
    let batch = |from: i64, n: i64| -> Vec<_> {
        (from..from + n).map(|i| msg("ABC-001", json!({"ts": t0 + i, "heart_rate": 70}))).collect()
    };
    publish_qos1(mqtt.port, &batch(0, 100)).await;
    wait_count(&influx, 100).await;

    mqtt.stop();
    common::wait_for_log(&gw, "MQTT connection lost; reconnecting with back-off.").await;
    mqtt.restart();
    eventually(common::WAIT, "subscribed again", || async { gw.log().matches("Subscribed.").count() >= 2 }).await;
    publish_qos1(mqtt.port, &batch(100, 100)).await;
    wait_count(&influx, 200).await;
    assert_eq!(gw.log().matches("Connected to the MQTT broker.").count(), 2, "{}", gw.log());
}

/// The MQTT packets in `bytes` a client sent: how many are PUBACKs (the rest can only be
/// PINGREQs here).
fn pubacks(bytes: &[u8]) -> usize {
    let (mut n, mut at) = (0, 0);
    while at + 1 < bytes.len() {
        if bytes[at] == 0x40 {
            n += 1;
        }
        at += 2 + usize::from(bytes[at + 1]);
    }
    n
}

/// Messages without `ts` are stamped with their time of receipt. A message committed whose
/// PUBACK never reached the broker is delivered again, with DUP set, after the reconnect: it
/// gets the time of its first receipt, so InfluxDB holds one point per message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_message_without_ts_keeps_its_first_receipt_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mqtt = Mosquitto::start();
    let influx = Influx1::start();
    influx.create_db(DB).await;
    let proxy = common::TcpProxy::start(mqtt.port);
    let via_proxy = format!("mqtt://127.0.0.1:{}", proxy.port);
    let gw = start_gateway(
        gateway_bin(),
        dir.path(),
        &gateway_toml(dir.path(), &via_proxy, &influx.url(), "v1", &example_bindings(), ""),
    )
    .await;

    proxy.swallow_upstream(true);
    let msgs: Vec<_> = (0..3).map(|i| msg("ABC-001", json!({"heart_rate": 70 + i}))).collect();
    publish_qos1(mqtt.port, &msgs).await;
    wait_count(&influx, 3).await;
    eventually(common::WAIT, "three PUBACKs held back by the proxy", || {
        let n = pubacks(&proxy.swallowed());
        async move { n == 3 }
    })
    .await;
    proxy.swallow_upstream(false);
    proxy.cut();

    let base = gw.http_url().await;
    let metric = |series: &'static str| {
        let url = format!("{base}/metrics");
        async move {
            let text = common::http_client().get(&url).send().await.ok()?.text().await.ok()?;
            text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
        }
    };
    eventually(common::WAIT, "the three messages received and delivered again", || async {
        metric(r#"heartguard_ingest_messages_total{source="mqtt",protocol="json"}"#).await == Some(6.0)
            && metric(r#"heartguard_sink_points_delivered_total{destination="heartguard/heartguard_vitals"}"#).await
                == Some(6.0)
    })
    .await;
    let rows = influx.rows(DB, "vital_signs").await;
    assert_eq!(rows.len(), 3, "one point per message: {rows:#?}");
    assert_eq!(gw.log().matches("Connected to the MQTT broker.").count(), 2, "{}", gw.log());
}
