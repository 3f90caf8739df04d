//! End to end for bedside devices: simulated devices on pseudo-terminals and HL7 over TCP →
//! the gateway process → a real InfluxDB 1.x. No MQTT broker: `mqtt.enabled = false`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{DB, Gateway, Influx1, WAIT, eventually, free_port, gateway_bin, wait_count, wait_for_log};
use heartguard_gateway::protocols::{datex, hl7, masimo, nonin};
use heartguard_gateway::simulate::Pty;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NONIN: &str = "NONIN-E2E-1";
const MASIMO: &str = "0000093112";
const DATEX: &str = "GE-E2E-1";
const HL7_DEVICE: &str = "0123456789ABCDEF";

/// Device id and patient id of each test device's binding.
fn ids(serial: &str) -> (String, String) {
    (format!("dev-{serial}"), format!("patient-of-{serial}"))
}

/// A bindings file for the test devices: no start, no end, so any reading time is covered.
fn bindings(dir: &Path) -> PathBuf {
    let mut text = String::new();
    for s in [NONIN, MASIMO, DATEX, HL7_DEVICE] {
        let (device, patient) = ids(s);
        text.push_str(&format!(
            "[[binding]]\nserial = \"{s}\"\ndevice_id = \"{device}\"\nstream_id = \"stream-{s}\"\npatient_id = \"{patient}\"\norg_id = \"org-1\"\nsignal_type = \"vital_signs\"\ninflux_org = \"heartguard\"\ninflux_bucket = \"{DB}\"\nmeasurement = \"vital_signs\"\n\n[binding.tags]\nsource = \"e2e\"\n\n"
        ));
    }
    let path = dir.join("bindings.toml");
    std::fs::write(&path, text).expect("write bindings");
    path
}

fn link(target: &str, at: &Path) {
    let _ = std::fs::remove_file(at);
    std::os::unix::fs::symlink(target, at).expect("symlink");
}

fn toml(dir: &Path, influx: &Influx1, serial: &str, hl7_port: Option<u16>) -> String {
    let hl7 = hl7_port.map(|p| format!("[hl7]\nenabled = true\nlisten = \"127.0.0.1:{p}\"\n")).unwrap_or_default();
    format!(
        "[gateway]\nid = \"e2e-devices\"\ndata_dir = \"{data}\"\nshutdown_grace_ms = 5000\n\n[mqtt]\nenabled = false\n\n[influx]\nurl = \"{url}\"\napi = \"v1\"\nflush_interval_ms = 100\nretry_initial_ms = 100\nretry_max_ms = 1000\n\n[bindings]\nfile = \"{b}\"\n\n{serial}\n{hl7}",
        data = dir.join("data").display(),
        url = influx.url(),
        b = bindings(dir).display(),
    )
}

/// Reads from a pseudo-terminal master until `expected` arrived (the gateway's start command).
async fn expect_from_gateway(pty: &Pty, expected: &[u8]) {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let read = async {
        while !got.windows(expected.len()).any(|w| w == expected) {
            let n = pty.master.read(&mut buf).await.expect("read the pseudo-terminal");
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(WAIT, read).await.expect("the gateway sent its start command");
}

async fn write(pty: &Pty, bytes: &[u8]) {
    pty.master.write_all(bytes).await.expect("write the pseudo-terminal");
}

fn row<'a>(rows: &'a [Map<String, Value>], serial: &str, time_ns: Option<i64>) -> &'a Map<String, Value> {
    let (device, _) = ids(serial);
    rows.iter()
        .find(|r| r["device_id"] == json!(device) && time_ns.is_none_or(|t| r["time"] == json!(t)))
        .unwrap_or_else(|| panic!("no row of {serial} at {time_ns:?}: {rows:#?}"))
}

fn assert_fields(r: &Map<String, Value>, expected: &[(&str, Value)]) {
    for (k, v) in expected {
        assert_eq!(&r[*k], v, "field {k} in {r:#?}");
    }
}

/// Sends one MLLP-framed message and returns the (code, control id) of the ACK.
async fn send_hl7(stream: &mut tokio::net::TcpStream, msg: &[u8]) -> (String, String) {
    stream.write_all(&hl7::mllp::frame_mllp(msg)).await.expect("send HL7");
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

/// The worked PCD-01 example of protocols.md, patient name and MRN included (a seed of the
/// HL7 fuzz corpus, byte for byte the message the unit tests decode).
fn worked_oru() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode_hl7/oru_example");
    let msg = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(msg.len(), 1254);
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protocol_reaches_influxdb_with_its_values_and_tags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let influx = Influx1::start();
    influx.create_db(DB).await;
    let (p_nonin, p_masimo, p_datex) =
        (Pty::open().expect("pty"), Pty::open().expect("pty"), Pty::open().expect("pty"));
    // Ports are configured by stable symlinks, as /dev/serial/by-id would be.
    let by_id = dir.path().join("by-id");
    std::fs::create_dir_all(&by_id).expect("mkdir");
    for (name, pty) in [("nonin", &p_nonin), ("masimo", &p_masimo), ("datex", &p_datex)] {
        link(&pty.path, &by_id.join(name));
    }
    let serial = format!(
        "[[serial]]\npath = \"{b}/nonin\"\nprotocol = \"nonin_df8\"\nserial = \"{NONIN}\"\n\n[[serial]]\npath = \"{b}/masimo\"\nprotocol = \"masimo_ascii1\"\n\n[[serial]]\npath = \"{b}/datex\"\nprotocol = \"datex_s5\"\nserial = \"{DATEX}\"\n",
        b = by_id.display()
    );
    let hl7_port = free_port();
    let gw = Gateway::start(gateway_bin(), dir.path(), &toml(dir.path(), &influx, &serial, Some(hl7_port)));
    wait_for_log(&gw, "HL7 MLLP listener ready.").await;

    // Each device gets its start command once the gateway opened the port.
    expect_from_gateway(&p_nonin, &nonin::set_format_command(nonin::Format::Df8)).await;
    expect_from_gateway(&p_datex, &datex::request_frame(5, datex::ALL_CLASSES, 9)).await;
    wait_for_log(&gw, "protocol=masimo_ascii1").await;

    // Pulse rate 130 (≥ 128: the case other decoders get wrong), SpO2 95, after line noise.
    write(&p_nonin, &[0x06, 0x00, 0x13]).await;
    write(&p_nonin, &nonin::build_df8(Some(130), Some(95), false)).await;
    let when = chrono::NaiveDate::from_ymd_opt(2024, 5, 17).and_then(|d| d.and_hms_opt(10, 30, 15)).expect("date");
    write(&p_masimo, masimo::build_line(when, MASIMO, Some(97), Some(72), Some(2.28), 0x800).as_bytes()).await;
    let record = datex::build_displayed_record(
        0x6647_31B7,
        &datex::Displayed {
            ecg_hr: Some(126),
            nibp: Some([12000, 8000, 9300]),
            nibp_hr: Some(70),
            t1: Some(3680),
            spo2: Some(9700),
            spo2_pr: Some(126),
            ..Default::default()
        },
    );
    write(&p_datex, &datex::frame(&record)).await;

    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", hl7_port)).await.expect("connect to the MLLP listener");
    assert_eq!(send_hl7(&mut tcp, &worked_oru()).await, ("AA".into(), "MSG00001".into()));
    // A retry of the same message is acknowledged again and stored once.
    assert_eq!(send_hl7(&mut tcp, &worked_oru()).await, ("AA".into(), "MSG00001".into()));
    let (code, _) = send_hl7(&mut tcp, b"MSH|^~\\&|X|Y|GW|H|20240517103015||ADT^A01|C9|P|2.6\r").await;
    assert_eq!(code, "AR");

    wait_count(&influx, "vital_signs", 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = influx.rows(DB, "vital_signs").await;
    assert_eq!(rows.len(), 5, "{rows:#?}");

    let n = row(&rows, NONIN, None);
    assert_fields(
        n,
        &[
            ("pulse_rate", json!(130)),
            ("spo2", json!(95)),
            ("sensor_off", json!(false)),
            ("artifact", json!(false)),
            ("low_perfusion", json!(false)),
            ("heart_rate", Value::Null),
            ("patient_id", json!(ids(NONIN).1)),
            ("stream_id", json!(format!("stream-{NONIN}"))),
            ("signal_type", json!("vital_signs")),
            ("source", json!("e2e")),
        ],
    );
    let m = row(&rows, MASIMO, None);
    assert_fields(
        m,
        &[
            ("spo2", json!(97)),
            ("pulse_rate", json!(72)),
            ("perfusion_index", json!(2.28)),
            ("patient_id", json!(ids(MASIMO).1)),
        ],
    );
    let d = row(&rows, DATEX, None);
    assert_fields(
        d,
        &[
            ("heart_rate", json!(126)),
            ("systolic_bp", json!(120)),
            ("diastolic_bp", json!(80)),
            ("mean_bp", json!(93)),
            ("temperature", json!(36.8)),
            ("spo2", json!(97)),
            ("pulse_rate", json!(126)),
            ("patient_id", json!(ids(DATEX).1)),
        ],
    );
    // HL7: device time, one point for the vitals and one for the earlier NIBP.
    let vitals = row(&rows, HL7_DEVICE, Some(1_715_941_815_000_000_000));
    assert_fields(
        vitals,
        &[("heart_rate", json!(72)), ("spo2", json!(97)), ("pulse_rate", json!(71)), ("temperature", json!(36.8))],
    );
    let nibp = row(&rows, HL7_DEVICE, Some(1_715_941_740_000_000_000));
    assert_fields(nibp, &[("systolic_bp", json!(120)), ("diastolic_bp", json!(80)), ("mean_bp", json!(93))]);

    // Nothing of the patient's (PID-3, PID-5, PV1-3) reaches InfluxDB or the logs.
    let everything = format!("{rows:?}{}", gw.log());
    for personal in ["DOE", "JOHN", "12345^", "BED12"] {
        assert!(!everything.contains(personal), "{personal} leaked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplugged_device_is_reopened_and_the_watchdog_reports_silence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let influx = Influx1::start();
    influx.create_db(DB).await;
    let path = dir.path().join("usb-nonin");
    let first = Pty::open().expect("pty");
    link(&first.path, &path);
    let serial = format!(
        "[[serial]]\npath = \"{}\"\nprotocol = \"nonin_df8\"\nserial = \"{NONIN}\"\nframe_timeout_secs = 1\n",
        path.display()
    );
    let gw = Gateway::start(gateway_bin(), dir.path(), &toml(dir.path(), &influx, &serial, None));
    expect_from_gateway(&first, &nonin::set_format_command(nonin::Format::Df8)).await;
    wait_for_log(&gw, "No frame from the serial device").await;
    write(&first, &nonin::build_df8(Some(72), Some(98), false)).await;
    wait_count(&influx, "vital_signs", 1).await;
    wait_for_log(&gw, "Frames from the serial device again.").await;

    // Unplug: the pseudo-terminal goes away; the gateway sees EOF/EIO and cannot reopen.
    drop(first);
    wait_for_log(&gw, "Serial device disconnected").await;
    wait_for_log(&gw, "Cannot open the serial port").await;
    // `status` shows the port as disconnected (the status file is rewritten every 5 s).
    let data = dir.path().join("data");
    eventually(WAIT, "status shows the port disconnected", || {
        let (_, out, _) = common::gateway_cli(gateway_bin(), &["status", "--data-dir", data.to_str().expect("utf8")]);
        async move { out.contains("(nonin_df8): disconnected") }
    })
    .await;

    // Replug: a new terminal behind the same by-id path.
    let second = Pty::open().expect("pty");
    link(&second.path, &path);
    expect_from_gateway(&second, &nonin::set_format_command(nonin::Format::Df8)).await;
    write(&second, &nonin::build_df8(Some(131), Some(97), false)).await;
    wait_count(&influx, "vital_signs", 2).await;
    let rows = influx.rows(DB, "vital_signs").await;
    assert!(rows.iter().any(|r| r["pulse_rate"] == json!(131)), "{rows:#?}");

    // Each transition is logged once, not once per attempt (no busy loop either).
    let log = gw.log();
    assert_eq!(log.matches("Serial device disconnected").count(), 1, "{log}");
    assert_eq!(log.matches("Cannot open the serial port").count(), 1, "{log}");
    assert_eq!(log.matches("Serial port opened.").count(), 2, "{log}");
    eventually(WAIT, "the gateway still runs", || async { true }).await;
}
