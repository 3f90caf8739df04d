//! The sink's HTTP behaviour against a scripted endpoint, for answers a real InfluxDB will not
//! give on demand (503 with Retry-After, a 4xx for a good batch, a proxy's error page, a
//! redirect) and to see the exact request; against a real InfluxDB behind a fault-injecting
//! proxy where the points must arrive once the way is clear.

use heartguard_gateway::bindings::table::BindingTable;
use heartguard_gateway::bindings::view::{Freshness, View};
use heartguard_gateway::pipeline::Pipeline;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heartguard_testkit::{Fault, FaultProxy, Influx1, WAIT, empty_400, eventually, html_400, redirect};

use heartguard_gateway::model::Destination;
use heartguard_gateway::queue::handle::QueueHandle;
use heartguard_gateway::queue::points::NewPoint;
use heartguard_gateway::queue::{Limits, Synchronous};
use heartguard_gateway::sink::config::{Influx, InfluxApi};
use heartguard_gateway::sink::influx::{InfluxClient, outcome::WriteOutcome};
use heartguard_gateway::telemetry::Counters;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
struct Seen {
    head: String,
    body: Vec<u8>,
    at: tokio::time::Instant,
}

/// How the fake endpoint answers one request.
#[derive(Clone)]
enum Answer {
    /// A status line plus optional header lines, e.g. "HTTP/1.1 204 No Content".
    Status(String),
    /// A status line and a JSON body.
    Body(String, String),
    /// Wait, then answer.
    Slow(Duration, String),
    /// Close the connection without answering.
    Close,
}

fn status(s: &str) -> Answer {
    Answer::Status(s.to_owned())
}

/// Answers each request with the next scripted status line + headers (the last one repeats).
async fn scripted(answers: Vec<&'static str>) -> (String, Arc<Mutex<Vec<Seen>>>) {
    serve(move |n, _| status(answers[n.min(answers.len() - 1)])).await
}

/// A fake HTTP endpoint: `answer(n, request)` decides the answer to the n-th request.
async fn serve(answer: impl Fn(usize, &Seen) -> Answer + Send + Sync + 'static) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let (log, answer, n) = (log.clone(), answer.clone(), n.clone());
            tokio::spawn(async move {
                loop {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 8192];
                    let head_end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => break 0,
                            Ok(k) => buf.extend_from_slice(&tmp[..k]),
                        }
                    };
                    if head_end == 0 {
                        return;
                    }
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => buf.extend_from_slice(&tmp[..k]),
                        }
                    }
                    let req = Seen { head, body: buf[head_end..].to_vec(), at: tokio::time::Instant::now() };
                    let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let a = answer(i, &req);
                    log.lock().expect("lock").push(req);
                    let resp = match a {
                        Answer::Status(s) => format!("{s}\r\nContent-Length: 0\r\n\r\n"),
                        Answer::Body(s, b) => {
                            format!("{s}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len())
                        }
                        Answer::Slow(d, s) => {
                            tokio::time::sleep(d).await;
                            format!("{s}\r\nContent-Length: 0\r\n\r\n")
                        }
                        Answer::Close => return,
                    };
                    if sock.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, seen)
}

/// The one destination of these tests: bucket (v1: database) "db".
fn db() -> Destination {
    Destination { org: String::new(), bucket: "db".into() }
}

/// A queue in `dir` holding `lines` for one destination, and the sinks running over it.
async fn sinks_over(
    dir: &std::path::Path,
    cfg: Influx,
    lines: &[String],
) -> (QueueHandle, Arc<Counters>, tokio_util::sync::CancellationToken, tokio::task::JoinHandle<()>) {
    let queue = queue_holding(dir, lines).await;
    let (counters, stop, sinks) = start_sinks(&queue, cfg);
    (queue, counters, stop, sinks)
}

/// A queue in `dir` holding `lines` for [`db`].
async fn queue_holding(dir: &std::path::Path, lines: &[String]) -> QueueHandle {
    let (queue, _join) = QueueHandle::open(dir, Synchronous::Full, Limits::default()).expect("queue");
    let dest_id = queue.destination_id(db()).await.expect("dest");
    let points = lines.iter().map(|l| NewPoint { dest_id, line: l.clone(), ..Default::default() }).collect();
    queue.append(points).await.expect("append");
    queue
}

/// The sinks running over `queue`.
fn start_sinks(
    queue: &QueueHandle,
    cfg: Influx,
) -> (Arc<Counters>, tokio_util::sync::CancellationToken, tokio::task::JoinHandle<()>) {
    let client = Arc::new(InfluxClient::new(&cfg).expect("client"));
    let counters = Arc::new(Counters::default());
    let stop = tokio_util::sync::CancellationToken::new();
    // Nothing else commits: the bindings are never read here.
    let (_view_tx, view) = tokio::sync::watch::channel(View::new(BindingTable::default(), Freshness::always()));
    let (pipe, rx) = Pipeline::new(queue.clone(), view, counters.clone());
    let sinks = tokio::spawn(heartguard_gateway::sink::run_sinks(pipe, rx, client, cfg, stop.clone()));
    (counters, stop, sinks)
}

async fn until_empty(queue: &QueueHandle) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while queue.stats().await.expect("stats").points > 0 {
        assert!(tokio::time::Instant::now() < deadline, "queue never emptied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fast(url: String) -> Influx {
    Influx { url, gzip: false, flush_interval_ms: 10, retry_initial_ms: 10, retry_max_ms: 50, ..Influx::default() }
}

fn dead(dir: &std::path::Path) -> Vec<heartguard_gateway::queue::dead_letters::DeadLetter> {
    let conn = heartguard_gateway::queue::schema::open_read_only(dir).expect("db");
    heartguard_gateway::queue::dead_letters::list(&conn, &Default::default(), 10_000).expect("dead letters")
}

#[tokio::test]
async fn too_large_batches_are_split_and_a_single_oversized_line_is_dead_lettered() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 413 for any body of more than two lines, or holding the huge line.
    let (url, seen) = serve(|_, req| {
        let body = String::from_utf8_lossy(&req.body);
        if body.lines().count() > 2 || body.contains("huge") {
            status("HTTP/1.1 413 Request Entity Too Large")
        } else {
            status("HTTP/1.1 204 No Content")
        }
    })
    .await;
    let mut lines: Vec<String> = (0..6).map(|i| format!("m v={i}i {i}")).collect();
    lines.insert(3, format!("m,huge=1 v={}i 99", "9".repeat(10)));
    let (queue, counters, stop, sinks) = sinks_over(dir.path(), fast(url), &lines).await;
    until_empty(&queue).await;
    stop.cancel();
    sinks.await.expect("sinks");
    let written: Vec<String> = seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|r| {
            let b = String::from_utf8_lossy(&r.body);
            b.lines().count() <= 2 && !b.contains("huge")
        })
        .flat_map(|r| String::from_utf8_lossy(&r.body).lines().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    assert_eq!(written, (0..6).map(|i| format!("m v={i}i {i}")).collect::<Vec<_>>(), "every normal line, in order");
    let d = dead(dir.path());
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].reason.as_str(), d[0].status), ("too_large", Some(413)));
    assert!(d[0].line.contains("huge"));
    assert_eq!(counters.delivered_total(), 6);
}

#[tokio::test]
async fn v3_partial_answer_dead_letters_exactly_the_named_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "t\n").expect("token");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod 600");
    let (url, seen) = serve(|n, _| {
        if n == 0 {
            Answer::Body(
                "HTTP/1.1 400 Bad Request".into(),
                r#"{"error":"partial write of line protocol occurred","data":[{"original_line":"m v=1i 1","line_number":2,"error_message":"invalid column type"}]}"#.into(),
            )
        } else {
            status("HTTP/1.1 204 No Content")
        }
    })
    .await;
    let cfg = Influx { api: InfluxApi::V3, token_file: Some(token), ..fast(url) };
    let lines: Vec<String> = (0..4).map(|i| format!("m v={i}i {i}")).collect();
    let (queue, counters, stop, sinks) = sinks_over(dir.path(), cfg, &lines).await;
    until_empty(&queue).await;
    stop.cancel();
    sinks.await.expect("sinks");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1, "the other lines were stored by the partial write; nothing is resent");
    assert!(seen[0].head.starts_with("POST /api/v3/write_lp?db=db&precision=nanosecond "), "{}", seen[0].head);
    assert!(seen[0].head.to_ascii_lowercase().contains("authorization: token t\r\n"));
    let d = dead(dir.path());
    assert_eq!(d.iter().map(|d| d.line.as_str()).collect::<Vec<_>>(), ["m v=1i 1"]);
    assert!(d[0].detail.contains("invalid column type"));
    assert_eq!(counters.delivered_total(), 3);
}

#[tokio::test]
async fn slow_answers_and_connections_cut_mid_request_are_retried_without_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, seen) = serve(|n, _| match n {
        0 => Answer::Slow(Duration::from_secs(3), "HTTP/1.1 204 No Content".into()),
        1 => Answer::Close,
        _ => status("HTTP/1.1 204 No Content"),
    })
    .await;
    let cfg = Influx { request_timeout_ms: 500, ..fast(url) };
    let lines: Vec<String> = (0..3).map(|i| format!("m v={i}i {i}")).collect();
    let (queue, counters, stop, sinks) = sinks_over(dir.path(), cfg, &lines).await;
    until_empty(&queue).await;
    stop.cancel();
    sinks.await.expect("sinks");
    let seen = seen.lock().expect("lock").clone();
    assert!(seen.len() >= 3, "timed out, cut, then written: {}", seen.len());
    assert!(seen.iter().all(|s| s.body == b"m v=0i 0\nm v=1i 1\nm v=2i 2\n"));
    assert_eq!(counters.delivered_total(), 3);
    assert!(dead(dir.path()).is_empty());
}

fn gunzip(b: &[u8]) -> String {
    let mut s = String::new();
    flate2::read::GzDecoder::new(b).read_to_string(&mut s).expect("gzip body");
    s
}

#[tokio::test]
async fn v2_request_carries_org_bucket_precision_token_and_gzip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cr3t\n").expect("token");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod 600");
    let (url, seen) = scripted(vec!["HTTP/1.1 204 No Content"]).await;
    let client = InfluxClient::new(&Influx { url, api: InfluxApi::V2, token_file: Some(token), ..Influx::default() })
        .expect("client");
    let dest = Destination { org: "heartguard".into(), bucket: "heartguard_vitals".into() };
    let out = client.write(&dest, b"m,a=b v=1i 1\nm,a=b v=2i 2\n".to_vec()).await;
    assert_eq!(out, WriteOutcome::Written);
    let seen = seen.lock().expect("lock").clone();
    let head = seen[0].head.to_ascii_lowercase();
    assert!(head.starts_with("post /api/v2/write?org=heartguard&bucket=heartguard_vitals&precision=ns "), "{head}");
    assert!(head.contains("authorization: token s3cr3t\r\n"), "{head}");
    assert!(head.contains("content-encoding: gzip\r\n"), "{head}");
    assert_eq!(gunzip(&seen[0].body), "m,a=b v=1i 1\nm,a=b v=2i 2\n");
}

#[tokio::test]
async fn v1_request_uses_basic_auth_and_db_rp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "pa55\n").expect("pw");
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod 600");
    let (url, seen) = scripted(vec!["HTTP/1.1 204 No Content"]).await;
    let cfg = Influx {
        url,
        api: InfluxApi::V1,
        username: Some("gw".into()),
        password_file: Some(pw),
        gzip: false,
        ..Influx::default()
    };
    let client = InfluxClient::new(&cfg).expect("client");
    let dest = Destination { org: String::new(), bucket: "vitals/30d".into() };
    assert_eq!(client.write(&dest, b"m v=1i 1\n".to_vec()).await, WriteOutcome::Written);
    let seen = seen.lock().expect("lock").clone();
    assert!(seen[0].head.starts_with("POST /write?db=vitals&rp=30d&precision=ns "), "{}", seen[0].head);
    // "gw:pa55" in base64.
    assert!(seen[0].head.to_ascii_lowercase().contains("authorization: basic z3c6cge1nq==\r\n"), "{}", seen[0].head);
    assert_eq!(seen[0].body, b"m v=1i 1\n");
}

#[tokio::test]
async fn retry_after_is_honoured_and_a_4xx_keeps_the_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, seen) = scripted(vec![
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1",
        "HTTP/1.1 404 Not Found",
        "HTTP/1.1 204 No Content",
    ])
    .await;
    let lines: Vec<String> = (0..3).map(|i| format!("m v={i}i {i}")).collect();
    let (queue, counters, stop, sinks) = sinks_over(dir.path(), fast(url), &lines).await;
    until_empty(&queue).await;
    stop.cancel();
    sinks.await.expect("sinks");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3, "503, 404, then 204");
    for s in &seen {
        assert_eq!(s.body, b"m v=0i 0\nm v=1i 1\nm v=2i 2\n", "the same batch every time");
    }
    assert!(seen[1].at - seen[0].at >= Duration::from_secs(1), "waited at least Retry-After");
    assert_eq!(counters.delivered_total(), 3);
}

/// `SELECT v FROM measurement` in database "db": each point's (time, v), by time.
async fn stored(influx: &Influx1, measurement: &str) -> Vec<(i64, i64)> {
    influx
        .rows("db", measurement)
        .await
        .iter()
        .map(|r| (r["time"].as_i64().expect("time"), r["v"].as_i64().expect("integer v")))
        .collect()
}

/// Waits until `proxy` answered `n` requests, or the queue emptied (then nothing waits for
/// the proxy any more, and the caller's assertions say what went wrong).
async fn answered_or_emptied(proxy: &FaultProxy, queue: &QueueHandle, n: usize) {
    eventually(WAIT, &format!("{n} requests answered by the proxy"), || async {
        proxy.requests().len() >= n || queue.stats().await.expect("stats").points == 0
    })
    .await;
}

#[tokio::test]
async fn influxdb_partial_writes_dead_letter_exactly_the_refused_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let influx = Influx1::start();
    influx.create_db("db").await;
    // `v` is an integer in this series from now on.
    assert_eq!(influx.write("db", "m v=0i 0").await.0, 204);
    let mut lines: Vec<String> = (1..=10).map(|i| format!("m v={i}i {i}")).collect();
    // InfluxDB 1.x answers these with `partial write: unable to parse …` and
    // `partial write: field type conflict: …`, storing the rest.
    lines.insert(3, "m v= 100".into());
    lines.insert(7, "m v=\"text\" 101".into());
    let (queue, counters, stop, sinks) = sinks_over(dir.path(), fast(influx.url()), &lines).await;
    until_empty(&queue).await;
    stop.cancel();
    sinks.await.expect("sinks");
    assert_eq!(stored(&influx, "m").await, (0..=10).map(|i| (i, i)).collect::<Vec<_>>(), "every good line");
    let d = dead(dir.path());
    let mut refused: Vec<(&str, &str)> = d.iter().map(|d| (d.line.as_str(), d.reason.as_str())).collect();
    refused.sort();
    assert_eq!(refused, [("m v= 100", "rejected"), ("m v=\"text\" 101", "rejected")]);
    assert!(d.iter().any(|d| d.detail.contains("unable to parse")), "{d:?}");
    assert!(d.iter().any(|d| d.detail.contains("field type conflict")), "{d:?}");
    assert_eq!(counters.delivered_total(), 10);
}

#[tokio::test]
async fn influxdb_answer_made_unreadable_by_a_control_character_dead_letters_that_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let influx = Influx1::start();
    influx.create_db("db").await;
    // InfluxDB 1.x copies the line it cannot parse into the `X-Influxdb-Error` header, where the
    // control character makes the whole answer unreadable. The encoder never writes such a
    // line; a replayed `damaged` dead letter can hold one.
    let mut lines: Vec<String> = (0..6).map(|i| format!("m v={i}i {i}")).collect();
    lines.insert(2, "m v=\u{1} 99".into());
    let (queue, _counters, stop, sinks) = sinks_over(dir.path(), fast(influx.url()), &lines).await;
    until_empty(&queue).await;
    stop.cancel();
    sinks.await.expect("sinks");
    assert_eq!(stored(&influx, "m").await, (0..6).map(|i| (i, i)).collect::<Vec<_>>());
    let d = dead(dir.path());
    assert_eq!(d.iter().map(|d| d.line.as_str()).collect::<Vec<_>>(), ["m v=\u{1} 99"]);
}

/// A 400 whose header InfluxDB 1.x would have made unreadable, for a batch without any line
/// that could cause it.
fn unreadable_400() -> Fault {
    Fault::Answer(
        "HTTP/1.1 400 Bad Request\r\nX-Influxdb-Error: unable to parse '\u{1}'\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            .into(),
    )
}

#[tokio::test]
async fn a_400_that_is_not_influxdbs_keeps_every_point_until_influxdb_takes_them() {
    let influx = Influx1::start();
    influx.create_db("db").await;
    for (name, fault) in [("html", html_400()), ("empty", empty_400()), ("unreadable", unreadable_400())] {
        let dir = tempfile::tempdir().expect("tempdir");
        let clear = Arc::new(AtomicBool::new(false));
        let proxy = {
            let clear = clear.clone();
            FaultProxy::start(influx.port, move |_, _| if clear.load(SeqCst) { Fault::Forward } else { fault.clone() })
                .await
        };
        let measurement = format!("m_{name}");
        let lines: Vec<String> = (0..20).map(|i| format!("{measurement} v={i}i {i}")).collect();
        let (queue, counters, stop, sinks) = sinks_over(dir.path(), fast(proxy.url()), &lines).await;
        answered_or_emptied(&proxy, &queue, 3).await;
        assert!(dead(dir.path()).is_empty(), "{name}: a 400 that is not InfluxDB's dead-letters nothing");
        assert_eq!(queue.stats().await.expect("stats").points, 20, "{name}: every point still waits");
        let why = counters.destination(&db()).last_error().unwrap_or_default();
        let reason = if name == "unreadable" { "unreadable answer" } else { "HTTP 400" };
        assert!(why.contains(reason), "{name}: status shows the reason: {why}");
        assert!(counters.destination(&db()).failing.load(SeqCst), "{name}");

        clear.store(true, SeqCst);
        until_empty(&queue).await;
        stop.cancel();
        sinks.await.expect("sinks");
        assert_eq!(stored(&influx, &measurement).await, (0..20).map(|i| (i, i)).collect::<Vec<_>>(), "{name}");
        assert!(dead(dir.path()).is_empty(), "{name}");
        assert_eq!(counters.delivered_total(), 20, "{name}");
    }
}

#[tokio::test]
async fn redirects_are_not_followed_and_nothing_is_deleted_before_influxdb_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let influx = Influx1::start();
    influx.create_db("db").await;
    // Each points at the real InfluxDB: /ping answers a GET with 204, /write takes the body.
    let ping = format!("http://gw:s3cr3t@127.0.0.1:{}/ping", influx.port);
    let write = format!("http://gw:s3cr3t@127.0.0.1:{}/write?db=db&precision=ns", influx.port);
    let clear = Arc::new(AtomicBool::new(false));
    let proxy = {
        let clear = clear.clone();
        FaultProxy::start(influx.port, move |n, _| match n % 4 {
            _ if clear.load(SeqCst) => Fault::Forward,
            0 => redirect(301, &ping),
            1 => redirect(302, &ping),
            2 => redirect(303, &ping),
            _ => redirect(307, &write),
        })
        .await
    };
    let lines: Vec<String> = (0..20).map(|i| format!("m v={i}i {i}")).collect();
    let (queue, counters, stop, sinks) = sinks_over(dir.path(), fast(proxy.url()), &lines).await;
    answered_or_emptied(&proxy, &queue, 4).await;
    assert_eq!(queue.stats().await.expect("stats").points, 20, "nothing deleted on a redirect");
    let why = counters.destination(&db()).last_error().unwrap_or_default();
    assert!(why.contains(&format!("127.0.0.1:{}/", influx.port)), "status shows where it pointed: {why}");
    assert!(!why.contains("s3cr3t"), "without credentials: {why}");

    clear.store(true, SeqCst);
    until_empty(&queue).await;
    stop.cancel();
    sinks.await.expect("sinks");
    assert_eq!(stored(&influx, "m").await, (0..20).map(|i| (i, i)).collect::<Vec<_>>());
    assert!(dead(dir.path()).is_empty());
}

/// A scripted InfluxDB 3 `write_lp`: stores every line but those holding `bad`, refuses those
/// with a partial-write answer naming at most 100 of them (as the server does), and records
/// what it stored.
async fn v3_server() -> (String, Arc<Mutex<Vec<Seen>>>, Arc<Mutex<Vec<String>>>) {
    let stored = Arc::new(Mutex::new(Vec::new()));
    let log = stored.clone();
    let (url, seen) = serve(move |_, req| {
        let body = String::from_utf8_lossy(&req.body).into_owned();
        let mut refused = Vec::new();
        for (i, line) in body.lines().enumerate() {
            if line.contains("bad") {
                refused.push(serde_json::json!({
                    "original_line": line, "line_number": i + 1, "error_message": "invalid column type"
                }));
            } else {
                log.lock().expect("lock").push(line.to_owned());
            }
        }
        refused.truncate(100);
        if refused.is_empty() {
            status("HTTP/1.1 204 No Content")
        } else {
            let answer = serde_json::json!({"error": "partial write of line protocol occurred", "data": refused});
            Answer::Body("HTTP/1.1 400 Bad Request".into(), answer.to_string())
        }
    })
    .await;
    (url, seen, stored)
}

fn v3_cfg(dir: &std::path::Path, url: String) -> Influx {
    let token = dir.join("token");
    std::fs::write(&token, "t\n").expect("token");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod 600");
    Influx { api: InfluxApi::V3, token_file: Some(token), ..fast(url) }
}

#[tokio::test]
async fn v3_refused_lines_stay_queued_while_the_dead_letters_cannot_be_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, seen, stored) = v3_server().await;
    let lines: Vec<String> =
        (0..12).map(|i| if i % 5 == 3 { format!("m,bad=1 v={i}i {i}") } else { format!("m v={i}i {i}") }).collect();
    let queue = queue_holding(dir.path(), &lines).await;
    // Another connection to the queue database makes every move to the dead letters fail,
    // as a full disk or a long operator transaction would.
    let other = rusqlite::Connection::open(dir.path().join(heartguard_gateway::queue::schema::DB_FILE)).expect("db");
    other.busy_timeout(Duration::from_secs(10)).expect("busy timeout");
    other
        .execute_batch(
            "CREATE TRIGGER refuse_dead_letters BEFORE INSERT ON dead_letters BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
        )
        .expect("trigger");
    let (counters, stop, sinks) = start_sinks(&queue, v3_cfg(dir.path(), url));
    eventually(WAIT, "the partial write answered twice", || async {
        let answered = seen.lock().expect("lock").len();
        answered >= 2 || queue.stats().await.expect("stats").points == 0
    })
    .await;
    assert_eq!(
        queue.stats().await.expect("stats").points,
        12,
        "nothing deleted while its refused lines could not move"
    );
    assert!(dead(dir.path()).is_empty());

    other.execute_batch("DROP TRIGGER refuse_dead_letters;").expect("drop trigger");
    until_empty(&queue).await;
    stop.cancel();
    sinks.await.expect("sinks");
    let mut refused: Vec<String> = dead(dir.path()).into_iter().map(|d| d.line).collect();
    refused.sort();
    assert_eq!(refused, ["m,bad=1 v=3i 3", "m,bad=1 v=8i 8"], "exactly the refused lines");
    let stored = stored.lock().expect("lock").clone();
    for l in lines.iter().filter(|l| !l.contains("bad")) {
        assert!(stored.contains(l), "{l} stored");
    }
    assert_eq!(counters.delivered_total(), 10);
}

#[tokio::test]
async fn a_v3_answer_that_cannot_name_every_refused_line_is_split_until_it_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, _seen, stored) = v3_server().await;
    // 120 refused lines: the server names 100 of them, and says nothing of the others.
    let lines: Vec<String> =
        (0..160).map(|i| if i % 4 == 0 { format!("m v={i}i {i}") } else { format!("m,bad=1 v={i}i {i}") }).collect();
    let (queue, _counters, stop, sinks) = sinks_over(dir.path(), v3_cfg(dir.path(), url), &lines).await;
    until_empty(&queue).await;
    stop.cancel();
    sinks.await.expect("sinks");
    let refused: std::collections::BTreeSet<String> = dead(dir.path()).into_iter().map(|d| d.line).collect();
    let want: std::collections::BTreeSet<String> = lines.iter().filter(|l| l.contains("bad")).cloned().collect();
    assert_eq!(refused.len(), 120, "every refused line is a dead letter");
    assert_eq!(refused, want);
    let stored = stored.lock().expect("lock").clone();
    assert!(lines.iter().filter(|l| !l.contains("bad")).all(|l| stored.contains(l)));
}

#[tokio::test]
async fn a_huge_answer_is_read_only_as_far_as_needed() {
    use std::sync::atomic::AtomicUsize;
    // A 400 whose body never ends (a proxy streaming something else), sent at a pace the
    // client always keeps up with: how much went out before the client hung up is how much
    // the client read.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let sent = Arc::new(AtomicUsize::new(0));
    let server = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 64 * 1024];
            let _ = sock.read(&mut buf).await;
            let head = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n";
            sock.write_all(head.as_bytes()).await.expect("head");
            let chunk = format!("2000\r\n{}\r\n", "<p>".repeat(0x2000 / 3 + 1).get(..0x2000).expect("chunk"));
            while sent.load(SeqCst) < 64 * 1024 * 1024 {
                if sock.write_all(chunk.as_bytes()).await.is_err() || sock.flush().await.is_err() {
                    return;
                }
                sent.fetch_add(0x2000, SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let client =
        InfluxClient::new(&Influx { url, gzip: false, request_timeout_ms: 3000, ..Influx::default() }).expect("client");
    let out = client.write(&db(), b"m v=1i 1\n".to_vec()).await;
    assert!(format!("{out:?}").contains("400"), "{out:?}");
    server.await.expect("server");
    let sent = sent.load(SeqCst);
    assert!(sent < 1024 * 1024, "the client read {sent} bytes of an endless answer");
}

/// A `tracing` writer into a shared buffer: what the sinks logged, as the daemon prints it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures what this thread logs until the guard drops (a current-thread runtime runs
    /// every task on it).
    fn start() -> (Self, tracing::subscriber::DefaultGuard) {
        let c = Captured::default();
        let w = c.clone();
        let sub = tracing_subscriber::fmt().with_ansi(false).with_writer(move || w.clone()).finish();
        (c, tracing::subscriber::set_default(sub))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

#[tokio::test]
async fn every_change_of_the_failure_reason_is_logged() {
    let (log, _guard) = Captured::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let answer = |s: &str| Fault::Answer(format!("HTTP/1.1 {s}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"));
    let script = [
        answer("503 Service Unavailable"),
        answer("503 Service Unavailable"),
        answer("404 Not Found"),
        answer("404 Not Found"),
        html_400(),
        html_400(),
        redirect(302, "https://influx.example/write"),
        redirect(302, "https://influx.example/write"),
        answer("204 No Content"),
    ];
    // Nothing is forwarded: port 9 (discard) is never dialled.
    let proxy = FaultProxy::start(9, move |n, _| script[n.min(script.len() - 1)].clone()).await;
    let lines: Vec<String> = (0..3).map(|i| format!("m v={i}i {i}")).collect();
    let (queue, _counters, stop, sinks) = sinks_over(dir.path(), fast(proxy.url()), &lines).await;
    until_empty(&queue).await;
    stop.cancel();
    sinks.await.expect("sinks");
    let text = log.text();
    let at = |what: &str| text.find(what).unwrap_or_else(|| panic!("{what:?} logged:\n{text}"));
    assert!(at("HTTP 503") < at("status=404"), "{text}");
    assert!(at("status=404") < at("status=400"), "{text}");
    assert!(at("status=400") < at("https://influx.example/write"), "{text}");
    assert!(at("https://influx.example/write") < at("InfluxDB accepts writes again."), "{text}");
}

#[tokio::test]
async fn batches_grow_back_after_413s_once_larger_bodies_are_accepted() {
    let (log, _guard) = Captured::start();
    let dir = tempfile::tempdir().expect("tempdir");
    // A limit of 10 lines for the first 60 requests, then none.
    let (url, seen) = serve(|n, req| {
        if n < 60 && String::from_utf8_lossy(&req.body).lines().count() > 10 {
            status("HTTP/1.1 413 Request Entity Too Large")
        } else {
            status("HTTP/1.1 204 No Content")
        }
    })
    .await;
    let lines: Vec<String> = (0..6000).map(|i| format!("m v={i}i {i}")).collect();
    let cfg = Influx { batch_max_lines: 64, ..fast(url) };
    let (queue, counters, stop, sinks) = sinks_over(dir.path(), cfg, &lines).await;
    until_empty(&queue).await;
    stop.cancel();
    sinks.await.expect("sinks");
    let sizes: Vec<usize> =
        seen.lock().expect("lock").iter().map(|r| String::from_utf8_lossy(&r.body).lines().count()).collect();
    assert!(sizes[..60].iter().all(|&n| n <= 64), "{sizes:?}");
    assert!(sizes[..60].iter().filter(|&&n| n <= 10).count() > 30, "smaller batches while refused: {sizes:?}");
    let back = sizes[60..].iter().position(|&n| n == 64).unwrap_or_else(|| panic!("never 64 again: {sizes:?}"));
    assert!(sizes[60 + back..sizes.len() - 1].iter().all(|&n| n == 64), "and 64 from then on: {sizes:?}");
    assert_eq!(counters.delivered_total(), 6000);
    assert_eq!(log.text().matches("back to the configured size").count(), 1, "{}", log.text());
}
