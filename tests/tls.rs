//! TLS against real endpoints, with certificates the test makes: Mosquitto with a TLS
//! listener that requires client certificates, nginx terminating TLS (and requiring a client
//! certificate) in front of a real InfluxDB 1.x.

mod common;

use std::path::Path;

use common::{
    DB, Gateway, Influx1, Mosquitto, TestCerts, TlsProxy, example_bindings, free_port, gateway_bin, gateway_cli, msg,
    publish_qos1, wait_count, wait_for_log,
};
use heartguard_gateway::model::Destination;
use heartguard_gateway::sink::config::{Influx, InfluxApi};
use heartguard_gateway::sink::influx::{InfluxClient, outcome::WriteOutcome};
use serde_json::json;

fn tls_config(dir: &Path, mqtt_url: &str, mqtt_ca: &Path, certs: &TestCerts, influx_url: &str) -> String {
    format!(
        r#"
[gateway]
id = "tls-gw"
data_dir = "{data}"
shutdown_grace_ms = 3000

[mqtt]
url = "{mqtt_url}"
ca_file = "{mqtt_ca}"
client_cert_file = "{cert}"
client_key_file = "{key}"

[influx]
url = "{influx_url}"
flush_interval_ms = 100
retry_initial_ms = 100
retry_max_ms = 1000
ca_file = "{ca}"
client_cert_file = "{cert}"
client_key_file = "{key}"

[bindings]
file = "{bindings}"
"#,
        data = dir.join("data").display(),
        mqtt_ca = mqtt_ca.display(),
        ca = certs.ca.display(),
        cert = certs.client_cert.display(),
        key = certs.client_key.display(),
        bindings = example_bindings().display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_travel_over_mqtts_with_a_client_certificate_to_https_influxdb() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = TestCerts::generate();
    let tls_port = free_port();
    let mqtt = Mosquitto::start_tls(&certs, tls_port);
    let influx = Influx1::start();
    influx.create_db(DB).await;
    let proxy = TlsProxy::start(&certs, influx.port);
    let toml = tls_config(dir.path(), &format!("mqtts://127.0.0.1:{tls_port}"), &certs.ca, &certs, &proxy.url());
    let gw = Gateway::start(gateway_bin(), dir.path(), &toml);
    wait_for_log(&gw, "Subscribed.").await;

    let t = common::ms("2026-11-05T10:00:00Z");
    publish_qos1(mqtt.port, &[msg("ABC-001", json!({"ts": t, "heart_rate": 72}))]).await;
    wait_count(&influx, "vital_signs", 1).await;
    assert!(mqtt.log().contains("heartguard-gateway-tls-gw"), "the gateway's session: {}", mqtt.log());
    // nginx logs a request once it has passed the answer on, which can be after InfluxDB
    // already counts the point.
    let write = "\"POST /write?db=heartguard_vitals&precision=ns HTTP/1.1\" 204";
    common::eventually(common::WAIT, "nginx logs the write", || async { proxy.access_log().contains(write) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = TestCerts::generate();
    let tls_port = free_port();
    let _mqtt = Mosquitto::start_tls(&certs, tls_port);
    let toml = tls_config(
        dir.path(),
        &format!("mqtts://127.0.0.1:{tls_port}"),
        &certs.other_ca,
        &certs,
        "https://127.0.0.1:1",
    );
    let gw = Gateway::start(gateway_bin(), dir.path(), &toml);
    wait_for_log(&gw, "Cannot reach the MQTT broker; still trying.").await;
    let log = gw.log();
    assert!(log.contains("UnknownIssuer") && !log.contains("Subscribed."), "{log}");

    // InfluxDB behind nginx, trusted through the wrong CA: the write fails and is retried.
    let influx = Influx1::start();
    let proxy = TlsProxy::start(&certs, influx.port);
    let cfg = Influx {
        url: proxy.url(),
        api: InfluxApi::V1,
        ca_file: Some(certs.other_ca.clone()),
        client_cert_file: Some(certs.client_cert.clone()),
        client_key_file: Some(certs.client_key.clone()),
        ..Influx::default()
    };
    let client = InfluxClient::new(&cfg).expect("client");
    let dest = Destination { org: String::new(), bucket: DB.into() };
    match client.write(&dest, b"m v=1i 1\n".to_vec()).await {
        WriteOutcome::Retry { why, .. } => assert!(why.contains("UnknownIssuer"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn secrets_that_others_may_read_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = TestCerts::generate();
    let key = dir.path().join("client.key");
    std::fs::copy(&certs.client_key, &key).expect("copy");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o640)).expect("chmod");
    let token = dir.path().join("token");
    std::fs::write(&token, "t\n").expect("write");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o604)).expect("chmod");
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[mqtt]\nurl = \"mqtts://127.0.0.1:8883\"\nca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\n\
             [influx]\napi = \"v2\"\ntoken_file = \"{}\"\n",
            certs.ca.display(),
            certs.client_cert.display(),
            key.display(),
            token.display()
        ),
    )
    .expect("write");
    for cmd in ["check-config", "run"] {
        let (code, _, err) = gateway_cli(gateway_bin(), &[cmd, "--config", &cfg.display().to_string()]);
        assert_eq!(code, Some(78), "{cmd}: {err}");
        assert!(
            err.contains(&format!(
                "mqtt.client_key_file: {}: readable by group or others (mode 640); make it readable by the service user only (chmod 600)",
                key.display()
            )),
            "{cmd}: {err}"
        );
        assert!(
            err.contains(&format!("influx.token_file: {}: readable by group or others (mode 604)", token.display())),
            "{cmd}: {err}"
        );
    }

    // mqtts:// needs the CA that signs the broker; TLS files need a TLS URL.
    std::fs::write(&cfg, format!("[mqtt]\nurl = \"mqtts://broker\"\n[influx]\nca_file = \"{}\"\n", certs.ca.display()))
        .expect("write");
    let (code, _, err) = gateway_cli(gateway_bin(), &["check-config", "--config", &cfg.display().to_string()]);
    assert_eq!(code, Some(78));
    assert!(err.contains("mqtt.ca_file: required for mqtts://"), "{err}");
    assert!(err.contains("influx.ca_file: only with an https:// influx.url"), "{err}");
}
