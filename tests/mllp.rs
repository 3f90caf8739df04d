//! HL7 over MLLP against the gateway process and a real InfluxDB 1.x: retries, attribution of
//! multi-device messages, time zones, message size, idle and surplus connections, the peer
//! allowlist and TLS. Each test is an MLLP client of its own gateway.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{DB, Gateway, Influx1, TestCerts, WAIT, eventually, free_port, gateway_bin, wait_count, wait_for_log};
use heartguard_gateway::protocols::hl7;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const DEV_A: &str = "00A0B1FFFEC2D301";
const DEV_B: &str = "00A0B1FFFEC2D302";
const DEV_C: &str = "00A0B1FFFEC2D303";

/// 2024-05-17T10:30:15Z, and that time as HL7 writes it.
const T0_NS: i64 = 1_715_941_815_000_000_000;
const T0: &str = "20240517103015+0000";

fn patient_of(serial: &str) -> String {
    format!("patient-of-{serial}")
}

/// A bindings file for the test devices (no start or end: every reading time is covered).
fn bindings(dir: &Path) -> PathBuf {
    let mut text = String::new();
    for s in [DEV_A, DEV_B, DEV_C] {
        text.push_str(&format!(
            "[[binding]]\nserial = \"{s}\"\ndevice_id = \"dev-{s}\"\nstream_id = \"stream-{s}\"\npatient_id = \"{p}\"\norg_id = \"org-1\"\nsignal_type = \"vital_signs\"\ninflux_org = \"heartguard\"\ninflux_bucket = \"{DB}\"\nmeasurement = \"vital_signs\"\n\n",
            p = patient_of(s)
        ));
    }
    let path = dir.join("bindings.toml");
    std::fs::write(&path, text).expect("write bindings");
    path
}

/// A gateway with MQTT off, the HL7 listener on a free port (`hl7` lines go into `[hl7]`,
/// `extra` after it), and a real InfluxDB.
struct Setup {
    influx: Influx1,
    gw: Gateway,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start(hl7: &str) -> Self {
        Self::start_with(hl7, "", &[]).await
    }

    async fn start_with(hl7: &str, extra: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let influx = Influx1::start();
        influx.create_db(DB).await;
        let port = free_port();
        let toml = format!(
            "[gateway]\nid = \"mllp-test\"\ndata_dir = \"{data}\"\nshutdown_grace_ms = 5000\n\n[mqtt]\nenabled = false\n\n[influx]\nurl = \"{url}\"\napi = \"v1\"\nflush_interval_ms = 100\nretry_initial_ms = 100\nretry_max_ms = 1000\n\n[bindings]\nfile = \"{b}\"\n\n[hl7]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n{hl7}\n\n{extra}\n",
            data = dir.path().join("data").display(),
            url = influx.url(),
            b = bindings(dir.path()).display(),
        );
        let gw = Gateway::start_with_env(gateway_bin(), dir.path(), &toml, env);
        wait_for_log(&gw, "HL7 MLLP listener ready.").await;
        Self { influx, gw, port, _dir: dir }
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(("127.0.0.1", self.port)).await.expect("connect to the MLLP listener")
    }

    /// A connection from another loopback address than 127.0.0.1 (Linux routes 127/8 to `lo`).
    async fn connect_from(&self, ip: &str) -> TcpStream {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(ip.parse::<IpAddr>().expect("ip"), 0)).expect("bind the client to {ip}");
        socket.connect(SocketAddr::from(([127, 0, 0, 1], self.port))).await.expect("connect")
    }

    /// `/readyz`: status and body.
    async fn readyz(&self) -> (u16, String) {
        let url = format!("{}/readyz", self.gw.http_url().await);
        let r = common::http_client().get(&url).send().await.expect("GET /readyz");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    async fn rows(&self) -> Vec<Map<String, Value>> {
        self.influx.rows(DB, "vital_signs").await
    }

    /// The gateway's `/metrics` text.
    async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.gw.http_url().await);
        common::http_client().get(&url).send().await.expect("GET /metrics").text().await.expect("body")
    }

    /// The value of one sample (`name{labels}` exactly as rendered); 0 when absent.
    async fn metric(&self, series: &str) -> f64 {
        sample(&self.metrics().await, series).unwrap_or(0.0)
    }
}

/// Waits until the gateway closes `stream` (end of file or a reset), reading what it sends.
async fn closed_by_gateway<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT, read).await.expect("the gateway closes the connection");
    got
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Sends one MLLP-framed message and returns the (code, control id) of its ACK.
async fn send(stream: &mut TcpStream, msg: &[u8]) -> (String, String) {
    stream.write_all(&hl7::mllp::frame_mllp(msg)).await.expect("send HL7");
    read_ack(stream).await
}

async fn read_ack<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> (String, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !got.ends_with(&[0x1C, 0x0D]) {
            let n = stream.read(&mut buf).await.expect("read ACK");
            assert!(n > 0, "connection closed without an ACK");
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(WAIT, read).await.expect("an ACK within the patience");
    hl7::ack::parse_ack(&got[1..got.len() - 2]).expect("an MSA segment")
}

/// An ORU of one device with a heart rate, all its times `time`.
fn oru(serial: &str, control: &str, time: &str, heart_rate: u16) -> Vec<u8> {
    hl7::build::build_oru(
        serial,
        control,
        time,
        time,
        &hl7::build::Vitals { heart_rate: Some(heart_rate), ..Default::default() },
    )
}

/// HL7 time of `T0` plus `secs`.
fn t(secs: i64) -> String {
    let at = chrono::DateTime::from_timestamp_nanos(T0_NS + secs * 1_000_000_000);
    at.format("%Y%m%d%H%M%S+0000").to_string()
}

fn aa(control: &str) -> (String, String) {
    ("AA".into(), control.into())
}

/// (time, heart rate) of every stored point of `serial`, by time.
fn heart_rates(rows: &[Map<String, Value>], serial: &str) -> Vec<(i64, i64)> {
    let mut v: Vec<(i64, i64)> = rows
        .iter()
        .filter(|r| r["device_id"] == json!(format!("dev-{serial}")))
        .filter_map(|r| Some((r["time"].as_i64()?, r["heart_rate"].as_i64()?)))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_message_that_reuses_a_control_id_is_stored() {
    let s = Setup::start("").await;
    let mut c = s.connect().await;
    // The monitor rebooted and its MSH-10 counter started again: same MSH-3, same MSH-10,
    // a new observation.
    assert_eq!(send(&mut c, &oru(DEV_A, "1", &t(0), 72)).await, aa("1"));
    assert_eq!(send(&mut c, &oru(DEV_A, "1", &t(60), 80)).await, aa("1"));
    wait_count(&s.influx, "vital_signs", 2).await;
    assert_eq!(heart_rates(&s.rows().await, DEV_A), [(T0_NS, 72), (T0_NS + 60_000_000_000, 80)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_cycling_through_its_control_ids_has_every_message_stored() {
    let s = Setup::start("").await;
    let mut c = s.connect().await;
    let mut expected = Vec::new();
    for round in 0..2 {
        for id in 1..=3 {
            let secs = (round * 3 + id) * 60;
            let hr = 60 + secs / 60;
            assert_eq!(send(&mut c, &oru(DEV_A, &id.to_string(), &t(secs), hr as u16)).await, aa(&id.to_string()));
            expected.push((T0_NS + secs * 1_000_000_000, hr));
        }
    }
    wait_count(&s.influx, "vital_signs", 6).await;
    assert_eq!(heart_rates(&s.rows().await, DEV_A), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_resend_is_acknowledged_again_and_stored_once() {
    let s = Setup::start("").await;
    let mut c = s.connect().await;
    let first = oru(DEV_A, "MSG7", T0, 72);
    // The same message sent again by a monitor that got no ACK, once as it was and once with a
    // new MSH-7 (some senders stamp the message when they send it, not when they build it).
    let mut restamped = String::from_utf8(first.clone()).expect("utf8");
    let msh7 = format!("|{T0}||ORU^R01");
    assert!(restamped.contains(&msh7));
    restamped = restamped.replacen(&msh7, &format!("|{}||ORU^R01", t(90)), 1);
    for m in [&first, &first, &restamped.into_bytes()] {
        assert_eq!(send(&mut c, m).await, aa("MSG7"));
    }
    wait_count(&s.influx, "vital_signs", 1).await;
    assert_eq!(heart_rates(&s.rows().await, DEV_A), [(T0_NS, 72)]);
    eventually(WAIT, "two retries counted", || async {
        s.metric("heartguard_ingest_hl7_duplicates_total").await == 2.0
    })
    .await;
    assert_eq!(s.metric("heartguard_queue_appended_total").await, 1.0, "stored once");
}

/// A central station's message with the observations of several devices.
fn multi_device_oru(control: &str) -> Vec<u8> {
    let obx = |n: u32, code: &str, sub: &str, value: u32, unit: &str, obx18: &str| {
        format!("OBX|{n}|NM|{code}^MDC|{sub}|{value}|{unit}^MDC|||||R|||{T0}||||{obx18}\r")
    };
    let mds = |n: u32, sub: &str, dev: &str| {
        format!(
            "OBX|{n}||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|{sub}|||||||X|||||||{dev}^ACME_MON^{dev}^EUI-64\r"
        )
    };
    let mut s = format!(
        "MSH|^~\\&|CMS^CENTRAL^L|WARD3|GW|HOSP|{T0}||ORU^R01^ORU_R01|{control}|P|2.6\rPID|||\rOBR|1|{control}^CMS|{control}^CMS|182777000^monitoring of patient^SCT|||{T0}\r"
    );
    // Monitor A: its MDS row names it; its heart rate says nothing itself.
    s.push_str(&mds(1, "1.0.0.0", DEV_A));
    s.push_str(&obx(2, "147842^MDC_ECG_HEART_RATE", "1.1.1.1", 72, "264864^MDC_DIM_BEAT_PER_MIN", ""));
    // Monitor B likewise, for another patient.
    s.push_str("PID|||\rOBR|2|||182777000^monitoring of patient^SCT\r");
    s.push_str(&mds(3, "2.0.0.0", DEV_B));
    s.push_str(&obx(4, "147842^MDC_ECG_HEART_RATE", "2.1.1.1", 88, "264864^MDC_DIM_BEAT_PER_MIN", ""));
    // A pulse oximeter that names itself in its own OBX-18, inside B's containment tree.
    s.push_str(&obx(
        5,
        "150456^MDC_PULS_OXIM_SAT_O2",
        "2.2.1.1",
        95,
        "262688^MDC_DIM_PERCENT",
        &format!("{DEV_C}^OXI^{DEV_C}^EUI-64"),
    ));
    // An observation that neither names a device nor sits under an MDS: not any one device's.
    s.push_str(&obx(6, "151562^MDC_RESP_RATE", "", 18, "264928^MDC_DIM_RESP_PER_MIN", ""));
    s.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_observation_of_a_multi_device_message_goes_to_its_own_device() {
    let s = Setup::start("").await;
    let mut c = s.connect().await;
    assert_eq!(send(&mut c, &multi_device_oru("CMS1")).await, aa("CMS1"));
    wait_count(&s.influx, "vital_signs", 3).await;
    let rows = s.rows().await;
    let of = |serial: &str| {
        rows.iter()
            .find(|r| r["device_id"] == json!(format!("dev-{serial}")))
            .unwrap_or_else(|| panic!("no point of {serial}: {rows:#?}"))
    };
    let (a, b, c) = (of(DEV_A), of(DEV_B), of(DEV_C));
    assert_eq!((&a["heart_rate"], &a["spo2"], &a["patient_id"]), (&json!(72), &Value::Null, &json!(patient_of(DEV_A))));
    assert_eq!((&b["heart_rate"], &b["spo2"], &b["patient_id"]), (&json!(88), &Value::Null, &json!(patient_of(DEV_B))));
    assert_eq!((&c["spo2"], &c["heart_rate"], &c["patient_id"]), (&json!(95), &Value::Null, &json!(patient_of(DEV_C))));
    for r in &rows {
        assert!(r.get("resp_rate").is_none_or(Value::is_null), "the unattributed respiration rate is stored: {r:#?}");
    }
    eventually(WAIT, "the unattributed observation is counted", || async {
        s.metric(r#"heartguard_decode_rejected_total{protocol="hl7",reason="ambiguous_device"}"#).await == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_without_an_offset_are_read_in_the_configured_zone() {
    let s = Setup::start("time_zone = \"+02:00\"").await;
    let mut c = s.connect().await;
    assert_eq!(send(&mut c, &oru(DEV_A, "Z1", "20240517123015", 72)).await, aa("Z1"));
    // A time with its offset is read as it says.
    assert_eq!(send(&mut c, &oru(DEV_A, "Z2", &t(60), 73)).await, aa("Z2"));
    wait_count(&s.influx, "vital_signs", 2).await;
    assert_eq!(heart_rates(&s.rows().await, DEV_A), [(T0_NS, 72), (T0_NS + 60_000_000_000, 73)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_times_are_read_in_the_gateways_zone_and_daylight_saving_gaps_and_repeats_are_refused() {
    // The default time_zone is the gateway's own, here Berlin's.
    let s = Setup::start_with("", "", &[("TZ", "Europe/Berlin")]).await;
    let mut c = s.connect().await;
    // Summer time: 12:30:15 in Berlin is 10:30:15 UTC.
    assert_eq!(send(&mut c, &oru(DEV_A, "L1", "20240517123015", 72)).await, aa("L1"));
    // 02:30 on 2024-03-31 does not exist there (clocks jump from 02:00 to 03:00)…
    assert_eq!(send(&mut c, &oru(DEV_A, "L2", "20240331023000", 80)).await, aa("L2"));
    // …and 02:30 on 2024-10-27 happens twice (03:00 goes back to 02:00): which one is unknown.
    assert_eq!(send(&mut c, &oru(DEV_A, "L3", "20241027023000", 81)).await, aa("L3"));
    // With its offset, the repeated hour is no riddle.
    assert_eq!(send(&mut c, &oru(DEV_A, "L4", "20241027023000+0100", 82)).await, aa("L4"));
    wait_count(&s.influx, "vital_signs", 2).await;
    assert_eq!(heart_rates(&s.rows().await, DEV_A), [(T0_NS, 72), (1_729_992_600_000_000_000, 82)]);
    eventually(WAIT, "both refusals counted by reason", || async {
        let m = s.metrics().await;
        sample(&m, r#"heartguard_decode_rejected_total{protocol="hl7",reason="nonexistent_local_time"}"#) == Some(1.0)
            && sample(&m, r#"heartguard_decode_rejected_total{protocol="hl7",reason="ambiguous_local_time"}"#)
                == Some(1.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_one_mib_is_taken_when_the_limit_allows_it() {
    let s = Setup::start("max_message_bytes = 4194304").await;
    let mut c = s.connect().await;
    // A 2 MiB message: a long NTE (free text, never read) after the observations.
    let mut big = oru(DEV_A, "BIG1", T0, 72);
    big.extend_from_slice(b"NTE|1||");
    big.resize(2 * 1024 * 1024 - 1, b'x');
    big.push(b'\r');
    assert_eq!(send(&mut c, &big).await, aa("BIG1"));
    wait_count(&s.influx, "vital_signs", 1).await;
    assert_eq!(heart_rates(&s.rows().await, DEV_A), [(T0_NS, 72)]);
    // Past the limit it is still refused.
    let mut huge = big.clone();
    huge.resize(5 * 1024 * 1024, b'x');
    let (code, _) = send(&mut c, &huge).await;
    assert_eq!(code, "AR");
    eventually(WAIT, "the oversized message is counted", || async {
        s.metric(r#"heartguard_decode_rejected_total{protocol="hl7",reason="oversized"}"#).await == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_free_their_slots() {
    let s = Setup::start("max_connections = 2\nidle_timeout_secs = 1").await;
    // Two monitors unplugged mid-connection: their sockets stay open and silent.
    let (mut a, mut b) = (s.connect().await, s.connect().await);
    closed_by_gateway(&mut a).await;
    closed_by_gateway(&mut b).await;
    let mut c = s.connect().await;
    assert_eq!(send(&mut c, &oru(DEV_A, "I1", T0, 72)).await, aa("I1"));
    wait_count(&s.influx, "vital_signs", 1).await;
    assert!(s.metric("heartguard_ingest_hl7_idle_timeouts_total").await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_connections_have_tcp_keepalive() {
    let s = Setup::start("").await;
    let c = s.connect().await;
    let client = c.local_addr().expect("local address");
    // The gateway's end of this connection in /proc/net/tcp: local port = the listener's,
    // remote port = the client's. Timer 02 is the keepalive timer, armed only with
    // SO_KEEPALIVE; it fires within the keepalive idle time (centiseconds).
    let ours = format!(":{:04X}", s.port);
    let theirs = format!(":{:04X}", client.port());
    // The kernel lists the connection as soon as it is established, before the gateway has
    // accepted it and set its options: wait for the keepalive timer, not just the entry.
    let mut timer = None;
    eventually(WAIT, "the gateway's socket has its keepalive timer", || {
        let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
        timer = table.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 5 && f[1].ends_with(&ours) && f[2].ends_with(&theirs)).then(|| f[5].to_owned())
        });
        let armed = timer.as_deref().is_some_and(|t| t.starts_with("02:"));
        async move { armed }
    })
    .await;
    let timer = timer.expect("found");
    let (kind, when) = timer.split_once(':').expect("tr:when");
    assert_eq!(kind, "02", "keepalive timer armed: {timer}");
    assert!(u64::from_str_radix(when, 16).expect("hex") <= 60 * 100, "probes start within 60 s: {timer}");
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_refused_counted_and_reported_in_readiness() {
    let s = Setup::start("max_connections = 1").await;
    eventually(WAIT, "ready", || async { s.readyz().await.0 == 200 }).await;
    let mut first = s.connect().await;
    assert_eq!(send(&mut first, &oru(DEV_A, "R1", T0, 72)).await, aa("R1"));
    // Every slot is taken: the next connection is closed at once, not left in the backlog.
    let mut second = s.connect().await;
    assert!(closed_by_gateway(&mut second).await.is_empty());
    let (code, body) = s.readyz().await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("hl7.max_connections"), "{body}");
    let m = s.metrics().await;
    assert_eq!(sample(&m, "heartguard_ingest_hl7_connections"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "heartguard_ingest_hl7_connections_max"), Some(1.0), "{m}");
    assert_eq!(sample(&m, r#"heartguard_ingest_hl7_connections_refused_total{reason="limit"}"#), Some(1.0), "{m}");
    wait_for_log(&s.gw, "HL7 connection refused: every hl7.max_connections slot is in use").await;
    // The first connection still works; once it is gone, its slot is free again.
    assert_eq!(send(&mut first, &oru(DEV_A, "R2", &t(60), 73)).await, aa("R2"));
    drop(first);
    eventually(WAIT, "the slot is free", || async { s.metric("heartguard_ingest_hl7_connections").await == 0.0 }).await;
    let mut third = s.connect().await;
    assert_eq!(send(&mut third, &oru(DEV_A, "R3", &t(120), 74)).await, aa("R3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_outside_the_allowlist_are_closed_at_once_and_counted() {
    let s = Setup::start("allow = [\"127.0.0.1/32\"]").await;
    let mut stranger = s.connect_from("127.0.0.2").await;
    // Even a whole message gets no answer.
    let _ = stranger.write_all(&hl7::mllp::frame_mllp(&oru(DEV_A, "X1", T0, 99))).await;
    assert!(closed_by_gateway(&mut stranger).await.is_empty(), "no ACK to a peer outside hl7.allow");
    let mut c = s.connect().await;
    assert_eq!(send(&mut c, &oru(DEV_A, "A1", T0, 72)).await, aa("A1"));
    wait_count(&s.influx, "vital_signs", 1).await;
    assert_eq!(heart_rates(&s.rows().await, DEV_A), [(T0_NS, 72)]);
    assert_eq!(s.metric(r#"heartguard_ingest_hl7_connections_refused_total{reason="not_allowed"}"#).await, 1.0);
    wait_for_log(&s.gw, "peer=127.0.0.2:").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_an_unlisted_address_does_not_hold_up_a_listed_sender() {
    let s = Arc::new(Setup::start("allow = [\"127.0.0.1/32\"]\nmax_connections = 2").await);
    let stop = tokio_util::sync::CancellationToken::new();
    let flood = {
        let (s, stop) = (s.clone(), stop.clone());
        tokio::spawn(async move {
            // Connections opened as fast as they go and held open, far more than the slots.
            let mut held = std::collections::VecDeque::new();
            let mut opened = 0u64;
            while !stop.is_cancelled() {
                held.push_back(s.connect_from("127.0.0.2").await);
                opened += 1;
                if held.len() > 200 {
                    held.pop_front();
                }
            }
            opened
        })
    };
    eventually(WAIT, "the flood is refused", || async {
        s.metric(r#"heartguard_ingest_hl7_connections_refused_total{reason="not_allowed"}"#).await >= 100.0
    })
    .await;
    let mut c = s.connect().await;
    for i in 0..5 {
        let control = format!("F{i}");
        assert_eq!(send(&mut c, &oru(DEV_A, &control, &t(i * 60), 70 + i as u16)).await, aa(&control));
    }
    let mut other = s.connect().await;
    assert_eq!(send(&mut other, &oru(DEV_B, "F9", T0, 80)).await, aa("F9"));
    stop.cancel();
    assert!(flood.await.expect("flood") >= 100);
    wait_count(&s.influx, "vital_signs", 6).await;
}

/// A client TLS connection to the listener, trusting the test CA, with a client certificate
/// or without.
async fn connect_tls(
    s: &Setup,
    certs: &TestCerts,
    with_client_cert: bool,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    heartguard_gateway::tls::install_provider();
    let client = with_client_cert.then_some((certs.client_cert.as_path(), certs.client_key.as_path()));
    let config = heartguard_gateway::tls::client_config(&certs.ca, client).expect("client TLS config");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, s.connect().await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_over_tls_serves_clients_that_trust_the_gateway() {
    let certs = TestCerts::generate();
    let s = Setup::start(&format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
        certs.server_cert.display(),
        certs.server_key.display()
    ))
    .await;
    let mut tls = connect_tls(&s, &certs, false).await.expect("TLS handshake");
    tls.write_all(&hl7::mllp::frame_mllp(&oru(DEV_A, "T1", T0, 72))).await.expect("send");
    assert_eq!(read_ack(&mut tls).await, aa("T1"));
    wait_count(&s.influx, "vital_signs", 1).await;
    // Plain MLLP to a TLS listener is no message.
    let mut plain = s.connect().await;
    let _ = plain.write_all(&hl7::mllp::frame_mllp(&oru(DEV_A, "T2", &t(60), 73))).await;
    assert!(!closed_by_gateway(&mut plain).await.ends_with(&[0x1C, 0x0D]), "no ACK in plain text");
    assert_eq!(s.metric(r#"heartguard_ingest_hl7_connections_refused_total{reason="tls"}"#).await, 1.0);
    assert_eq!(s.influx.count(DB, "vital_signs").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ca_makes_a_client_certificate_mandatory() {
    let certs = TestCerts::generate();
    let s = Setup::start(&format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\nclient_ca_file = \"{}\"",
        certs.server_cert.display(),
        certs.server_key.display(),
        certs.ca.display()
    ))
    .await;
    let mut with = connect_tls(&s, &certs, true).await.expect("TLS handshake with a client certificate");
    with.write_all(&hl7::mllp::frame_mllp(&oru(DEV_A, "C1", T0, 72))).await.expect("send");
    assert_eq!(read_ack(&mut with).await, aa("C1"));
    // Without a certificate the gateway ends the handshake (TLS 1.3: the client learns it on
    // its first read) and no message is taken.
    if let Ok(mut without) = connect_tls(&s, &certs, false).await {
        let _ = without.write_all(&hl7::mllp::frame_mllp(&oru(DEV_A, "C2", &t(60), 73))).await;
        assert!(!closed_by_gateway(&mut without).await.ends_with(&[0x1C, 0x0D]), "no ACK without a certificate");
    }
    eventually(WAIT, "the failed handshake is counted", || async {
        s.metric(r#"heartguard_ingest_hl7_connections_refused_total{reason="tls"}"#).await == 1.0
    })
    .await;
    wait_count(&s.influx, "vital_signs", 1).await;
    assert_eq!(heart_rates(&s.rows().await, DEV_A), [(T0_NS, 72)]);
}
