//! The sink's HTTP behaviour against a scripted endpoint, for answers a real InfluxDB will not
//! give on demand (503 with Retry-After, a 4xx for a good batch) and to see the exact request.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heartguard_gateway::bindings::Destination;
use heartguard_gateway::config::{Influx, InfluxApi};
use heartguard_gateway::queue::{Limits, NewPoint, QueueHandle, Synchronous};
use heartguard_gateway::sink::influx::{InfluxClient, WriteOutcome};
use heartguard_gateway::telemetry::Counters;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
struct Seen {
    head: String,
    body: Vec<u8>,
    at: tokio::time::Instant,
}

/// Answers each request with the next scripted status line + headers (the last one repeats).
async fn scripted(answers: Vec<&'static str>) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut n = 0usize;
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
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
                    break;
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => buf.extend_from_slice(&tmp[..k]),
                    }
                }
                log.lock().expect("lock").push(Seen {
                    head,
                    body: buf[head_end..].to_vec(),
                    at: tokio::time::Instant::now(),
                });
                let answer = answers[n.min(answers.len() - 1)];
                n += 1;
                let resp = format!("{answer}\r\nContent-Length: 0\r\n\r\n");
                if sock.write_all(resp.as_bytes()).await.is_err() {
                    break;
                }
            }
        }
    });
    (url, seen)
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
    let cfg =
        Influx { url, gzip: false, flush_interval_ms: 10, retry_initial_ms: 10, retry_max_ms: 50, ..Influx::default() };
    let (queue, _join) = QueueHandle::open(dir.path(), Synchronous::Full, Limits::default()).expect("queue");
    let dest_id = queue.destination_id(Destination { org: String::new(), bucket: "db".into() }).await.expect("dest");
    let points = (0..3).map(|i| NewPoint { dest_id, line: format!("m v={i}i {i}"), enqueued_ns: 0 }).collect();
    queue.append(points).await.expect("append");

    let client = Arc::new(InfluxClient::new(&cfg).expect("client"));
    let counters = Arc::new(Counters::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let (_tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let sinks = tokio::spawn(heartguard_gateway::sink::run_sinks(
        queue.clone(),
        client,
        cfg,
        counters.clone(),
        rx,
        stop.clone(),
    ));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while queue.stats().await.expect("stats").points > 0 {
        assert!(tokio::time::Instant::now() < deadline, "batch never delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    sinks.await.expect("sinks");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3, "503, 404, then 204");
    for s in &seen {
        assert_eq!(s.body, b"m v=0i 0\nm v=1i 1\nm v=2i 2\n", "the same batch every time");
    }
    assert!(seen[1].at - seen[0].at >= Duration::from_secs(1), "waited at least Retry-After");
    assert_eq!(counters.points_delivered.load(std::sync::atomic::Ordering::Relaxed), 3);
}
