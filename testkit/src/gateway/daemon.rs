//! The gateway daemon as a child process: its configuration file, its logs across restarts,
//! SIGKILL and SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::process::{kill_and_wait, log_stdio, send_sigterm};
use crate::wait::{WAIT, eventually};

/// The `heartguard-gateway` daemon, started as `run --config DIR/gateway.toml`.
///
/// Each (re)start logs (stdout and stderr) to `DIR/gateway-N.log`, N = 1, 2, …, so a
/// restart keeps the earlier logs. On drop the process is killed; if the test is
/// panicking, every log is printed to stderr first, so a failing test shows what the
/// daemon said.
pub struct Gateway {
    binary: PathBuf,
    dir: PathBuf,
    config_path: PathBuf,
    child: Option<Child>,
    starts: u32,
    /// Extra environment of every (re)start (`NOTIFY_SOCKET`, …).
    env: Vec<(String, String)>,
}

impl Gateway {
    /// Writes `dir/gateway.toml` and starts `binary` (the tests pass the one Cargo built
    /// for them). Does not wait for anything: wait for a log line or an effect with
    /// `eventually`.
    pub fn start(binary: &Path, dir: &Path, config_toml: &str) -> Self {
        Self::start_with_env(binary, dir, config_toml, &[])
    }

    /// Like `start`, with extra environment variables for the gateway process.
    pub fn start_with_env(binary: &Path, dir: &Path, config_toml: &str, env: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let config_path = dir.join("gateway.toml");
        // Gateways of parallel tests cannot all take the default port 9187: a config without
        // an [http] table listens on port 0 (find it with `http_url`).
        let config_toml = if config_toml.contains("[http]") {
            config_toml.to_owned()
        } else {
            format!("{config_toml}\n# Added by the test harness.\n[http]\nlisten = \"127.0.0.1:0\"\n")
        };
        std::fs::write(&config_path, config_toml).unwrap_or_else(|e| panic!("write {}: {e}", config_path.display()));
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let mut gw =
            Gateway { binary: binary.to_owned(), dir: dir.to_owned(), config_path, child: None, starts: 0, env };
        gw.spawn();
        gw
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "gateway is still running: kill9() or terminate() it before restart()");
        self.starts += 1;
        let log = self.log_path(self.starts);
        let (out, err) = log_stdio(&log);
        let child = Command::new(&self.binary)
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(&self.dir)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            // Plain text logs: no ANSI colours in the log files.
            .env("RUST_LOG_STYLE", "never")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn gateway {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.dir.join(format!("gateway-{n}.log"))
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The directory given to `start` (config and logs live there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Process id of the running gateway, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL (a crash, a power cut) and wait for the process.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_wait(&mut child);
        }
    }

    /// SIGTERM and wait up to 20 s for a clean exit; returns the exit status. If it
    /// is still running after 20 s it gets SIGKILL and the test panics.
    pub fn terminate(&mut self) -> ExitStatus {
        self.terminate_within(Duration::from_secs(20))
    }

    /// `terminate` with another grace period.
    pub fn terminate_within(&mut self, grace: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("terminate(): the gateway is not running");
        send_sigterm(&child);
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    kill_and_wait(&mut child);
                    panic!("gateway did not exit within {grace:?} of SIGTERM (killed it)");
                }
                Err(e) => panic!("wait for gateway: {e}"),
            }
        }
    }

    /// Starts the gateway again with the same config (after `kill9`/`terminate`).
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Everything every run of the gateway wrote so far, in order.
    pub fn log(&self) -> String {
        let mut all = String::new();
        for n in 1..=self.starts {
            if let Ok(bytes) = std::fs::read(self.log_path(n)) {
                all.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
        all
    }

    /// `http://ADDR` of the running gateway's HTTP endpoint, from its current log (the test
    /// configs listen on port 0). Waits for the endpoint to be announced.
    pub async fn http_url(&self) -> String {
        const MARK: &str = "HTTP endpoint listening";
        let log = self.log_path(self.starts);
        let mut found = None;
        eventually(WAIT, "the gateway announces its HTTP endpoint", || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            found = text
                .lines()
                .rev()
                .find(|l| l.contains(MARK))
                .and_then(|l| l.split("addr=").nth(1))
                .and_then(|a| a.split_whitespace().next())
                .map(str::to_owned);
            let ok = found.is_some();
            async move { ok }
        })
        .await;
        format!("http://{}", found.expect("announced"))
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(child) => matches!(child.try_wait(), Ok(None)),
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let mut msg = String::new();
            for n in 1..=self.starts {
                let path = self.log_path(n);
                let text = std::fs::read(&path)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_else(|e| format!("(cannot read: {e})\n"));
                msg.push_str(&format!("===== {} =====\n{text}", path.display()));
                if !msg.ends_with('\n') {
                    msg.push('\n');
                }
            }
            eprintln!("{msg}===== end of gateway logs =====");
        }
    }
}
