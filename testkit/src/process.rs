//! Server processes: finding the binary, starting it with its output in a log file, waiting
//! until it is ready, and killing it. Shared by every server of the toolkit and the gateway.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to start answering before the test fails.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How many log lines a startup failure shows.
const LOG_TAIL_LINES: usize = 40;

/// Finds a server binary: first on `PATH`, then at the usual Debian locations
/// (`/usr/sbin` is not on a non-root user's `PATH`, and Mosquitto lives there).
pub fn find_binary(name: &str) -> PathBuf {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&path_var).map(|dir| dir.join(name));
    let usual =
        ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"].iter().map(|dir| Path::new(dir).join(name));
    on_path.chain(usual).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "`{name}` not found on PATH or in /usr/sbin, /usr/bin: install the Debian \
             packages listed in .ci/run (mosquitto, influxdb, victoria-metrics)"
        )
    })
}

/// Opens `path` for the child's stdout and a clone for its stderr, so both end up
/// in one file in the order they were written.
pub(crate) fn log_stdio(path: &Path) -> (Stdio, Stdio) {
    let file = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let clone = file.try_clone().unwrap_or_else(|e| panic!("clone handle of {}: {e}", path.display()));
    (Stdio::from(file), Stdio::from(clone))
}

/// The last `lines` lines of a file (lossy UTF-8), or a note why there are none.
fn tail_of_file(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            format!("---- last {} lines of {} ----\n{}\n", all.len() - from, path.display(), all[from..].join("\n"))
        }
        Err(e) => format!("---- {}: cannot read: {e} ----\n", path.display()),
    }
}

/// SIGKILL (through `Child::kill`) and reap, ignoring "already exited".
pub(crate) fn kill_and_wait(child: &mut Child) {
    // `kill` fails only if the process was already reaped; `wait` then returns the
    // cached status. Either way nothing is left running afterwards.
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends SIGTERM through the `kill` command (no libc needed).
pub(crate) fn send_sigterm(child: &Child) {
    // A non-zero exit status means the process is already gone; the caller's wait
    // sees that, so only failing to run `kill` at all is an error.
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run `kill -TERM`");
}

/// A server child process with its log files, killed on drop.
pub(crate) struct ServerProcess {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    /// Where the first run's stdout+stderr go; later runs: see `out_path`.
    stdout_log: PathBuf,
    /// Extra log file the server writes itself (Mosquitto's `log_dest file`).
    own_log: Option<PathBuf>,
    pub(crate) child: Option<Child>,
    starts: u32,
}

impl ServerProcess {
    pub(crate) fn new(
        name: &'static str,
        program: PathBuf,
        args: Vec<String>,
        dir: &Path,
        own_log: Option<PathBuf>,
    ) -> Self {
        ServerProcess {
            name,
            program,
            args,
            stdout_log: dir.join(format!("{name}.out")),
            own_log,
            child: None,
            starts: 0,
        }
    }

    /// Output file of run number `n` (1-based): `NAME.out`, then `NAME.out.2`, …
    /// so a restart does not overwrite what the previous run said.
    fn out_path(&self, n: u32) -> PathBuf {
        if n <= 1 {
            self.stdout_log.clone()
        } else {
            let mut name = self.stdout_log.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        }
    }

    pub(crate) fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.starts += 1;
        let (out, err) = log_stdio(&self.out_path(self.starts));
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} ({}): {e}", self.name, self.program.display()));
        self.child = Some(child);
    }

    /// Tail of every log of the current run, for panic messages.
    pub(crate) fn log_tail(&self) -> String {
        let mut s = tail_of_file(&self.out_path(self.starts), LOG_TAIL_LINES);
        if let Some(own) = &self.own_log {
            s.push_str(&tail_of_file(own, LOG_TAIL_LINES));
        }
        s
    }

    /// Polls `ready` every 50 ms until it returns true; panics with the log tail if
    /// the process exits or `STARTUP_TIMEOUT` passes first.
    pub(crate) fn wait_until(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if ready() {
                return;
            }
            let child = self.child.as_mut().expect("wait_until on a running server");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                panic!(
                    "{} exited during startup ({status}) before {what}; command: {} {}\n{}",
                    self.name,
                    self.program.display(),
                    self.args.join(" "),
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                let tail = self.log_tail();
                self.kill();
                panic!("{} did not get ready ({what}) within {STARTUP_TIMEOUT:?}\n{tail}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_wait(&mut child);
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
