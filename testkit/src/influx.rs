//! A private InfluxDB 1.x, and the InfluxQL it is queried with.

use std::path::Path;

use serde_json::{Map, Value};
use tempfile::TempDir;

use crate::http::{http_client, http_get_status};
use crate::ports::free_port;
use crate::process::{ServerProcess, find_binary};

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
            r#"# Written by testkit/src/influx.rs: everything local, small, and quiet.
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
        let mut influx = Influx1 { port, process, http: http_client(), dir };
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
