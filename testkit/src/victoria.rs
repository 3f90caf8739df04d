//! A private VictoriaMetrics, the target of the InfluxDB v2 write API in the tests.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use tempfile::TempDir;

use crate::http::{http_client, http_get_status};
use crate::ports::free_port;
use crate::process::{ServerProcess, find_binary};

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
