//! Device clocks ahead of the gateway's: readings stamped further ahead than
//! `clock.future_tolerance_ms` are refused, counted and logged by device, for HL7 over MLLP and
//! MQTT JSON alike (Mosquitto, the gateway process, a real InfluxDB 1.x).

mod common;

use std::path::{Path, PathBuf};

use common::{
    DB, Gateway, Influx1, Mosquitto, WAIT, eventually, free_port, gateway_bin, publish_qos1, wait_count, wait_for_log,
};
use heartguard_gateway::protocols::hl7;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MONITOR: &str = "00A0B1FFFEC2D3E4";
const OXIMETER: &str = "OXI-CLOCK-1";

fn bindings(dir: &Path) -> PathBuf {
    let mut text = String::new();
    for s in [MONITOR, OXIMETER] {
        text.push_str(&format!(
            "[[binding]]\nserial = \"{s}\"\ndevice_id = \"dev-{s}\"\nstream_id = \"stream-{s}\"\npatient_id = \"patient-of-{s}\"\nsignal_type = \"vital_signs\"\ninflux_bucket = \"{DB}\"\nmeasurement = \"vital_signs\"\n\n"
        ));
    }
    let path = dir.join("bindings.toml");
    std::fs::write(&path, text).expect("write bindings");
    path
}

async fn send_hl7(stream: &mut tokio::net::TcpStream, msg: &[u8]) -> String {
    stream.write_all(&hl7::mllp::frame_mllp(msg)).await.expect("send HL7");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !got.ends_with(&[0x1C, 0x0D]) {
            let n = stream.read(&mut buf).await.expect("read ACK");
            assert!(n > 0, "connection closed without an ACK");
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(WAIT, read).await.expect("an ACK within the patience");
    hl7::ack::parse_ack(&got[1..got.len() - 2]).expect("an MSA segment").0
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_stamped_ahead_of_the_gateway_clock_are_refused_counted_and_logged_by_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mqtt = Mosquitto::start();
    let influx = Influx1::start();
    influx.create_db(DB).await;
    let hl7_port = free_port();
    let toml = format!(
        "{}\n[hl7]\nenabled = true\nlisten = \"127.0.0.1:{hl7_port}\"\n",
        common::gateway_toml(dir.path(), &mqtt.url(), &influx.url(), "v1", &bindings(dir.path()), "")
    );
    let gw = Gateway::start(gateway_bin(), dir.path(), &toml);
    wait_for_log(&gw, "Subscribed.").await;
    wait_for_log(&gw, "HL7 MLLP listener ready.").await;

    // The default tolerance is 2 min: 30 s ahead passes, 10 min ahead is a wrong clock.
    let now = chrono::Utc::now();
    let (near, far) = (now + chrono::Duration::seconds(30), now + chrono::Duration::minutes(10));
    let hl7_time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y%m%d%H%M%S+0000").to_string();
    let oru = |control: &str, t, hr| {
        hl7::build::build_oru(
            MONITOR,
            control,
            &hl7_time(t),
            &hl7_time(t),
            &hl7::build::Vitals { heart_rate: Some(hr), ..Default::default() },
        )
    };
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", hl7_port)).await.expect("connect");
    assert_eq!(send_hl7(&mut tcp, &oru("F1", far, 72)).await, "AA");
    assert_eq!(send_hl7(&mut tcp, &oru("F2", near, 73)).await, "AA");
    publish_qos1(
        mqtt.port,
        &[
            common::msg(OXIMETER, json!({"ts": far.timestamp_millis(), "spo2": 90})),
            common::msg(OXIMETER, json!({"ts": near.timestamp_millis(), "spo2": 91})),
        ],
    )
    .await;

    wait_count(&influx, "vital_signs", 2).await;
    let rows = influx.rows(DB, "vital_signs").await;
    let values: Vec<(&serde_json::Value, &serde_json::Value)> = rows
        .iter()
        .map(|r| (&r["device_id"], if r["heart_rate"].is_null() { &r["spo2"] } else { &r["heart_rate"] }))
        .collect();
    assert!(values.contains(&(&json!(format!("dev-{MONITOR}")), &json!(73))), "{rows:#?}");
    assert!(values.contains(&(&json!(format!("dev-{OXIMETER}")), &json!(91))), "{rows:#?}");

    let url = format!("{}/metrics", gw.http_url().await);
    eventually(WAIT, "one refusal counted per protocol", || async {
        let text = common::http_client().get(&url).send().await.expect("GET").text().await.expect("body");
        sample(&text, r#"heartguard_decode_device_clock_ahead_total{protocol="hl7"}"#) == Some(1.0)
            && sample(&text, r#"heartguard_decode_device_clock_ahead_total{protocol="json"}"#) == Some(1.0)
    })
    .await;
    // Each device is named in the log with how far ahead its clock is (about 600 s).
    let log = gw.log();
    for serial in [MONITOR, OXIMETER] {
        let line = log
            .lines()
            .find(|l| l.contains("Device clock ahead") && l.contains(&format!("device={serial}")))
            .unwrap_or_else(|| panic!("no clock warning naming {serial} in:\n{log}"));
        let ahead: f64 = line
            .split("ahead_s=")
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no ahead_s in {line}"));
        assert!((540.0..=660.0).contains(&ahead), "{line}");
    }
}
