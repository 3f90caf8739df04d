//! Signed binding snapshots over MQTT: the administrator's tools (keygen, sign, publish)
//! against a real Mosquitto and a gateway process; only trusted, newer snapshots apply.

mod common;

use std::path::Path;

use common::{
    DB, Gateway, Influx1, Mosquitto, WAIT, eventually, gateway_cli, msg, publish_qos1, wait_count, wait_for_log,
};
use serde_json::json;

fn keygen(dir: &Path, name: &str) -> (String, String) {
    let key = dir.join(name);
    let (code, out, err) = gateway_cli(&["bindings", "keygen", "--out", &key.display().to_string()]);
    assert_eq!(code, Some(0), "{err}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).expect("key file").permissions());
    assert_eq!(mode & 0o077, 0, "the private key is readable by its owner only");
    (key.display().to_string(), out.trim().to_owned())
}

fn publish(mqtt: &Mosquitto, key: &str, version: u64, bindings: &Path) -> String {
    let (code, out, err) = gateway_cli(&[
        "bindings",
        "publish",
        "--from-file",
        &bindings.display().to_string(),
        "--key",
        key,
        "--gateway",
        "test-gw",
        "--version",
        &version.to_string(),
        "--broker",
        &mqtt.url(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_trusted_newer_signed_snapshots_are_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mqtt, influx) = (Mosquitto::start(), Influx1::start());
    influx.create_db(DB).await;
    let (k1, k1_pub) = keygen(dir.path(), "admin.key");
    let (k2, _) = keygen(dir.path(), "stranger.key");
    let toml = format!(
        r#"
[gateway]
id = "test-gw"
data_dir = "{data}"
[mqtt]
url = "{mqtt}"
[influx]
url = "{influx}"
flush_interval_ms = 100
[bindings]
trusted_keys = ["{k1_pub}"]
"#,
        data = dir.path().join("data").display(),
        mqtt = mqtt.url(),
        influx = influx.url(),
    );
    let gw = Gateway::start(dir.path(), &toml);
    wait_for_log(&gw, "Subscribed.").await;
    let example = common::example_bindings();

    assert!(publish(&mqtt, &k1, 10, &example).contains("Published a signed snapshot"));
    wait_for_log(&gw, "Signed binding snapshot accepted.").await;
    publish_qos1(mqtt.port, &[msg("ABC-001", json!({"ts": chrono::Utc::now().timestamp_millis(), "heart_rate": 72}))])
        .await;
    wait_count(&influx, "vital_signs", 1).await;
    assert_eq!(influx.rows(DB, "vital_signs").await[0]["location"], json!("ICU-5"));

    // A stranger's key, an older version, an unsigned payload, a tampered one: all refused.
    let changed = dir.path().join("changed.toml");
    std::fs::write(&changed, std::fs::read_to_string(&example).expect("read").replace("ICU-5", "ICU-X"))
        .expect("write");
    publish(&mqtt, &k2, 20, &changed);
    publish(&mqtt, &k1, 5, &changed);
    let topic = "heartguard/gateways/test-gw/bindings".to_owned();
    publish_qos1(mqtt.port, &[(topic.clone(), br#"{"bindings": []}"#.to_vec())]).await;
    let (_, env, _) = gateway_cli(&[
        "bindings",
        "sign",
        "--from-file",
        &changed.display().to_string(),
        "--key",
        &k1,
        "--gateway",
        "test-gw",
        "--version",
        "40",
    ]);
    let tampered = env.replace("ICU-X", "ICU-Y");
    publish_qos1(mqtt.port, &[(topic, tampered.trim().as_bytes().to_vec())]).await;
    eventually(WAIT, "four refusals", || {
        let l = gw.log();
        async move {
            ["untrusted_key", "not_newer", "malformed", "bad_signature"]
                .iter()
                .all(|r| l.contains(&format!("reason=\"{r}\"")))
        }
    })
    .await;
    let (_, out, _) = gateway_cli(&["bindings", "list", "--config", &gw.config_path().display().to_string()]);
    assert!(out.contains("source: push v10 key"), "the snapshot in force is still v10: {out}");

    // A newer one from the trusted key applies.
    publish(&mqtt, &k1, 30, &changed);
    eventually(WAIT, "v30 in force", || {
        let (_, out, _) = gateway_cli(&["bindings", "list", "--config", &gw.config_path().display().to_string()]);
        async move { out.contains("source: push v30 key") }
    })
    .await;
    publish_qos1(mqtt.port, &[msg("ABC-001", json!({"ts": chrono::Utc::now().timestamp_millis(), "heart_rate": 73}))])
        .await;
    wait_count(&influx, "vital_signs", 2).await;
    let rows = influx.rows(DB, "vital_signs").await;
    assert!(rows.iter().any(|r| r["location"] == json!("ICU-X")), "{rows:#?}");
}
