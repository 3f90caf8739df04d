//! The gateway built and run inside the test process (`app::Gateway`), its listeners on port
//! 0: the test reads the bound addresses instead of waiting for log lines, and stops it with
//! a future instead of a signal. Real InfluxDB; HL7 over MLLP as the source.

use std::time::Duration;

use heartguard_gateway::app::Gateway;
use heartguard_gateway::config::Config;
use heartguard_gateway::protocols::hl7;
use heartguard_testkit::{DB, Influx1, http_client, wait_count};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEVICE: &str = "00A0B1FFFEC2D3E4";

fn config(dir: &std::path::Path, influx: &str) -> Config {
    let bindings = dir.join("bindings.toml");
    std::fs::write(
        &bindings,
        format!(
            "[[binding]]\nserial = \"{DEVICE}\"\ndevice_id = \"dev-1\"\nstream_id = \"stream-1\"\npatient_id = \"patient-1\"\norg_id = \"org-1\"\nsignal_type = \"vital_signs\"\ninflux_bucket = \"{DB}\"\nmeasurement = \"vital_signs\"\n"
        ),
    )
    .expect("write bindings");
    let text = format!(
        "[gateway]\nid = \"in-process\"\ndata_dir = \"{data}\"\n\n[mqtt]\nenabled = false\n\n[influx]\nurl = \"{influx}\"\nflush_interval_ms = 50\nretry_initial_ms = 50\nretry_max_ms = 500\n\n[bindings]\nfile = \"{b}\"\n\n[hl7]\nenabled = true\nlisten = \"127.0.0.1:0\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n",
        data = dir.join("data").display(),
        b = bindings.display(),
    );
    let cfg = Config::parse(&text).expect("parses");
    cfg.validate().expect("valid");
    cfg
}

/// Build → spawn → until: an HL7 message in, its point in InfluxDB under the binding, the
/// counters on the endpoint, and a clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_built_in_process_on_port_0_delivers_and_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let influx = Influx1::start();
    influx.create_db(DB).await;
    let gw = Gateway::build(config(dir.path(), &influx.url())).await.expect("build");
    let (mllp, http) = (gw.mllp_addr().expect("hl7 bound"), gw.http_addr().expect("http bound"));
    assert!(mllp.port() != 0 && http.port() != 0, "{mllp} {http}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(gw.spawn().until(async {
        let _ = stopped.await;
    }));

    let vitals = hl7::build::Vitals { heart_rate: Some(71), ..Default::default() };
    let msg = hl7::build::build_oru(DEVICE, "C1", "20240517103015+0000", "20240517103015+0000", &vitals);
    let mut c = tokio::net::TcpStream::connect(mllp).await.expect("connect");
    c.write_all(&hl7::mllp::frame_mllp(&msg)).await.expect("send");
    let mut ack = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(30), c.read(&mut ack)).await.expect("ack in time").expect("read");
    assert!(String::from_utf8_lossy(&ack[..n]).contains("MSA|AA|C1"), "{}", String::from_utf8_lossy(&ack[..n]));

    wait_count(&influx, "vital_signs", 1).await;
    let row = &influx.rows(DB, "vital_signs").await[0];
    assert_eq!((row["patient_id"].as_str(), row["heart_rate"].as_i64()), (Some("patient-1"), Some(71)));
    let metrics =
        http_client().get(format!("http://{http}/metrics")).send().await.expect("scrape").text().await.expect("body");
    assert!(
        metrics.lines().any(|l| l == r#"heartguard_ingest_messages_total{source="mllp",protocol="hl7"} 1"#),
        "{metrics}"
    );

    let _ = stop.send(());
    let result = tokio::time::timeout(Duration::from_secs(30), running).await.expect("stops in time").expect("task");
    assert!(result.is_ok(), "{result:?}");
}
