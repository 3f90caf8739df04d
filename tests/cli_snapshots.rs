//! Snapshots of what an operator reads: `check-config` and `status` output, whole, with only
//! temporary paths and ages replaced by placeholders.

use std::process::Command;

use heartguard_gateway::model::Destination;
use heartguard_gateway::queue::dead_letters::DeadLetterReason;
use heartguard_gateway::queue::handle::QueueHandle;
use heartguard_gateway::queue::points::NewPoint;
use heartguard_gateway::queue::{Limits, Synchronous};

fn gateway(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_heartguard-gateway")).args(args).output().expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Replaces `dir` by `$DIR`, and the variable part of `<from>… <to>` spans by `<age>`.
fn normalize(text: &str, dir: &std::path::Path) -> String {
    let mut out = text.replace(&dir.display().to_string(), "$DIR");
    for (from, to) in [("oldest queued ", " ago"), ("was queued ", " ago"), ("in force for ", ";")] {
        let mut done = String::new();
        let mut rest = out.as_str();
        while let Some(i) = rest.find(from) {
            let after = &rest[i + from.len()..];
            let Some(j) = after.find(to) else { break };
            done.push_str(&rest[..i + from.len()]);
            done.push_str("<age>");
            rest = &after[j..];
        }
        done.push_str(rest);
        out = done;
    }
    out
}

#[test]
fn check_config_lists_every_problem_with_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        "[gateway]\nid = \"ward 3\"\n[mqtt]\nkeep_alive_secs = 1\n[influx]\napi = \"v2\"\nbatch_max_lines = 0\n[http]\nlisten = \"localhost\"\n",
    )
    .expect("write");
    let (code, out, err) = gateway(&["check-config", "--config", &cfg.display().to_string()]);
    assert_eq!((code, out.as_str()), (Some(78), ""));
    assert_eq!(
        normalize(&err, dir.path()),
        "\
$DIR/gw.toml: 5 problem(s):
  gateway.id: 1 to 64 characters: letters, digits, '-', '_', '.'
  mqtt.keep_alive_secs: between 2 and 65535
  influx.token_file: required for api = \"v2\"
  influx.batch_max_lines: between 1 and 100000
  http.listen: \"localhost\" is not an address:port (for example \"127.0.0.1:9187\")
"
    );
}

#[test]
fn check_config_of_a_good_file_says_what_it_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("gw.toml");
    let bindings = concat!(env!("CARGO_MANIFEST_DIR"), "/config/bindings.example.toml");
    std::fs::write(&cfg, format!("[bindings]\nfile = \"{bindings}\"\n[http]\nlisten = \"[::1]:9187\"\n"))
        .expect("write");
    let (code, out, err) = gateway(&["check-config", "--config", &cfg.display().to_string()]);
    assert_eq!((code, err.as_str()), (Some(0), ""));
    assert_eq!(
        normalize(&out, dir.path()).replace(env!("CARGO_MANIFEST_DIR"), "$REPO"),
        "\
$REPO/config/bindings.example.toml: 3 binding(s) valid.
$DIR/gw.toml: configuration valid.
"
    );
}

#[tokio::test]
async fn status_without_a_daemon_reads_the_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    {
        let (q, join) = QueueHandle::open(&data, Synchronous::Full, Limits::default()).expect("queue");
        let a =
            q.destination_id(Destination { org: "heartguard".into(), bucket: "vitals".into() }).await.expect("dest");
        let b = q.destination_id(Destination { org: String::new(), bucket: "archive/30d".into() }).await.expect("dest");
        let now = heartguard_gateway::now_ns();
        let point = |dest_id, i: i64| NewPoint {
            dest_id,
            line: format!("m v={i}i {i}"),
            enqueued_ns: now - 120_000_000_000,
            stream_key: 0,
            ts_ns: i,
        };
        q.append((0..3).map(|i| point(a, i)).chain([point(b, 9)]).collect()).await.expect("append");
        let rows = q.lease(a, 1, usize::MAX).await.expect("lease");
        q.dead_letter(a, vec![rows[0].id], DeadLetterReason::Rejected, Some(400), "bad".into()).await.expect("dead");
        let example = heartguard_gateway::bindings::file::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/bindings.example.toml"
        )))
        .expect("bindings");
        q.replace_bindings(example, "file /etc/x.toml".into(), "0123abcd".into()).await.expect("bindings");
        q.close().await.expect("close");
        join.join().expect("thread");
    }
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!("[gateway]\nid = \"ward3\"\ndata_dir = \"{}\"\n[http]\nenabled = false\n", data.display()),
    )
    .expect("write");
    let (code, out, err) = gateway(&["status", "--config", &cfg.display().to_string()]);
    assert_eq!(code, Some(0), "{err}");
    let db_size = out.split("; database ").nth(1).and_then(|r| r.split(';').next()).expect("database size").to_owned();
    assert_eq!(
        normalize(&out, dir.path()).replace(&db_size, "<size>"),
        format!(
            "\
(daemon not reachable: the HTTP endpoint is disabled (http.enabled = false))
heartguard-gateway {v} — gateway ward3: daemon not reachable: figures from the database only
Queue        3 points waiting (27 B), oldest queued <age> ago; 0 parked (0 B); database <size>; 1 dead letter(s) (11 B)
Destination  heartguard/vitals: -, 2 waiting
Destination  archive/30d: -, 1 waiting
Bindings     3 from file, version 0123abcd, in force for <age>; 0 sync error(s)
Warnings
  - The oldest waiting point was queued <age> ago: delivery is behind or InfluxDB is unreachable.
  - 1 dead letter(s): see `heartguard-gateway dead-letters list`.
",
            v = env!("CARGO_PKG_VERSION")
        )
    );
}
