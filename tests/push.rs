//! Signed binding snapshots over MQTT: the administrator's tools (keygen, sign, publish)
//! against a real Mosquitto and a gateway process; only trusted, newer snapshots apply.

mod common;

use std::path::Path;

use common::{
    DB, Gateway, Influx1, Mosquitto, WAIT, eventually, gateway_bin, gateway_cli, msg, publish_qos1, wait_count,
    wait_for_log,
};
use serde_json::json;

fn keygen(dir: &Path, name: &str) -> (String, String) {
    let key = dir.join(name);
    let (code, out, err) = gateway_cli(gateway_bin(), &["bindings", "keygen", "--out", &key.display().to_string()]);
    assert_eq!(code, Some(0), "{err}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).expect("key file").permissions());
    assert_eq!(mode & 0o077, 0, "the private key is readable by its owner only");
    (key.display().to_string(), out.trim().to_owned())
}

fn publish(mqtt: &Mosquitto, key: &str, version: u64, bindings: &Path) -> String {
    let (code, out, err) = gateway_cli(
        gateway_bin(),
        &[
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
        ],
    );
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
    let gw = Gateway::start(gateway_bin(), dir.path(), &toml);
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
    let (_, env, _) = gateway_cli(
        gateway_bin(),
        &[
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
        ],
    );
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
    let (_, out, _) =
        gateway_cli(gateway_bin(), &["bindings", "list", "--config", &gw.config_path().display().to_string()]);
    assert!(out.contains("source: push v10 key"), "the snapshot in force is still v10: {out}");

    // A newer one from the trusted key applies.
    publish(&mqtt, &k1, 30, &changed);
    eventually(WAIT, "v30 in force", || {
        let (_, out, _) =
            gateway_cli(gateway_bin(), &["bindings", "list", "--config", &gw.config_path().display().to_string()]);
        async move { out.contains("source: push v30 key") }
    })
    .await;
    publish_qos1(mqtt.port, &[msg("ABC-001", json!({"ts": chrono::Utc::now().timestamp_millis(), "heart_rate": 73}))])
        .await;
    wait_count(&influx, "vital_signs", 2).await;
    let rows = influx.rows(DB, "vital_signs").await;
    assert!(rows.iter().any(|r| r["location"] == json!("ICU-X")), "{rows:#?}");
}

/// A gateway configuration whose bindings come from signed pushes by `trusted`.
fn push_toml(dir: &Path, mqtt: &Mosquitto, influx: &Influx1, trusted: &str, bindings_extra: &str) -> String {
    format!(
        r#"
[gateway]
id = "test-gw"
data_dir = "{data}"
[mqtt]
url = "{mqtt}"
[influx]
url = "{influx}"
flush_interval_ms = 100
retry_initial_ms = 100
retry_max_ms = 1000
[bindings]
trusted_keys = ["{trusted}"]
{bindings_extra}
"#,
        data = dir.join("data").display(),
        mqtt = mqtt.url(),
        influx = influx.url(),
    )
}

/// The envelope `bindings sign` prints for `bindings` at `version`.
fn sign_cli(key: &str, version: u64, bindings: &Path) -> Vec<u8> {
    let (code, out, err) = gateway_cli(
        gateway_bin(),
        &[
            "bindings",
            "sign",
            "--from-file",
            &bindings.display().to_string(),
            "--key",
            key,
            "--gateway",
            "test-gw",
            "--version",
            &version.to_string(),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    out.trim().as_bytes().to_vec()
}

/// An envelope signed with the library, for snapshots the CLI does not make (an old
/// `created_at`).
fn sign_created_at(key: &str, version: u64, bindings: &Path, created_at: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    use heartguard_gateway::bindings::{file, push::envelope as push};
    let snapshot = push::Snapshot {
        gateway: "test-gw".into(),
        version,
        created_at: created_at.to_rfc3339(),
        bindings: file::load(bindings).expect("bindings file"),
    };
    push::sign(&snapshot, &std::fs::read_to_string(key).expect("key")).expect("sign").into_bytes()
}

fn in_force(gw: &Gateway) -> String {
    let (_, out, _) =
        gateway_cli(gateway_bin(), &["bindings", "list", "--config", &gw.config_path().display().to_string()]);
    out
}

/// The value of one sample of `/metrics` (`name{labels}` exactly as rendered), if present.
async fn metric(gw: &Gateway, series: &str) -> Option<f64> {
    let url = format!("{}/metrics", gw.http_url().await);
    let text = common::http_client().get(&url).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

const TOPIC: &str = "heartguard/gateways/test-gw/bindings";

/// A burst of junk on the push topic, with a few validly signed snapshots among it, against a
/// broker that sends at most 10 messages before it waits for acknowledgements: every one is
/// acknowledged (refused ones at once, counted by reason), the vitals published after the
/// burst arrive, and the newest snapshot is the one in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_the_push_topic_does_not_stall_vitals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mqtt, influx) = (Mosquitto::start_with_config("max_inflight_messages 10\n"), Influx1::start());
    influx.create_db(DB).await;
    let (k1, k1_pub) = keygen(dir.path(), "admin.key");
    let (k2, _) = keygen(dir.path(), "stranger.key");
    let gw = Gateway::start(gateway_bin(), dir.path(), &push_toml(dir.path(), &mqtt, &influx, &k1_pub, ""));
    wait_for_log(&gw, "Subscribed.").await;

    let example = common::example_bindings();
    let changed = dir.path().join("changed.toml");
    std::fs::write(&changed, std::fs::read_to_string(&example).expect("read").replace("ICU-5", "ICU-X"))
        .expect("write");
    let stranger = sign_cli(&k2, 100, &changed);
    let mut tampered = String::from_utf8(sign_cli(&k1, 100, &changed)).expect("utf-8");
    tampered = tampered.replace("ICU-X", "ICU-Y");
    let junk: [&[u8]; 6] = [
        b"junk-payload-marker",
        b"{}",
        b"\xff\xfe\x00",
        br#"{"format": "heartguard-bindings-snapshot/1", "key": "junk-payload-marker"}"#,
        &stranger,
        tampered.as_bytes(),
    ];
    let (mut malformed, mut untrusted, mut bad_signature) = (0, 0, 0);
    let mut burst = Vec::new();
    for i in 0..300 {
        let valid = match i {
            40 => Some(sign_cli(&k1, 10, &example)),
            150 => Some(sign_cli(&k1, 20, &example)),
            260 => Some(sign_cli(&k1, 30, &changed)),
            // Older than one already published: never put in force after v30.
            280 => Some(sign_cli(&k1, 25, &example)),
            _ => None,
        };
        if let Some(v) = valid {
            burst.push((TOPIC.to_owned(), v));
        }
        let j = i % junk.len();
        match j {
            0..=3 => malformed += 1,
            4 => untrusted += 1,
            _ => bad_signature += 1,
        }
        burst.push((TOPIC.to_owned(), junk[j].to_vec()));
    }
    publish_qos1(mqtt.port, &burst).await;
    let now = chrono::Utc::now().timestamp_millis();
    let vitals: Vec<_> = (0..20).map(|i| msg("ABC-001", json!({"ts": now - 20 + i, "heart_rate": 60 + i}))).collect();
    publish_qos1(mqtt.port, &vitals).await;
    wait_count(&influx, "vital_signs", 20).await;

    eventually(WAIT, "v30 in force", || {
        let out = in_force(&gw);
        async move { out.contains("source: push v30 key") }
    })
    .await;
    for (reason, n) in [("malformed", malformed), ("untrusted_key", untrusted), ("bad_signature", bad_signature)] {
        let series = format!(r#"heartguard_bindings_push_refused_total{{reason="{reason}"}}"#);
        eventually(WAIT, &format!("{n} refused as {reason}"), || {
            let series = series.clone();
            let gw = &gw;
            async move { metric(gw, &series).await == Some(f64::from(n)) }
        })
        .await;
    }
    publish_qos1(mqtt.port, &[msg("ABC-001", json!({"ts": now + 1, "heart_rate": 99}))]).await;
    wait_count(&influx, "vital_signs", 21).await;
    let rows = influx.rows(DB, "vital_signs").await;
    assert!(rows.iter().any(|r| r["heart_rate"] == json!(99) && r["location"] == json!("ICU-X")), "{rows:#?}");

    let log = gw.log();
    assert!(!log.contains("junk-payload-marker"), "payload contents never reach the log");
    let lines = log.matches("Refused a pushed binding snapshot").count();
    assert!(lines < 300, "refusals are logged at a limited rate, not each: {lines} lines");
}

/// The highest accepted version is kept apart from the binding cache: after the database is
/// lost, an older validly signed snapshot (here left retained on the broker) is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_cache_does_not_let_an_older_snapshot_back_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mqtt, influx) = (Mosquitto::start(), Influx1::start());
    influx.create_db(DB).await;
    let (k1, k1_pub) = keygen(dir.path(), "admin.key");
    let mut gw = Gateway::start(gateway_bin(), dir.path(), &push_toml(dir.path(), &mqtt, &influx, &k1_pub, ""));
    wait_for_log(&gw, "Subscribed.").await;
    let example = common::example_bindings();
    publish(&mqtt, &k1, 5, &example);
    eventually(WAIT, "v5 in force", || {
        let out = in_force(&gw);
        async move { out.contains("source: push v5 key") }
    })
    .await;
    // An old snapshot replaces the retained one on the broker.
    publish(&mqtt, &k1, 3, &example);
    wait_for_log(&gw, "reason=\"not_newer\"").await;
    assert!(gw.terminate().success());

    let data = dir.path().join("data");
    for f in ["gateway.db", "gateway.db-wal", "gateway.db-shm"] {
        let _ = std::fs::remove_file(data.join(f));
    }
    gw.restart();
    // The retained v3 arrives with the new subscription.
    eventually(WAIT, "v3 refused after the restart", || {
        let refused = gw.log().matches("reason=\"not_newer\"").count() >= 2;
        async move { refused }
    })
    .await;
    let out = in_force(&gw);
    assert!(!out.contains("push v3"), "the older snapshot is not in force: {out}");

    publish(&mqtt, &k1, 6, &example);
    eventually(WAIT, "v6 in force", || {
        let out = in_force(&gw);
        async move { out.contains("source: push v6 key") }
    })
    .await;
}

/// A validly signed snapshot created longer ago than `bindings.push_max_age_hours` (720 by
/// default) is refused, whatever its version; a fresh one is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_older_than_the_age_limit_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mqtt, influx) = (Mosquitto::start(), Influx1::start());
    influx.create_db(DB).await;
    let (k1, k1_pub) = keygen(dir.path(), "admin.key");
    let gw = Gateway::start(gateway_bin(), dir.path(), &push_toml(dir.path(), &mqtt, &influx, &k1_pub, ""));
    wait_for_log(&gw, "Subscribed.").await;
    let example = common::example_bindings();
    let old = chrono::Utc::now() - chrono::Duration::hours(721);
    publish_qos1(mqtt.port, &[(TOPIC.to_owned(), sign_created_at(&k1, 7, &example, old))]).await;
    wait_for_log(&gw, "reason=\"too_old\"").await;
    assert!(!in_force(&gw).contains("push v7"));

    let recent = chrono::Utc::now() - chrono::Duration::hours(719);
    publish_qos1(mqtt.port, &[(TOPIC.to_owned(), sign_created_at(&k1, 8, &example, recent))]).await;
    eventually(WAIT, "v8 in force", || {
        let out = in_force(&gw);
        async move { out.contains("source: push v8 key") }
    })
    .await;
}
