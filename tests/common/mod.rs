//! Integration-test harness: starts REAL server processes (Mosquitto, InfluxDB 1.x,
//! VictoriaMetrics) and the gateway binary, each on its own loopback port and in its
//! own temporary directory, so tests can run in parallel and leave nothing behind.
//!
//! Used as `mod common;` from several test files; each file uses a different subset,
//! hence the `dead_code` allowance.
//!
//! Conventions:
//! - `start()` blocks until the server answers (it is plain synchronous code, so it
//!   works from `#[test]` and `#[tokio::test]` alike) and panics with the tail of the
//!   server's log if the server does not come up.
//! - Every struct kills its process on `Drop` (SIGKILL + wait) and then removes its
//!   directory (the `TempDir` field is dropped after `Drop::drop` ran).
//! - Query helpers are async and use `reqwest` (no extra features needed: URLs are
//!   built with `reqwest::Url`, JSON is parsed with `serde_json`).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tempfile::TempDir;

/// How long a server may take to start answering before the test fails.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How many log lines a startup failure shows.
const LOG_TAIL_LINES: usize = 40;

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

/// Ports this process already handed out. A port is never handed out twice, even
/// after the server using it is gone: a test may restart a server on "its" port
/// later, and another test must not have taken it in between.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Returns a loopback TCP port that is free right now and that this process never
/// handed out before.
///
/// Ports are taken from below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`, usually 32768–60999): the kernel picks
/// the local port of every outgoing connection (reqwest, rumqttc, the gateway …) from
/// that range, so a port from `bind(127.0.0.1:0)` could be taken by some client's
/// connection between the moment we hand it out and the moment the server binds it.
/// Below the range only explicit `bind`s compete, and each candidate is checked by
/// binding it. The start offset depends on the process id, so two test processes
/// running at the same time rarely probe the same ports. If the range cannot be read
/// (not Linux) we fall back to `bind(127.0.0.1:0)`.
pub fn free_port() -> u16 {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = guard.get_or_insert_with(HashSet::new);

    const LOW: u16 = 20_000;
    let high = ephemeral_range_start().unwrap_or(0);
    if high > LOW + 1_000 {
        let span = u32::from(high - LOW);
        let start = (std::process::id().wrapping_mul(7_919)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0))
            % span;
        for i in 0..span {
            let port = LOW + ((start + i) % span) as u16;
            if handed_out.contains(&port) {
                continue;
            }
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                handed_out.insert(port);
                return port;
            }
        }
    }
    // Fallback: let the kernel choose, but still never repeat a port.
    for _ in 0..1_000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr of a bound listener").port();
        if handed_out.insert(port) {
            return port;
        }
    }
    panic!("free_port: found no free loopback port");
}

/// First port of the kernel's ephemeral range, if known.
fn ephemeral_range_start() -> Option<u16> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

// ---------------------------------------------------------------------------
// Process helpers shared by all servers
// ---------------------------------------------------------------------------

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
fn log_stdio(path: &Path) -> (Stdio, Stdio) {
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
fn kill_and_wait(child: &mut Child) {
    // `kill` fails only if the process was already reaped; `wait` then returns the
    // cached status. Either way nothing is left running afterwards.
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends SIGTERM through the `kill` command (no libc needed).
fn send_sigterm(child: &Child) {
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
struct ServerProcess {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    /// Where the first run's stdout+stderr go; later runs: see `out_path`.
    stdout_log: PathBuf,
    /// Extra log file the server writes itself (Mosquitto's `log_dest file`).
    own_log: Option<PathBuf>,
    child: Option<Child>,
    starts: u32,
}

impl ServerProcess {
    fn new(name: &'static str, program: PathBuf, args: Vec<String>, dir: &Path, own_log: Option<PathBuf>) -> Self {
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

    fn spawn(&mut self) {
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
    fn log_tail(&self) -> String {
        let mut s = tail_of_file(&self.out_path(self.starts), LOG_TAIL_LINES);
        if let Some(own) = &self.own_log {
            s.push_str(&tail_of_file(own, LOG_TAIL_LINES));
        }
        s
    }

    /// Polls `ready` every 50 ms until it returns true; panics with the log tail if
    /// the process exits or `STARTUP_TIMEOUT` passes first.
    fn wait_until(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
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

    fn kill(&mut self) {
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

/// True if something accepts TCP connections on 127.0.0.1:`port`.
fn tcp_accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Minimal blocking `GET` (HTTP/1.0, so the server closes the connection after the
/// answer) returning the status code, or `None` if there is no valid answer. Used for
/// readiness checks so `start()` needs no async runtime.
fn http_get_status(port: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut head = [0u8; 32];
    let mut len = 0;
    // Read just enough for "HTTP/1.x NNN".
    while len < 12 {
        match stream.read(&mut head[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    let text = std::str::from_utf8(&head[..len]).ok()?;
    let mut parts = text.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.get(..3)?.parse().ok()
}

/// HTTP client for the query helpers. No connection pooling: servers get stopped and
/// restarted under the tests' feet, and a pooled connection to a killed server would
/// make the next helper call fail spuriously. No proxy: everything is on loopback.
pub fn http_client() -> reqwest::Client {
    heartguard_gateway::tls::install_provider();
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build reqwest client")
}

/// Writes a secret file the way the gateway accepts it: mode 0600.
pub fn write_secret(path: &Path, content: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Quotes a string as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Quotes an InfluxQL identifier (database or measurement name): double quotes, with
/// `\` and `"` backslash-escaped and a newline written as `\n` (the InfluxQL scanner
/// unescapes exactly these inside quoted identifiers).
pub fn influxql_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------
// Mosquitto
// ---------------------------------------------------------------------------

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
            "# Written by tests/common/mod.rs\n\
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

// ---------------------------------------------------------------------------
// TLS: certificates made by the test, nginx as a TLS terminator
// ---------------------------------------------------------------------------

/// A throw-away CA with a server certificate for 127.0.0.1/localhost and a client
/// certificate, made with the `openssl` command (Debian package `openssl`). Keys are PKCS#8
/// PEM with mode 0600, as the gateway requires for secrets.
pub struct TestCerts {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A second CA that signed nothing here: trusting it alone must fail.
    pub other_ca: PathBuf,
    dir: TempDir,
}

impl TestCerts {
    pub fn generate() -> Self {
        let dir = TempDir::new().expect("temp dir for certificates");
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(d).output().expect("run openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        for ca in ["ca", "other-ca"] {
            let (key, crt, subj) = (format!("{ca}.key"), format!("{ca}.crt"), format!("/CN=heartguard test {ca}"));
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subj]);
            args.extend([
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            openssl(&args);
        }
        for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
            let (key, csr, crt, ext) =
                (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
            let san = if name == "server" { "subjectAltName=IP:127.0.0.1,DNS:localhost\n" } else { "" };
            std::fs::write(d.join(&ext), format!("basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n{san}"))
                .expect("write ext");
            let subj = format!("/CN=heartguard test {name}");
            let mut args = vec!["req"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(&args);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
            write_secret(&d.join(&key), &std::fs::read_to_string(d.join(&key)).expect("read key"));
        }
        TestCerts {
            ca: d.join("ca.crt"),
            server_cert: d.join("server.crt"),
            server_key: d.join("server.key"),
            client_cert: d.join("client.crt"),
            client_key: d.join("client.key"),
            other_ca: d.join("other-ca.crt"),
            dir,
        }
    }
}

/// nginx terminating TLS on a free loopback port in front of an HTTP server on
/// `upstream_port`, requiring a client certificate signed by the test CA.
pub struct TlsProxy {
    pub port: u16,
    process: ServerProcess,
    dir: TempDir,
}

impl TlsProxy {
    pub fn start(certs: &TestCerts, upstream_port: u16) -> Self {
        let dir = TempDir::new().expect("temp dir for nginx");
        let d = dir.path().display().to_string();
        let port = free_port();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               client_max_body_size 30m;\n\
               server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
                 ssl_client_certificate {ca};\n    ssl_verify_client on;\n\
                 location / {{ proxy_pass http://127.0.0.1:{upstream_port}; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n",
            cert = certs.server_cert.display(),
            key = certs.server_key.display(),
            ca = certs.ca.display(),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let mut process = ServerProcess::new(
            "nginx",
            find_binary("nginx"),
            vec![
                "-p".into(),
                d.clone(),
                "-e".into(),
                format!("{d}/error.log"),
                "-c".into(),
                conf_path.display().to_string(),
            ],
            dir.path(),
            Some(dir.path().join("error.log")),
        );
        process.spawn();
        process.wait_until("TCP connect succeeds", || tcp_accepts(port));
        TlsProxy { port, process, dir }
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// nginx's access log: one line per request it proxied.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------
// InfluxDB 1.x
// ---------------------------------------------------------------------------

/// A private InfluxDB 1.x (`influxd`, Debian's 1.6.7) on a free loopback port, with
/// meta, data and WAL in its temp dir.
///
/// Behaviour worth knowing (checked against 1.6.7):
/// - No `/api/v2/write` (404).
/// - `Content-Encoding: gzip` on `/write` works, but only spelled exactly `gzip`
///   (case-sensitive). A gzip body sent without that header is parsed as line
///   protocol: 400 "unable to parse '<raw gzip bytes>': missing fields", and the raw
///   bytes (NULs included) are copied into the `X-Influxdb-Error` response header.
/// - The 25,000,000-byte body limit (413) is NOT applied to gzip bodies.
/// - Writes are fsynced to the WAL before the 204, so `stop()` (SIGKILL) loses
///   nothing that was acknowledged.
pub struct Influx1 {
    pub port: u16,
    rpc_port: u16,
    process: ServerProcess,
    http: reqwest::Client,
    dir: TempDir,
}

impl Influx1 {
    /// Writes the config, starts `influxd run -config FILE` and waits until
    /// `GET /ping` answers 204.
    pub fn start() -> Self {
        let dir = TempDir::new().expect("create temp dir for influxd");
        let port = free_port();
        let rpc_port = free_port();
        let d = dir.path();
        let config = d.join("influxdb.conf");
        let text = format!(
            r#"# Written by tests/common/mod.rs: everything local, small, and quiet.
# Upstream spells the phone-home switch `reporting-disabled`; Debian's build renamed
# it to `reporting-enabled` (default false there). Unknown keys are ignored, so both
# are set.
reporting-disabled = true
reporting-enabled = false
# RPC service (backup/restore); must not clash with another instance's 8088.
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = {meta}
  retention-autocreate = true
  logging-enabled = false

[data]
  dir = {data}
  wal-dir = {wal}
  # fsync the WAL on every write, so a SIGKILL loses nothing acknowledged.
  wal-fsync-delay = "0s"
  query-log-enabled = false
  trace-logging-enabled = false

[retention]
  enabled = false

[shard-precreation]
  enabled = false

[monitor]
  # No `_internal` database, no background writes.
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{port}"
  auth-enabled = false
  # No access log line per request.
  log-enabled = false
  suppress-write-log = true
  pprof-enabled = false
  # Kept at the default 25,000,000 so tests see the real 413 behaviour.
  max-body-size = 25000000

[logging]
  level = "info"
  suppress-logo = true

[continuous_queries]
  enabled = false
"#,
            meta = toml_string(&d.join("meta").display().to_string()),
            data = toml_string(&d.join("data").display().to_string()),
            wal = toml_string(&d.join("wal").display().to_string()),
        );
        std::fs::write(&config, text).expect("write influxdb.conf");
        let process = ServerProcess::new(
            "influxd",
            find_binary("influxd"),
            vec!["run".into(), "-config".into(), config.display().to_string()],
            d,
            None,
        );
        let mut influx = Influx1 { port, rpc_port, process, http: http_client(), dir };
        influx.spawn_and_wait();
        influx
    }

    fn spawn_and_wait(&mut self) {
        self.process.spawn();
        let port = self.port;
        self.process.wait_until("GET /ping answers 204", || http_get_status(port, "/ping") == Some(204));
        // /ping is served by the HTTP service, which opens after the store; also
        // make sure queries work before handing the server to the test.
        self.process.wait_until("SHOW DATABASES answers 200", || {
            http_get_status(port, "/query?q=SHOW%20DATABASES") == Some(200)
        });
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills influxd (SIGKILL, like a crash or a pulled plug) and waits for it.
    /// Port, config and data stay; `restart()` brings it back with the same data.
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts influxd again on the same port with the same data (stops it first if
    /// it is still running) and waits until it answers.
    pub fn restart(&mut self) {
        self.process.kill();
        self.spawn_and_wait();
    }

    /// `CREATE DATABASE "name"`; panics on failure.
    pub async fn create_db(&self, name: &str) {
        let q = format!("CREATE DATABASE {}", influxql_ident(name));
        let url = reqwest::Url::parse_with_params(&format!("{}/query", self.url()), &[("q", q.as_str())])
            .expect("build /query URL");
        let resp = self.http.post(url).send().await.unwrap_or_else(|e| panic!("influxd {q}: {e}"));
        let status = resp.status().as_u16();
        let body = resp.text().await.expect("read /query body");
        assert_eq!(status, 200, "influxd {q}: HTTP {status}: {body}");
        let json: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("influxd {q}: invalid JSON ({e}): {body}"));
        if let Some(err) = statement_error(&json) {
            panic!("influxd {q}: {err}");
        }
    }

    /// `GET /query?db=DB&epoch=ns&q=INFLUXQL` and the parsed JSON answer. Panics if
    /// the HTTP status is not 200; InfluxQL errors come back inside the JSON
    /// (`results[i].error`) and are left to the caller.
    pub async fn query(&self, db: &str, influxql: &str) -> Value {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/query", self.url()),
            &[("db", db), ("epoch", "ns"), ("q", influxql)],
        )
        .expect("build /query URL");
        let resp = self.http.get(url).send().await.unwrap_or_else(|e| panic!("influxd query {influxql:?}: {e}"));
        let status = resp.status().as_u16();
        let body = resp.text().await.expect("read /query body");
        assert_eq!(status, 200, "influxd query {influxql:?} on db {db:?}: HTTP {status}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("influxd query {influxql:?}: invalid JSON ({e}): {body}"))
    }

    /// `POST /write?db=DB&precision=ns` with `lines` as body; returns status and body
    /// (204 and "" on success). Transport errors panic.
    pub async fn write(&self, db: &str, lines: &str) -> (u16, String) {
        let url = reqwest::Url::parse_with_params(&format!("{}/write", self.url()), &[("db", db), ("precision", "ns")])
            .expect("build /write URL");
        let resp = self
            .http
            .post(url)
            .body(lines.to_owned())
            .send()
            .await
            .unwrap_or_else(|e| panic!("influxd write to {db:?}: {e}"));
        let status = resp.status().as_u16();
        let body = resp.text().await.expect("read /write body");
        (status, body)
    }

    /// Number of points stored in `measurement` (0 if it does not exist).
    ///
    /// A point is one (series, timestamp) row: writing the same point twice stores
    /// it once. With a single field key `count(*)` gives that number directly; with
    /// several fields the per-field counts cannot tell points apart (two points with
    /// only `a` and two with only `b` also count 2 and 2), so the rows of
    /// `SELECT *` are counted instead.
    pub async fn count(&self, db: &str, measurement: &str) -> u64 {
        let m = influxql_ident(measurement);
        let json = self.query(db, &format!("SELECT count(*) FROM {m}")).await;
        if let Some(err) = statement_error(&json) {
            panic!("influxd count of {measurement:?} in {db:?}: {err}");
        }
        let Some(series) = json["results"][0]["series"].as_array() else {
            return 0; // no such measurement (or no points)
        };
        // Columns are "time" plus one `count_<field>` per field key.
        let single_field = series.len() == 1 && series[0]["columns"].as_array().is_some_and(|c| c.len() == 2);
        if single_field {
            return series[0]["values"][0][1].as_u64().unwrap_or_else(|| panic!("unexpected count(*) answer: {json}"));
        }
        self.rows(db, measurement).await.len() as u64
    }

    /// Every point of `measurement` as a map column → value: `time` (ns since the
    /// epoch, as a JSON integer), every tag (string, or null where the point lacks
    /// it) and every field (null where the point lacks it). Empty if the measurement
    /// does not exist. Ordered by time as InfluxDB returns them.
    pub async fn rows(&self, db: &str, measurement: &str) -> Vec<Map<String, Value>> {
        let q = format!("SELECT * FROM {}", influxql_ident(measurement));
        let json = self.query(db, &q).await;
        if let Some(err) = statement_error(&json) {
            panic!("influxd {q} in {db:?}: {err}");
        }
        let mut out = Vec::new();
        let Some(series) = json["results"][0]["series"].as_array() else {
            return out;
        };
        for s in series {
            let columns: Vec<&str> = s["columns"]
                .as_array()
                .expect("series without columns")
                .iter()
                .map(|c| c.as_str().expect("column name is a string"))
                .collect();
            for row in s["values"].as_array().expect("series without values") {
                let row = row.as_array().expect("row is an array");
                let mut map = Map::new();
                // Without GROUP BY, tags are columns; with it they would be in "tags".
                if let Some(tags) = s["tags"].as_object() {
                    for (k, v) in tags {
                        map.insert(k.clone(), v.clone());
                    }
                }
                for (c, v) in columns.iter().zip(row) {
                    map.insert((*c).to_owned(), v.clone());
                }
                out.push(map);
            }
        }
        out
    }
}

/// The first `error` of an InfluxDB /query answer (whole-request or per statement).
fn statement_error(json: &Value) -> Option<String> {
    if let Some(e) = json["error"].as_str() {
        return Some(e.to_owned());
    }
    json["results"].as_array()?.iter().find_map(|r| r["error"].as_str().map(str::to_owned))
}

// ---------------------------------------------------------------------------
// VictoriaMetrics
// ---------------------------------------------------------------------------

/// A private VictoriaMetrics (Debian's 1.79.5) on a free loopback port, used as the
/// target of the InfluxDB v2 write API (`/api/v2/write`).
///
/// How a line-protocol point is stored (checked against 1.79.5 with curl):
/// `POST /api/v2/write?org=O&bucket=B&precision=ns` with
/// `vitals,patient=p1,ward=w\ 2 hr=72i,spo2=98.5,note="hi",ok=true 1795886444582639321`
/// becomes one series per field:
/// - metric name `<measurement>_<field>`: `vitals_hr`, `vitals_spo2`, `vitals_note`,
///   `vitals_ok`;
/// - every tag becomes a label with the unescaped value (`ward="w 2"`);
/// - `org` and `bucket` are ignored: no label, no error, no check. Only a `db` query
///   argument becomes a label (`db="…"`), on `/write` and `/api/v2/write` alike;
/// - every value is a float64: `72i` → 72, `true` → 1, a string field → 0;
/// - timestamps are stored in milliseconds, truncated: 1795886444582639321 ns →
///   1795886444582 ms. `precision` (`ns`, `us`, `ms`, `s`; default `ns`) is honoured
///   for the conversion; a line without timestamp gets the server's time;
/// - two writes of the same point are both kept (no deduplication), so a replayed
///   batch shows up twice in `export`;
/// - bad lines are skipped silently (logged) and the request still answers 204 —
///   except a line longer than 256 KiB (`-influx.maxLineSize`): 400 "too long line",
///   the lines before it are stored, the rest of the body is dropped;
/// - `Content-Encoding: gzip` is decoded; a gzip body without that header is one
///   unparsable "line": skipped, 204;
/// - `Authorization` headers are ignored unless started with
///   `start_with_basic_auth`, then anything but the right Basic credentials (e.g.
///   `Authorization: Token …`) gets 401 (1.79 has no token auth);
/// - `/api/v1/export` without `end` stops at the start of the current second, so
///   just-written samples stamped "now" seem missing; `export` here passes `end`.
pub struct Victoria {
    pub port: u16,
    basic_auth: Option<(String, String)>,
    process: ServerProcess,
    http: reqwest::Client,
    dir: TempDir,
}

impl Victoria {
    /// Starts VictoriaMetrics without authentication.
    pub fn start() -> Self {
        Self::start_inner(None)
    }

    /// Starts VictoriaMetrics with `-httpAuth.username/password`: every request must
    /// carry these Basic credentials or gets 401 (the helpers here send them).
    pub fn start_with_basic_auth(user: &str, password: &str) -> Self {
        Self::start_inner(Some((user.to_owned(), password.to_owned())))
    }

    fn start_inner(basic_auth: Option<(String, String)>) -> Self {
        let dir = TempDir::new().expect("create temp dir for victoria-metrics");
        let port = free_port();
        let mut args = vec![
            format!("-storageDataPath={}", dir.path().join("data").display()),
            format!("-httpListenAddr=127.0.0.1:{port}"),
            // Errors (e.g. skipped lines) and warnings only.
            "-loggerLevel=WARN".into(),
            // Default retention is 1 month and older samples are dropped silently;
            // tests use fixed, old timestamps.
            "-retentionPeriod=100y".into(),
            // Several instances may run at once; keep each one's caches small.
            "-memory.allowedBytes=256MiB".into(),
            // No response cache and no "latency offset" hiding the newest samples
            // from /api/v1/query*: a just-written sample must be queryable.
            "-search.disableCache".into(),
            "-search.latencyOffset=0s".into(),
        ];
        if let Some((user, password)) = &basic_auth {
            args.push(format!("-httpAuth.username={user}"));
            args.push(format!("-httpAuth.password={password}"));
        }
        let process = ServerProcess::new("victoria-metrics", find_binary("victoria-metrics"), args, dir.path(), None);
        let mut vm = Victoria { port, basic_auth, process, http: http_client(), dir };
        vm.process.spawn();
        // /health needs no credentials even with -httpAuth.*.
        vm.process.wait_until("GET /health answers 200", || http_get_status(port, "/health") == Some(200));
        vm
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn get(&self, url: reqwest::Url) -> reqwest::RequestBuilder {
        let req = self.http.get(url);
        match &self.basic_auth {
            Some((u, p)) => req.basic_auth(u, Some(p)),
            None => req,
        }
    }

    /// `/internal/force_flush`: moves the rows and index entries buffered in memory
    /// (flushed every second otherwise) into searchable parts and resets the index
    /// search cache (reset every 10 s otherwise), so every sample whose write was
    /// answered before this call is visible to the next query.
    pub async fn flush(&self) {
        let url = reqwest::Url::parse(&format!("{}/internal/force_flush", self.url())).expect("build force_flush URL");
        let resp = self.get(url).send().await.unwrap_or_else(|e| panic!("victoria-metrics force_flush: {e}"));
        assert!(resp.status().is_success(), "victoria-metrics force_flush: HTTP {}", resp.status());
    }

    /// `GET /api/v1/export?match[]=SELECTOR&end=<now + 2 days>` after `flush()`, so
    /// everything written before the call is included.
    ///
    /// `end` matters: by default export stops at the start of the current second,
    /// so samples stamped "now" would be missing until the clock moves on (and VM
    /// accepts samples up to 2 days ahead).
    ///
    /// Returns one object per series, `{"metric": {"__name__": …, label: value…},
    /// "values": [number…], "timestamps": [ms…]}`, samples sorted by timestamp (the
    /// export API may print one series on several lines, one per storage block;
    /// those are merged here). Example selectors: `{__name__=~"vitals_.*"}`,
    /// `vitals_hr{patient="p1"}`.
    pub async fn export(&self, match_selector: &str) -> Vec<Value> {
        self.flush().await;
        let end =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_secs()
                + 2 * 24 * 3600;
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/export", self.url()),
            &[("match[]", match_selector), ("end", &end.to_string())],
        )
        .expect("build export URL");
        let resp =
            self.get(url).send().await.unwrap_or_else(|e| panic!("victoria-metrics export {match_selector:?}: {e}"));
        let status = resp.status().as_u16();
        let body = resp.text().await.expect("read export body");
        assert_eq!(status, 200, "victoria-metrics export {match_selector:?}: HTTP {status}: {body}");
        // Merge the lines of each series; key = canonical JSON of its labels.
        let mut merged: BTreeMap<String, (Value, Vec<(i64, Value)>)> = BTreeMap::new();
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            let obj: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("victoria-metrics export: bad line ({e}): {line}"));
            let metric = obj["metric"].clone();
            let key = metric.to_string(); // serde_json maps are sorted: canonical
            let values = obj["values"].as_array().cloned().unwrap_or_default();
            let stamps = obj["timestamps"].as_array().cloned().unwrap_or_default();
            assert_eq!(values.len(), stamps.len(), "export line: {line}");
            let entry = merged.entry(key).or_insert_with(|| (metric, Vec::new()));
            for (v, t) in values.into_iter().zip(stamps) {
                let t = t.as_i64().unwrap_or_else(|| panic!("timestamp: {line}"));
                entry.1.push((t, v));
            }
        }
        merged
            .into_values()
            .map(|(metric, mut samples)| {
                samples.sort_by_key(|(t, _)| *t);
                let (timestamps, values): (Vec<i64>, Vec<Value>) = samples.into_iter().unzip();
                serde_json::json!({ "metric": metric, "values": values, "timestamps": timestamps })
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------

/// Counter for unique MQTT client ids across calls (and tests) in this process.
static CLIENT_SEQ: AtomicU64 = AtomicU64::new(0);

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
    /// Writes `dir/gateway.toml` and starts the gateway binary built by Cargo for
    /// this test. Does not wait for anything: wait for a log line or an effect with
    /// `eventually`.
    pub fn start(dir: &Path, config_toml: &str) -> Self {
        Self::start_with_binary(Path::new(env!("CARGO_BIN_EXE_heartguard-gateway")), dir, config_toml)
    }

    /// Like `start`, with extra environment variables for the gateway process.
    pub fn start_with_env(dir: &Path, config_toml: &str, env: &[(&str, &str)]) -> Self {
        Self::launch(Path::new(env!("CARGO_BIN_EXE_heartguard-gateway")), dir, config_toml, env)
    }

    /// Like `start`, with another executable (tests of this harness use stand-ins).
    pub fn start_with_binary(binary: &Path, dir: &Path, config_toml: &str) -> Self {
        Self::launch(binary, dir, config_toml, &[])
    }

    /// Like `start_with_binary`, with extra environment variables.
    pub fn start_with_binary_and_env(binary: &Path, dir: &Path, config_toml: &str, env: &[(&str, &str)]) -> Self {
        Self::launch(binary, dir, config_toml, env)
    }

    fn launch(binary: &Path, dir: &Path, config_toml: &str, env: &[(&str, &str)]) -> Self {
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

// ---------------------------------------------------------------------------
// A TCP proxy that can swallow one direction and cut its connections
// ---------------------------------------------------------------------------

/// A TCP proxy on a free loopback port in front of 127.0.0.1:`upstream_port`, for faults a
/// real server does not produce on demand: bytes from the client that never reach the
/// server (`swallow_upstream`), and connections cut by the network (`cut`). Plain threads,
/// so it works from sync and async tests alike; stops accepting and cuts everything on drop.
pub struct TcpProxy {
    pub port: u16,
    shared: std::sync::Arc<ProxyShared>,
}

#[derive(Default)]
struct ProxyShared {
    stop: std::sync::atomic::AtomicBool,
    swallow: std::sync::atomic::AtomicBool,
    /// What the client sent while swallowing, in order.
    swallowed: Mutex<Vec<u8>>,
    /// Both sockets of every connection, for `cut`.
    open: Mutex<Vec<TcpStream>>,
}

impl TcpProxy {
    pub fn start(upstream_port: u16) -> Self {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the proxy");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let shared = std::sync::Arc::new(ProxyShared::default());
        let s = shared.clone();
        std::thread::spawn(move || {
            while !s.stop.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    // Non-blocking: nothing to accept yet (or a passing error).
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else { continue };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let clones = (client.try_clone(), server.try_clone(), client.try_clone(), server.try_clone());
                let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = clones else { continue };
                s.open.lock().unwrap_or_else(|e| e.into_inner()).extend([c3, s3]);
                let up = s.clone();
                std::thread::spawn(move || pump(client, server, Some(up.as_ref())));
                std::thread::spawn(move || pump(s2, c2, None));
            }
        });
        TcpProxy { port, shared }
    }

    /// While on, what the client sends is kept here instead of reaching the server.
    pub fn swallow_upstream(&self, on: bool) {
        self.shared.swallow.store(on, Ordering::SeqCst);
    }

    /// Everything swallowed so far.
    pub fn swallowed(&self) -> Vec<u8> {
        self.shared.swallowed.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Cuts every open connection (both sides see it closed); new ones are still accepted.
    pub fn cut(&self) {
        for s in self.shared.open.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

/// Copies `from` to `to` until either side closes; with `swallow`, the bytes read while it
/// is on are kept there instead.
fn pump(mut from: TcpStream, mut to: TcpStream, swallow: Option<&ProxyShared>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(s) = swallow.filter(|s| s.swallow.load(Ordering::SeqCst)) {
            s.swallowed.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&buf[..n]);
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

// ---------------------------------------------------------------------------
// MQTT publishing
// ---------------------------------------------------------------------------

/// Publishes every `(topic, payload)` at QoS 1 to the broker on 127.0.0.1:`port` and
/// returns once the broker acknowledged each one (PubAck). Panics after 30 s overall,
/// or on any MQTT error, saying how many were acknowledged.
///
/// Fresh client id and clean session per call. All requests are queued up front (the
/// request channel is as large as `msgs`) and the event loop keeps 100 in flight, so
/// 10,000 messages take well under a second.
pub async fn publish_qos1(port: u16, msgs: &[(String, Vec<u8>)]) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

    let total = msgs.len();
    if total == 0 {
        return;
    }
    let id = format!("hg-test-pub-{}-{}", std::process::id(), CLIENT_SEQ.fetch_add(1, Ordering::Relaxed));
    let mut opts = MqttOptions::new(id.clone(), "127.0.0.1", port);
    opts.set_clean_session(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(100)
        // Default is 10 KiB; tests may send big payloads (MQTT allows ~256 MiB).
        .set_max_packet_size(256 * 1024 * 1024, 256 * 1024 * 1024);
    let (client, mut eventloop) = AsyncClient::new(opts, total + 16);
    for (topic, payload) in msgs {
        client
            .try_publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone())
            .unwrap_or_else(|e| panic!("publish_qos1: cannot queue publish to {topic:?}: {e}"));
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut acked = 0usize;
    while acked < total {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => panic!(
                "publish_qos1 ({id}) to port {port}: timed out after 30 s with {acked} of \
                 {total} messages acknowledged"
            ),
            Ok(Err(e)) => panic!(
                "publish_qos1 ({id}) to port {port}: MQTT error with {acked} of {total} \
                 messages acknowledged: {e}"
            ),
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
        }
    }

    // Say goodbye properly so the broker does not log a protocol error; failures
    // here do not matter any more, everything was acknowledged.
    if client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

// ---------------------------------------------------------------------------
// A fault-injecting HTTP proxy in front of a real server
// ---------------------------------------------------------------------------

/// What [`FaultProxy`] does with one request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Passes it to the upstream server and its answer back (502 if the upstream is down).
    Forward,
    /// Answers with these raw bytes (status line, headers, blank line, body) instead.
    Answer(String),
}

/// One request [`FaultProxy`] handled.
#[derive(Debug, Clone)]
pub struct ProxiedRequest {
    /// `POST /write?db=…` (method and target, as sent).
    pub request_line: String,
    pub body: Vec<u8>,
    /// The status line of what the client got back.
    pub answered: String,
}

/// An HTTP/1.1 proxy on a loopback port in front of `127.0.0.1:upstream_port`, for answers
/// a real server will not give on demand: `decide(n, request)` picks, for the n-th request
/// (from 0), whether it is forwarded or answered by the proxy itself (an HTML error page, a
/// redirect). Every connection carries one request and is closed after the answer, so the
/// client never reuses a connection the proxy is about to drop. Runs as tasks of the calling
/// tokio runtime; they end with it.
pub struct FaultProxy {
    pub port: u16,
    seen: std::sync::Arc<Mutex<Vec<ProxiedRequest>>>,
}

impl FaultProxy {
    pub async fn start(
        upstream_port: u16,
        decide: impl Fn(usize, &ProxiedRequest) -> Fault + Send + Sync + 'static,
    ) -> Self {
        use std::sync::Arc;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fault proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (log, decide) = (seen.clone(), Arc::new(decide));
        tokio::spawn(async move {
            let n = Arc::new(AtomicU64::new(0));
            loop {
                let Ok((sock, _)) = listener.accept().await else { return };
                let (log, decide, n) = (log.clone(), decide.clone(), n.clone());
                tokio::spawn(async move {
                    let _ = proxy_one(sock, upstream_port, &*decide, &n, &log).await;
                });
            }
        });
        FaultProxy { port, seen }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request handled so far, in the order they were answered.
    pub fn requests(&self) -> Vec<ProxiedRequest> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A 400 as nginx answers plain HTTP sent to its HTTPS port: HTML, nothing of InfluxDB's.
pub fn html_400() -> Fault {
    let page = "<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>The plain HTTP request was sent to HTTPS port</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
    Fault::Answer(format!(
        "HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
        page.len()
    ))
}

/// A 400 with an empty body, as load balancers answer requests whose headers they refuse.
pub fn empty_400() -> Fault {
    Fault::Answer("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into())
}

/// A redirect (301, 302, 303, 307, 308) to `location`.
pub fn redirect(status: u16, location: &str) -> Fault {
    let reason = match status {
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        _ => "Permanent Redirect",
    };
    Fault::Answer(format!(
        "HTTP/1.1 {status} {reason}\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ))
}

/// Reads one request (head and `Content-Length` body) from `sock`; None at EOF.
async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match sock.read(&mut tmp).await {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&tmp[..k]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match sock.read(&mut tmp).await {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&tmp[..k]),
        }
    }
    let body = buf.split_off(head_end);
    Some((buf, body))
}

async fn proxy_one(
    mut sock: tokio::net::TcpStream,
    upstream_port: u16,
    decide: &(dyn Fn(usize, &ProxiedRequest) -> Fault + Send + Sync),
    n: &AtomicU64,
    log: &Mutex<Vec<ProxiedRequest>>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some((head, body)) = read_request(&mut sock).await else { return Ok(()) };
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut req = ProxiedRequest {
        request_line: text.lines().next().unwrap_or_default().rsplit_once(' ').map_or("", |(r, _)| r).to_owned(),
        body,
        answered: String::new(),
    };
    let i = n.fetch_add(1, Ordering::SeqCst) as usize;
    let answer = match decide(i, &req) {
        Fault::Answer(raw) => raw.into_bytes(),
        Fault::Forward => {
            // The request as it came, but asking the upstream to close after answering: its
            // answer is then everything up to EOF, whatever its framing.
            let mut fwd: String = text
                .split("\r\n")
                .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
                .map(|l| format!("{l}\r\n"))
                .collect();
            fwd.push_str("Connection: close\r\n\r\n");
            match tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await {
                Ok(mut up) => {
                    up.write_all(fwd.as_bytes()).await?;
                    up.write_all(&req.body).await?;
                    let mut answer = Vec::new();
                    up.read_to_end(&mut answer).await?;
                    answer
                }
                Err(_) => {
                    let page = "<html><head><title>502 Bad Gateway</title></head><body>502 Bad Gateway</body></html>";
                    format!(
                        "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                        page.len()
                    )
                    .into_bytes()
                }
            }
        }
    };
    req.answered = String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned();
    let written = sock.write_all(&answer).await;
    let _ = sock.shutdown().await;
    log.lock().unwrap_or_else(|e| e.into_inner()).push(req);
    written
}

// ---------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------

/// Polls `f` every 100 ms until it returns true; panics with `what` once `timeout`
/// passed. A single call of `f` is also cut off at the deadline.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // `timeout_at` polls `f()` before looking at the clock, so a check that is
        // ready at once still counts after the deadline.
        if let Ok(true) = tokio::time::timeout_at(deadline, f()).await {
            return;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep((deadline - now).min(Duration::from_millis(100))).await;
    }
}

/// Blocking `eventually`: polls `f` every 100 ms until true; panics with `what` once
/// `timeout` passed.
pub fn eventually_sync<F>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> bool,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(100)));
    }
}

// ---------------------------------------------------------------------------------------
// Gateway test configuration and message helpers, shared by the end-to-end test files.

/// The InfluxDB database the example bindings write to.
pub const DB: &str = "heartguard_vitals";
/// Patience for anything that should happen "soon".
pub const WAIT: Duration = Duration::from_secs(60);

/// `config/bindings.example.toml`: the central fixture's sample data as a bindings file.
pub fn example_bindings() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/bindings.example.toml")
}

/// A gateway configuration for tests: fast flushes and retries, the given InfluxDB and
/// bindings; `extra` lines go into the `[influx]` table, `queue` lines into `[queue]`.
pub fn gateway_toml(dir: &Path, mqtt_url: &str, influx_url: &str, api: &str, bindings: &Path, extra: &str) -> String {
    gateway_toml_with_queue(dir, mqtt_url, influx_url, api, bindings, extra, "")
}

pub fn gateway_toml_with_queue(
    dir: &Path,
    mqtt_url: &str,
    influx_url: &str,
    api: &str,
    bindings: &Path,
    extra: &str,
    queue: &str,
) -> String {
    format!(
        r#"
[gateway]
id = "test-gw"
data_dir = "{data}"
shutdown_grace_ms = 5000

[mqtt]
url = "{mqtt_url}"

[influx]
url = "{influx_url}"
api = "{api}"
flush_interval_ms = 100
retry_initial_ms = 100
retry_max_ms = 1000
{extra}

[queue]
{queue}

[bindings]
file = "{bindings}"
"#,
        data = dir.join("data").display(),
        bindings = bindings.display(),
    )
}

/// Epoch milliseconds of an RFC 3339 time.
pub fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).expect("time").timestamp_millis()
}

/// A JSON reading for `devices/{serial}/vitals`.
pub fn msg(serial: &str, payload: serde_json::Value) -> (String, Vec<u8>) {
    (format!("devices/{serial}/vitals"), payload.to_string().into_bytes())
}

/// Starts a gateway and waits until its subscription is in place (from then on the broker
/// holds messages for its persistent session).
pub async fn start_gateway(dir: &Path, toml: &str) -> Gateway {
    let mut gw = Gateway::start(dir, toml);
    wait_for_log(&gw, "Subscribed.").await;
    assert!(gw.is_running(), "gateway exited:\n{}", gw.log());
    gw
}

/// Waits until the gateway's log contains `text`.
pub async fn wait_for_log(gw: &Gateway, text: &str) {
    eventually(WAIT, &format!("gateway log contains {text:?}"), || {
        let found = gw.log().contains(text);
        async move { found }
    })
    .await;
}

/// Waits until `measurement` in [`DB`] holds exactly `n` points.
pub async fn wait_count(influx: &Influx1, measurement: &str, n: u64) {
    eventually(WAIT, &format!("{n} points in {measurement}"), || async { influx.count(DB, measurement).await == n })
        .await;
}

/// Runs an operator command of the gateway binary; returns (exit code, stdout, stderr).
pub fn gateway_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_heartguard-gateway"))
        .args(args)
        .output()
        .expect("run the gateway binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------
// PostgreSQL: a throw-away cluster made with initdb, loaded with the central schema.

/// A private PostgreSQL cluster (Debian's `postgresql`, `initdb` under
/// `/usr/lib/postgresql/<version>/bin`) on a free loopback port, trust authentication,
/// database `heartguard` loaded with the schema fixture, its sample data and the gateway's
/// notification triggers. Run as user `postgres` when the tests run as root (the server
/// refuses to run as root).
pub struct Postgres {
    pub port: u16,
    process: ServerProcess,
    dir: TempDir,
}

fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (Debian package postgresql)")
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    versions.sort();
    versions.pop().unwrap_or_else(|| panic!("no {name} under /usr/lib/postgresql/*/bin"))
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// `program args…`, as user postgres when we are root (setpriv execs, so the pid is the
/// server's own).
fn as_postgres(program: PathBuf, args: Vec<String>) -> (PathBuf, Vec<String>) {
    if running_as_root() {
        let mut a = vec!["--reuid=postgres".into(), "--regid=postgres".into(), "--init-groups".into(), "--".into()];
        a.push(program.display().to_string());
        a.extend(args);
        (PathBuf::from("/usr/bin/setpriv"), a)
    } else {
        (program, args)
    }
}

impl Postgres {
    pub fn start() -> Self {
        let dir = TempDir::new().expect("create temp dir for postgres");
        if running_as_root() {
            let (uid, gid) = (101u32, 104u32);
            let ids = Command::new("id").args(["-u", "postgres"]).output().expect("id postgres");
            let uid = String::from_utf8_lossy(&ids.stdout).trim().parse().unwrap_or(uid);
            let ids = Command::new("id").args(["-g", "postgres"]).output().expect("id postgres");
            let gid = String::from_utf8_lossy(&ids.stdout).trim().parse().unwrap_or(gid);
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the cluster dir to postgres");
        }
        let data = dir.path().join("data");
        let (prog, args) = as_postgres(
            pg_bin("initdb"),
            vec![
                "-D".into(),
                data.display().to_string(),
                "-U".into(),
                "postgres".into(),
                "--auth=trust".into(),
                "-E".into(),
                "UTF8".into(),
                "--no-sync".into(),
                "--no-instructions".into(),
            ],
        );
        let out = Command::new(&prog).args(&args).output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let (prog, args) = as_postgres(
            pg_bin("postgres"),
            vec![
                "-D".into(),
                data.display().to_string(),
                "-p".into(),
                port.to_string(),
                "-k".into(),
                dir.path().display().to_string(),
                "-c".into(),
                "listen_addresses=127.0.0.1".into(),
                "-c".into(),
                "fsync=off".into(),
                "-c".into(),
                "full_page_writes=off".into(),
                "-c".into(),
                "shared_buffers=16MB".into(),
            ],
        );
        let mut process = ServerProcess::new("postgres", prog, args, dir.path(), None);
        process.spawn();
        process.wait_until("accepting TCP connections", || tcp_accepts(port));
        let pg = Postgres { port, process, dir };
        pg.wait_ready();
        blocking(|| async {
            let admin = pg.client_for("postgres").await;
            admin.batch_execute("CREATE DATABASE heartguard").await.expect("create database");
            let c = pg.client().await;
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            for f in [
                "tests/fixtures/schema/heartguard.sql",
                "tests/fixtures/schema/sample-data.sql",
                "sql/heartguard-gateway-notify.sql",
                "sql/heartguard-gateway-report.sql",
            ] {
                let sql = std::fs::read_to_string(root.join(f)).expect("read schema file");
                c.batch_execute(&sql).await.unwrap_or_else(|e| panic!("load {f}: {e:?}"));
            }
        });
        pg
    }

    /// Waits until the server accepts queries (it accepts TCP a little before).
    fn wait_ready(&self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let url = self.url_for("postgres");
            let ok = blocking(|| async move { tokio_postgres::connect(&url, tokio_postgres::NoTls).await.is_ok() });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "postgres did not accept connections\n{}", self.process.log_tail());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Connection string for the `heartguard` database (no password: trust auth).
    pub fn url(&self) -> String {
        self.url_for("heartguard")
    }

    fn url_for(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname={db} connect_timeout=5", self.port)
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        self.client_for("heartguard").await
    }

    async fn client_for(&self, db: &str) -> tokio_postgres::Client {
        let (client, conn) =
            tokio_postgres::connect(&self.url_for(db), tokio_postgres::NoTls).await.expect("connect to postgres");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Fast shutdown (SIGINT to the postmaster); the cluster stays for `restart`.
    pub fn stop(&mut self) {
        if let Some(child) = self.process.child.as_mut() {
            let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.process.kill();
    }

    pub fn restart(&mut self) {
        self.process.spawn();
        let port = self.port;
        self.process.wait_until("accepting TCP connections", || tcp_accepts(port));
        self.wait_ready();
    }
}

/// Runs an async block to completion on a runtime of its own, on a thread of its own, so
/// that synchronous harness code works from async tests too.
fn blocking<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T>,
    T: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f()))
            .join()
            .expect("harness thread")
    })
}

/// A gateway configuration whose bindings come from `pg` (plain TCP on loopback).
pub fn gateway_toml_pg(dir: &Path, mqtt_url: &str, influx_url: &str, pg: &Postgres, bindings_extra: &str) -> String {
    let url_file = dir.join("pg-url");
    std::fs::write(&url_file, pg.url()).expect("write the connection string file");
    std::fs::set_permissions(&url_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod 600");
    format!(
        r#"
[gateway]
id = "test-gw"
data_dir = "{data}"
shutdown_grace_ms = 5000

[mqtt]
url = "{mqtt_url}"

[influx]
url = "{influx_url}"
api = "v1"
flush_interval_ms = 100
retry_initial_ms = 100
retry_max_ms = 1000

[bindings]
postgres_url_file = "{url_file}"
sslmode = "disable"
freshness_poll_ms = 100
{bindings_extra}
"#,
        data = dir.join("data").display(),
        url_file = url_file.display(),
    )
}
