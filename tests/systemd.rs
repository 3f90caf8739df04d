//! The systemd unit (verified and rated by `systemd-analyze`) and the notifications the
//! gateway sends on a real notify socket: READY, STATUS, WATCHDOG (only while healthy),
//! STOPPING.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Gateway, gateway_bin};

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/heartguard-gateway.service");

/// The unit with `ExecStart` pointing at the binary under test (verify checks it exists).
fn unit_for_test(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(UNIT).expect("read the unit");
    let text = text.replace("/usr/bin/heartguard-gateway", env!("CARGO_BIN_EXE_heartguard-gateway"));
    let path = dir.join("heartguard-gateway.service");
    std::fs::write(&path, text).expect("write the unit");
    path
}

#[test]
fn unit_verifies_cleanly_and_is_hardened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = unit_for_test(dir.path());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian package systemd, installed by .ci/run)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");

    let out = Command::new("systemd-analyze").args(["security", "--offline=yes"]).arg(&unit).output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for heartguard-gateway.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}{}", String::from_utf8_lossy(&out.stderr)));
    assert!(exposure <= 2.0, "exposure {exposure} (README says 1.5):\n{text}");

    let unit = std::fs::read_to_string(UNIT).expect("read");
    for line in
        ["Type=notify", "NotifyAccess=main", "WatchdogSec=30", "Restart=always", "ExecReload=/bin/kill -HUP $MAINPID"]
    {
        assert!(unit.lines().any(|l| l == line), "{line} in the unit");
    }
}

/// Collects what the gateway sends to a notify socket, with arrival times.
struct NotifySocket {
    path: std::path::PathBuf,
    got: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::downgrade(&got);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                let r = sock.recv(&mut buf);
                let Some(got) = sink.upgrade() else { return };
                if let Ok(n) = r {
                    got.lock().expect("lock").push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
                }
            }
        });
        Self { path, got }
    }

    fn messages(&self) -> Vec<(Instant, String)> {
        self.got.lock().expect("lock").clone()
    }

    /// Waits until a message contains `what`; returns when it arrived.
    fn wait_for(&self, what: &str, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            if let Some((t, _)) = self.messages().iter().find(|(_, m)| m.contains(what)) {
                return *t;
            }
            assert!(Instant::now() < deadline, "no {what:?} within {within:?}: {:?}", self.messages());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn count_between(&self, what: &str, from: Instant, to: Instant) -> usize {
        self.messages().iter().filter(|(t, m)| *t >= from && *t < to && m.contains(what)).count()
    }
}

/// A gateway with no InfluxDB (its sink retries) and, without `mqtt`, no broker either:
/// every stage still beats.
fn start(dir: &Path, notify: &NotifySocket, mqtt: Option<&common::Mosquitto>) -> Gateway {
    let toml = format!(
        "[gateway]\nid = \"notify-test\"\ndata_dir = \"{}\"\nshutdown_grace_ms = 3000\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n[influx]\nurl = \"http://127.0.0.1:{}\"\n",
        dir.join("data").display(),
        mqtt.map_or_else(common::free_port, |m| m.port),
        common::free_port(),
    );
    let socket = notify.path.display().to_string();
    // A 1 s watchdog: fed every 500 ms while healthy.
    Gateway::start_with_env(gateway_bin(), dir, &toml, &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "1000000")])
}

#[test]
fn notifies_ready_then_feeds_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let notify = NotifySocket::bind(dir.path());
    let mut gw = start(dir.path(), &notify, None);
    let ready = notify.wait_for("READY=1", Duration::from_secs(30));
    let first = &notify.messages()[0].1;
    assert!(first.contains("READY=1\n") && first.contains("STATUS=0 points waiting; 0 bindings (none)"), "{first:?}");
    std::thread::sleep(Duration::from_secs(3));
    let fed = notify.count_between("WATCHDOG=1", ready, Instant::now());
    assert!(fed >= 4, "fed {fed} times in 3 s: {:?}", notify.messages());

    assert!(gw.terminate().success());
    let stopping = notify.wait_for("STOPPING=1", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(notify.count_between("WATCHDOG=1", stopping, Instant::now()), 0, "not fed after STOPPING");
}

#[test]
fn watchdog_starves_while_the_queue_does_not_answer_and_resumes_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let notify = NotifySocket::bind(dir.path());
    let mqtt = common::Mosquitto::start();
    let gw = start(dir.path(), &notify, Some(&mqtt));
    notify.wait_for("READY=1", Duration::from_secs(30));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(common::wait_for_log(&gw, "Subscribed."));

    // Another process holds the database's write lock: the store thread blocks in SQLite's
    // busy handler on the next commit (a reading arrives), again and again, and stops
    // answering.
    let db = rusqlite::Connection::open(dir.path().join("data/gateway.db")).expect("open");
    db.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let locked = Instant::now();
    let reading = common::msg("ABC-001", serde_json::json!({"heart_rate": 72}));
    rt.block_on(common::publish_qos1(mqtt.port, std::slice::from_ref(&reading)));
    let unhealthy = notify.wait_for("STATUS=UNHEALTHY: queue: no answer", Duration::from_secs(30));
    assert!(unhealthy > locked);
    // While the store did not answer, the watchdog was not fed: the feeds around the stall
    // are seconds apart instead of 500 ms.
    let feeds: Vec<Instant> =
        notify.messages().iter().filter(|(_, m)| m.contains("WATCHDOG=1")).map(|(t, _)| *t).collect();
    let before = feeds.iter().rev().find(|t| **t < unhealthy).copied().expect("fed before the stall");
    assert!(unhealthy - before >= Duration::from_millis(2500), "fed {:?} before UNHEALTHY", unhealthy - before);

    db.execute_batch("COMMIT").expect("unlock");
    let released = Instant::now();
    let deadline = released + Duration::from_secs(15);
    while notify.count_between("WATCHDOG=1", released, Instant::now()) < 3 {
        assert!(Instant::now() < deadline, "not fed again after the lock went: {:?}", notify.messages());
        std::thread::sleep(Duration::from_millis(100));
    }
}
