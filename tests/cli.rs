//! The operator's commands: exit codes and what they print.

use std::process::Command;

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_heartguard-gateway"))
}

#[test]
fn example_config_and_bindings_validate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = env!("CARGO_MANIFEST_DIR");
    let out = gateway()
        .args(["check-config", "--config", &format!("{root}/config/heartguard-gateway.toml")])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let cfg = dir.path().join("gw.toml");
    std::fs::write(&cfg, format!("[bindings]\nfile = \"{root}/config/bindings.example.toml\"\n")).expect("write");
    let out = gateway().args(["check-config", "--config"]).arg(&cfg).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 binding(s) valid"));
}

#[test]
fn every_config_problem_is_listed_with_its_key_and_exit_78() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("gw.toml");
    std::fs::write(&cfg, "[gateway]\nid = \"\"\n[mqtt]\nurl = \"tcp://x\"\n[influx]\napi = \"v2\"\n").expect("write");
    let out = gateway().args(["check-config", "--config"]).arg(&cfg).output().expect("run");
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["gateway.id", "mqtt.url", "influx.token_file"] {
        assert!(err.contains(key), "{key} named in:\n{err}");
    }

    std::fs::write(&cfg, "[mqtt]\nurll = \"x\"\n").expect("write");
    let out = gateway().args(["run", "--config"]).arg(&cfg).output().expect("run");
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("urll"));
}

#[test]
fn bad_bindings_file_is_refused_with_each_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = dir.path().join("b.toml");
    std::fs::write(
        &b,
        "[[binding]]\nserial = \"A\"\ndevice_id = \"d\"\nstream_id = \"s\"\npatient_id = \"p\"\nsignal_type = \"x\"\ninflux_bucket = \"b\"\nmeasurement = \"_m\"\n[binding.tags]\npatient_name = \"Juan\"\n",
    )
    .expect("write");
    let cfg = dir.path().join("gw.toml");
    std::fs::write(&cfg, format!("[bindings]\nfile = \"{}\"\n", b.display())).expect("write");
    let out = gateway().args(["check-config", "--config"]).arg(&cfg).output().expect("run");
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("measurement") && err.contains("tags.patient_name"), "{err}");
    assert!(!err.contains("Juan"), "a refused value is not echoed: {err}");
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    assert_eq!(gateway().arg("frobnicate").output().expect("run").status.code(), Some(64));
    assert_eq!(gateway().arg("--help").output().expect("run").status.code(), Some(0));
}

#[test]
fn default_config_is_valid_toml_for_the_daemon() {
    let out = gateway().arg("default-config").output().expect("run");
    assert!(out.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("gw.toml");
    std::fs::write(&cfg, &out.stdout).expect("write");
    let out = gateway().args(["check-config", "--config"]).arg(&cfg).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn dead_letters_can_be_listed_exported_replayed_and_purged() {
    use heartguard_gateway::model::Destination;
    use heartguard_gateway::queue::dead_letters::DeadLetterReason;
    use heartguard_gateway::queue::handle::QueueHandle;
    use heartguard_gateway::queue::points::NewPoint;
    use heartguard_gateway::queue::{Limits, Synchronous};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    {
        let (q, join) = QueueHandle::open(&data, Synchronous::Full, Limits::default()).expect("queue");
        let d = q.destination_id(Destination { org: String::new(), bucket: "db".into() }).await.expect("dest");
        q.append(
            (0..4).map(|i| NewPoint { dest_id: d, line: format!("m v={i}i {i}"), ..Default::default() }).collect(),
        )
        .await
        .expect("append");
        let rows = q.lease(d, 10, usize::MAX).await.expect("lease");
        q.dead_letter(d, vec![rows[0].id, rows[1].id], DeadLetterReason::Rejected, Some(400), "bad line".into())
            .await
            .expect("dead");
        q.dead_letter(d, vec![rows[2].id], DeadLetterReason::TooLarge, Some(413), "big".into()).await.expect("dead");
        q.close().await.expect("close");
        join.join().expect("thread");
    }
    let cfg = dir.path().join("gw.toml");
    std::fs::write(&cfg, format!("[gateway]\ndata_dir = \"{}\"\n", data.display())).expect("write");
    let run = |args: &[&str]| {
        let out = gateway().args(args).arg("--config").arg(&cfg).output().expect("run");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, out) = run(&["dead-letters", "list"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("# rejected: 2") && out.contains("# too_large: 1"), "{out}");
    let (_, out) = run(&["dead-letters", "export", "--reason", "too_large"]);
    assert_eq!(out.lines().count(), 1);
    assert!(out.contains("\"line\":\"m v=2i 2\""), "{out}");
    assert_eq!(run(&["dead-letters", "purge"]).0, Some(1), "purging everything needs --all");
    let (code, out) = run(&["dead-letters", "purge", "--reason", "too_large"]);
    assert_eq!((code, out.trim()), (Some(0), "1 dead letter(s) deleted."));
    let (code, out) = run(&["dead-letters", "replay"]);
    assert_eq!((code, out.trim()), (Some(0), "2 dead letter(s) moved back into the queue."));
    let (_, out) = run(&["queue", "stats"]);
    assert!(out.contains("points waiting: 3"), "{out}");
}
