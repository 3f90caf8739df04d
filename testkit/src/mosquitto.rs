//! A private Mosquitto broker.

use std::path::Path;

use tempfile::TempDir;

use crate::certs::TestCerts;
use crate::http::tcp_accepts;
use crate::ports::free_port;
use crate::process::{ServerProcess, find_binary};

/// A private Mosquitto 2.x broker on a free loopback port (never the system one on
/// 1883). No persistence: stopping it loses every queued message.
pub struct Mosquitto {
    pub port: u16,
    process: ServerProcess,
    dir: TempDir,
}

impl Mosquitto {
    /// Starts the broker and waits until it accepts TCP connections.
    pub fn start() -> Self {
        Self::start_with(|_| String::new())
    }

    /// Like `start`, with a second listener: TLS on `tls_port`, the server certificate of
    /// `certs`, and clients required to show a certificate signed by its CA.
    pub fn start_tls(certs: &TestCerts, tls_port: u16) -> Self {
        Self::start_with(|_| {
            format!(
                "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
                certs.ca.display(),
                certs.server_cert.display(),
                certs.server_key.display()
            )
        })
    }

    /// Like `start`, with `extra` configuration lines after the defaults (a later line
    /// overrides an earlier one, e.g. `max_inflight_messages 1000`).
    pub fn start_with_config(extra: &str) -> Self {
        Self::start_with(|_| extra.to_owned())
    }

    /// Starts the broker with `extra` configuration lines after the defaults.
    fn start_with(extra: impl FnOnce(&Path) -> String) -> Self {
        let dir = TempDir::new().expect("create temp dir for mosquitto");
        let port = free_port();
        let log = dir.path().join("mosquitto.log");
        let config = dir.path().join("mosquitto.conf");
        // Mosquitto's config format has no quoting; a temp dir path has no spaces.
        let text = format!(
            "# Written by testkit/src/mosquitto.rs\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence false\n\
             # 0 = no limit: the gateway uses a persistent session, and while it is\n\
             # down the broker must keep every QoS 1 message for it.\n\
             max_queued_messages 0\n\
             max_queued_bytes 0\n\
             max_inflight_messages 100\n\
             # Started as root (CI), Mosquitto 2 switches to user `mosquitto`, which\n\
             # cannot write the log in our 0700 temp dir. `user root` keeps the\n\
             # current user; it has no effect when not started as root.\n\
             user root\n\
             log_dest file {log}\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             log_type information\n\
             connection_messages true\n\
             log_timestamp_format %Y-%m-%dT%H:%M:%S\n{extra}",
            log = log.display(),
            extra = extra(dir.path()),
        );
        std::fs::write(&config, text).expect("write mosquitto.conf");
        let process = ServerProcess::new(
            "mosquitto",
            find_binary("mosquitto"),
            vec!["-c".into(), config.display().to_string()],
            dir.path(),
            Some(log),
        );
        let mut broker = Mosquitto { port, process, dir };
        broker.spawn_and_wait();
        broker
    }

    fn spawn_and_wait(&mut self) {
        self.process.spawn();
        let port = self.port;
        self.process.wait_until("TCP connect succeeds", || tcp_accepts(port));
    }

    /// `mqtt://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the broker (SIGKILL); queued messages are lost (no persistence).
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts the broker again on the same port (after `stop`).
    pub fn restart(&mut self) {
        self.process.kill();
        self.spawn_and_wait();
    }

    /// The broker's own log (connections, disconnections, errors).
    pub fn log(&self) -> String {
        std::fs::read(self.dir.path().join("mosquitto.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}
