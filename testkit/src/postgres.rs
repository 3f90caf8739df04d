//! A private PostgreSQL cluster made with initdb and loaded with the central schema.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::http::tcp_accepts;
use crate::ports::free_port;
use crate::process::{STARTUP_TIMEOUT, ServerProcess};
use crate::repo::repo_root;

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
            let root = repo_root();
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
