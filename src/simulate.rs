//! The device simulator: realistic streams for every supported protocol, so an installation
//! can be checked without a patient and tests and the demo have a source.
//!
//! - serial protocols are written to a serial port or a pseudo-terminal (the simulator can
//!   create one and print its path), once per tick;
//! - HL7 ORU^R01 messages go to an MLLP listener, each waiting for its ACK;
//! - MQTT JSON readings are published at QoS 1 to `devices/{serial}/vitals`.
//!
//! Values drift slowly around normal adult vitals, the pulse rate climbs above 127 for a
//! while (the case other decoders get wrong) and the finger comes out of the oximeter now
//! and then. Nothing here is patient data: serials are made up and PID is empty.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::protocols::{self, Protocol, datex, hl7, masimo, nonin};

/// How long a simulated HL7 monitor waits for its ACK.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a simulation stopped or did not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("creating a pseudo-terminal ({step}): {error}")]
    Pty { step: &'static str, error: std::io::Error },
    #[error("opening {path}: {error}")]
    Open { path: String, error: tokio_serial::Error },
    #[error("connecting to {addr}: {error}")]
    Connect { addr: String, error: std::io::Error },
    /// The broker's URL, as the configuration's parser words it.
    #[error("{0}")]
    Broker(Box<dyn std::error::Error + Send + Sync>),
    /// Sending or receiving failed: what was being done, and the cause.
    #[error("{doing}: {error}")]
    Io { doing: &'static str, error: std::io::Error },
    #[error("the listener did not accept the message: {0}")]
    NotAccepted(String),
    #[error("the listener closed the connection without an ACK")]
    Closed,
    #[error("no ACK within 10 s")]
    NoAck,
    #[error("publishing: {0}")]
    Publish(rumqttc::ClientError),
    #[error("simulator target and sink do not match")]
    Mismatch,
    #[error("{}: {error}", path.display())]
    Link { path: std::path::PathBuf, error: std::io::Error },
    /// The command line lacks what the protocol needs.
    #[error("{0}")]
    Usage(&'static str),
}

fn io(doing: &'static str) -> impl FnOnce(std::io::Error) -> SimError {
    move |error| SimError::Io { doing, error }
}

/// What one simulated tick measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimVitals {
    pub heart_rate: u16,
    pub pulse_rate: u16,
    pub spo2: u8,
    pub perfusion_index: f64,
    pub nibp: (u16, u16, u16),
    /// Tick at which the current NIBP was measured.
    pub nibp_tick: u64,
    pub temperature: f64,
    pub resp_rate: u16,
    /// The finger is out of the oximeter: no SpO2 or pulse rate.
    pub finger_out: bool,
}

impl SimVitals {
    /// The values at `tick` (one tick per second of a realistic stream).
    pub fn at(tick: u64) -> Self {
        let t = tick as f64;
        let tachy = tick % 120 >= 60 && tick % 120 < 75;
        let hr = if tachy { 130.0 + 3.0 * (t / 3.0).sin() } else { 74.0 + 8.0 * (t / 20.0).sin() };
        let cycle = tick / 60;
        let c = cycle as f64;
        Self {
            heart_rate: hr.round() as u16,
            pulse_rate: (hr - 1.0).round() as u16,
            spo2: (97.0 + (t / 15.0).sin()).round() as u8,
            perfusion_index: ((2.0 + (t / 10.0).sin()) * 100.0).round() / 100.0,
            nibp: (
                (118.0 + 6.0 * c.sin()).round() as u16,
                (78.0 + 4.0 * c.sin()).round() as u16,
                (92.0 + 4.0 * c.sin()).round() as u16,
            ),
            nibp_tick: cycle * 60,
            temperature: ((36.8 + 0.2 * (t / 50.0).sin()) * 10.0).round() / 10.0,
            resp_rate: (16.0 + 2.0 * (t / 25.0).sin()).round() as u16,
            finger_out: tick % 90 >= 80 && tick % 90 < 84,
        }
    }
}

/// The bytes a serial device of `protocol` sends in one tick (one second).
pub fn serial_tick(protocol: Protocol, serial: &str, v: &SimVitals, wall: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    let (pr, spo2) = if v.finger_out { (None, None) } else { (Some(v.pulse_rate), Some(v.spo2)) };
    match protocol {
        Protocol::NoninDf8 => nonin::build_df8(pr, spo2, v.finger_out).to_vec(),
        Protocol::NoninDf7 | Protocol::NoninDf2 => {
            let format = if protocol == Protocol::NoninDf7 { nonin::Format::Df7 } else { nonin::Format::Df2 };
            let floats =
                nonin::packet_floats(pr.unwrap_or(nonin::HR_MISSING), spo2.unwrap_or(nonin::SPO2_MISSING), false);
            let status = if v.finger_out { 0x88 } else { 0x82 };
            (0..3u16).flat_map(|i| nonin::build_packet(format, status, &floats, 0x1200 + i * 40)).collect()
        }
        Protocol::MasimoAscii1 => {
            let exc = if v.finger_out { 0x820 } else { 0x800 };
            let pi = (!v.finger_out).then_some(v.perfusion_index);
            masimo::build_line(wall.naive_utc(), serial, spo2, pr, pi, exc).into_bytes()
        }
        Protocol::DatexS5 => {
            let d = datex::Displayed {
                ecg_hr: Some(v.heart_rate as i16),
                nibp: Some([v.nibp.0 as i16 * 100, v.nibp.1 as i16 * 100, v.nibp.2 as i16 * 100]),
                nibp_hr: Some(v.heart_rate as i16),
                t1: Some((v.temperature * 100.0).round() as i16),
                spo2: spo2.map(|s| i16::from(s) * 100),
                spo2_pr: pr.map(|p| p as i16),
                co2_rr: Some(v.resp_rate as i16),
                co2_et: Some(520),
                co2_amb: Some(7600),
                ..datex::Displayed::default()
            };
            datex::frame(&datex::build_displayed_record(wall.timestamp() as u32, &d))
        }
    }
}

fn hl7_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y%m%d%H%M%S+0000").to_string()
}

/// One ORU^R01 message (unframed) for `tick`.
pub fn hl7_tick(eui64: &str, tick: u64, v: &SimVitals, wall: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    let nibp_wall = wall - chrono::Duration::seconds((tick - v.nibp_tick) as i64);
    let vitals = hl7::build::Vitals {
        heart_rate: Some(v.heart_rate),
        spo2: (!v.finger_out).then_some(v.spo2),
        pulse_rate: (!v.finger_out).then_some(v.pulse_rate),
        nibp: Some(v.nibp),
        temperature: Some(v.temperature),
        resp_rate: Some(v.resp_rate),
    };
    let control = format!("SIM{}{tick:06}", wall.format("%H%M%S"));
    hl7::build::build_oru(eui64, &control, &hl7_time(wall), &hl7_time(nibp_wall), &vitals)
}

/// One MQTT JSON reading for `tick`.
pub fn json_tick(serial: &str, v: &SimVitals, wall: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    let mut o = serde_json::json!({
        "serial": serial,
        "ts": wall.timestamp_millis(),
        "heart_rate": v.heart_rate,
        "systolic_bp": v.nibp.0,
        "diastolic_bp": v.nibp.1,
        "temperature": v.temperature,
    });
    if !v.finger_out {
        o["spo2"] = v.spo2.into();
    }
    o.to_string().into_bytes()
}

/// Where a simulation goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A serial device path (a pty slave, a USB adapter).
    Serial { protocol: Protocol, path: String },
    /// An open pseudo-terminal master (the gateway reads the slave).
    Pty { protocol: Protocol, master: std::sync::Arc<PtyMaster> },
    /// An MLLP listener, `host:port`.
    Mllp { addr: String },
    /// An MQTT broker, `mqtt://host:port`.
    Mqtt { url: String },
}

/// A simulation run.
#[derive(Debug, Clone)]
pub struct Simulation {
    pub target: Target,
    /// Device serial (Masimo SN, MQTT serial) or EUI-64 (HL7); serial protocols other than
    /// Masimo carry none (the gateway's port configuration names the device).
    pub serial: String,
    pub interval: Duration,
    /// Ticks to play; `None` runs until stopped.
    pub count: Option<u64>,
    /// First tick (selects where in the scripted day the values start).
    pub start_tick: u64,
}

impl Simulation {
    /// Plays until `count` ticks are sent or `stop` is cancelled. Returns the ticks sent.
    pub async fn run(&self, stop: CancellationToken) -> Result<u64, SimError> {
        let mut sent = 0u64;
        let mut tick = self.start_tick;
        let mut sink = Sink::connect(&self.target).await?;
        let mut every = tokio::time::interval(self.interval);
        while self.count.is_none_or(|c| sent < c) {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = every.tick() => {}
            }
            let v = SimVitals::at(tick);
            let wall = chrono::Utc::now();
            sink.send(&self.target, &self.serial, tick, &v, wall).await?;
            sent += 1;
            tick += 1;
        }
        sink.close().await;
        Ok(sent)
    }
}

enum Sink {
    Serial(tokio_serial::SerialStream),
    Pty,
    Mllp(tokio::net::TcpStream),
    Mqtt(rumqttc::AsyncClient, tokio::task::JoinHandle<()>),
}

impl Sink {
    async fn connect(target: &Target) -> Result<Sink, SimError> {
        use tokio_serial::SerialPortBuilderExt;
        match target {
            Target::Serial { protocol, path } => {
                let l = protocol.line();
                tokio_serial::new(path, l.baud)
                    .open_native_async()
                    .map(Sink::Serial)
                    .map_err(|error| SimError::Open { path: path.clone(), error })
            }
            Target::Pty { .. } => Ok(Sink::Pty),
            Target::Mllp { addr } => tokio::net::TcpStream::connect(addr)
                .await
                .map(Sink::Mllp)
                .map_err(|error| SimError::Connect { addr: addr.clone(), error }),
            Target::Mqtt { url } => {
                let a = crate::ingest::mqtt::config::broker_addr(url).map_err(|e| SimError::Broker(e.into()))?;
                let id = format!("heartguard-sim-{}", std::process::id());
                let mut o = rumqttc::MqttOptions::new(id, a.host, a.port);
                o.set_keep_alive(Duration::from_secs(30));
                let (client, mut ev) = rumqttc::AsyncClient::new(o, 64);
                let pump = tokio::spawn(async move {
                    loop {
                        if ev.poll().await.is_err() {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                });
                Ok(Sink::Mqtt(client, pump))
            }
        }
    }

    async fn send(
        &mut self,
        target: &Target,
        serial: &str,
        tick: u64,
        v: &SimVitals,
        wall: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), SimError> {
        match (self, target) {
            (Sink::Serial(port), Target::Serial { protocol, .. }) => {
                port.write_all(&serial_tick(*protocol, serial, v, wall)).await.map_err(io("writing to the serial port"))
            }
            (Sink::Pty, Target::Pty { protocol, master }) => master
                .write_all(&serial_tick(*protocol, serial, v, wall))
                .await
                .map_err(io("writing to the pseudo-terminal")),
            (Sink::Mllp(stream), _) => {
                let msg = hl7_tick(serial, tick, v, wall);
                stream.write_all(&hl7::mllp::frame_mllp(&msg)).await.map_err(io("sending HL7"))?;
                let ack = read_ack(stream).await?;
                match hl7::ack::parse_ack(&ack) {
                    Some((code, _)) if code == "AA" => Ok(()),
                    other => Err(SimError::NotAccepted(format!("{other:?}"))),
                }
            }
            (Sink::Mqtt(client, _), _) => client
                .publish(
                    format!("devices/{serial}/vitals"),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    json_tick(serial, v, wall),
                )
                .await
                .map_err(SimError::Publish),
            _ => Err(SimError::Mismatch),
        }
    }

    async fn close(self) {
        match self {
            Sink::Mqtt(client, pump) => {
                // Let the event loop send what is queued before it goes.
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = client.disconnect().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                pump.abort();
            }
            Sink::Mllp(mut s) => {
                let _ = s.shutdown().await;
            }
            _ => {}
        }
    }
}

/// Reads one MLLP-framed ACK (within 10 s).
async fn read_ack(stream: &mut tokio::net::TcpStream) -> Result<Vec<u8>, SimError> {
    let mut framer = protocols::framer::Framer::new(64 * 1024);
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            let n = stream.read(&mut buf).await.map_err(io("reading the ACK"))?;
            if n == 0 {
                return Err(SimError::Closed);
            }
            framer.push(&buf[..n]);
            if let Some(Ok(m)) = framer.next(hl7::mllp::scan_mllp) {
                return Ok(m);
            }
        }
    };
    tokio::time::timeout(ACK_TIMEOUT, read).await.map_err(|_| SimError::NoAck)?
}

/// What `heartguard-gateway simulate` plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimProtocol {
    #[value(name = "nonin_df8")]
    NoninDf8,
    #[value(name = "nonin_df7")]
    NoninDf7,
    #[value(name = "nonin_df2")]
    NoninDf2,
    #[value(name = "masimo_ascii1")]
    MasimoAscii1,
    #[value(name = "datex_s5")]
    DatexS5,
    /// HL7 ORU^R01 (IHE PCD-01) over MLLP.
    #[value(name = "hl7")]
    Hl7,
    /// JSON readings over MQTT.
    #[value(name = "mqtt_json")]
    MqttJson,
}

impl SimProtocol {
    fn serial(self) -> Option<Protocol> {
        match self {
            Self::NoninDf8 => Some(Protocol::NoninDf8),
            Self::NoninDf7 => Some(Protocol::NoninDf7),
            Self::NoninDf2 => Some(Protocol::NoninDf2),
            Self::MasimoAscii1 => Some(Protocol::MasimoAscii1),
            Self::DatexS5 => Some(Protocol::DatexS5),
            Self::Hl7 | Self::MqttJson => None,
        }
    }
}

/// `heartguard-gateway simulate`: play a simulated device.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// The device protocol to play.
    #[arg(long, value_enum)]
    pub protocol: SimProtocol,
    /// Serial protocols: write to this serial port (a USB adapter, a null-modem cable).
    #[arg(long, conflicts_with_all = ["pty", "mllp", "mqtt"])]
    pub port: Option<String>,
    /// Serial protocols: create a pseudo-terminal and play into it; its path is printed (and
    /// linked at --link) for the gateway's `[[serial]] path`.
    #[arg(long, conflicts_with_all = ["mllp", "mqtt"])]
    pub pty: bool,
    /// With --pty: also make this symlink to the pseudo-terminal (like /dev/serial/by-id).
    #[arg(long, requires = "pty")]
    pub link: Option<std::path::PathBuf>,
    /// hl7: the MLLP listener, host:port.
    #[arg(long)]
    pub mllp: Option<String>,
    /// mqtt_json: the broker, mqtt://host:port.
    #[arg(long)]
    pub mqtt: Option<String>,
    /// Device serial (Masimo SN, MQTT serial) or EUI-64 (HL7).
    #[arg(long, default_value = "SIM-0001")]
    pub serial: String,
    /// Time between readings.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Readings to send; without it the simulator runs until Ctrl-C.
    #[arg(long)]
    pub count: Option<u64>,
}

/// A pseudo-terminal kept open while a simulation plays into it: the simulator writes to
/// the master, the gateway opens the slave by its path. Both ends are opened close-on-exec,
/// so a process started meanwhile (a gateway under test) does not keep the terminal alive
/// after it is dropped — dropping it is an unplug.
pub struct Pty {
    pub master: std::sync::Arc<PtyMaster>,
    /// The slave end stays open, so the terminal survives the gateway closing it.
    _slave: std::fs::File,
    pub path: String,
}

impl Pty {
    pub fn open() -> Result<Pty, SimError> {
        use rustix::pty::OpenptFlags;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |step: &'static str, error: std::io::Error| SimError::Pty { step, error };
        let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .map_err(|e| err("openpt", e.into()))?;
        rustix::pty::grantpt(&master).map_err(|e| err("grantpt", e.into()))?;
        rustix::pty::unlockpt(&master).map_err(|e| err("unlockpt", e.into()))?;
        let name = rustix::pty::ptsname(&master, Vec::new()).map_err(|e| err("ptsname", e.into()))?;
        let path = name.to_string_lossy().into_owned();
        // std opens with O_CLOEXEC.
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
            .open(&path)
            .map_err(|e| err("open slave", e))?;
        let mut t = rustix::termios::tcgetattr(&slave).map_err(|e| err("tcgetattr", e.into()))?;
        t.make_raw();
        rustix::termios::tcsetattr(&slave, rustix::termios::OptionalActions::Now, &t)
            .map_err(|e| err("tcsetattr", e.into()))?;
        let master = tokio::sync::Mutex::new(tokio::fs::File::from_std(std::fs::File::from(master)));
        Ok(Pty { master: std::sync::Arc::new(PtyMaster(master)), _slave: slave, path })
    }
}

/// The master end of a [`Pty`] (blocking reads and writes on tokio's blocking pool).
pub struct PtyMaster(tokio::sync::Mutex<tokio::fs::File>);

impl std::fmt::Debug for PtyMaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PtyMaster")
    }
}

impl PtyMaster {
    pub async fn write_all(&self, buf: &[u8]) -> std::io::Result<()> {
        let mut f = self.0.lock().await;
        f.write_all(buf).await?;
        f.flush().await
    }

    pub async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.lock().await.read(buf).await
    }
}

/// Runs `simulate` until done or `stop`.
pub async fn run_cli(args: SimArgs, stop: CancellationToken) -> Result<(), SimError> {
    let interval = Duration::from_millis(args.interval_ms.max(1));
    let mut _pty = None;
    let target = match (args.protocol.serial(), &args) {
        (Some(p), SimArgs { port: Some(path), .. }) => Target::Serial { protocol: p, path: path.clone() },
        (Some(p), SimArgs { pty: true, .. }) => {
            let pty = Pty::open()?;
            println!("{}", pty.path);
            if let Some(link) = &args.link {
                let _ = std::fs::remove_file(link);
                std::os::unix::fs::symlink(&pty.path, link)
                    .map_err(|error| SimError::Link { path: link.clone(), error })?;
            }
            let t = Target::Pty { protocol: p, master: pty.master.clone() };
            _pty = Some(pty);
            t
        }
        (Some(_), _) => return Err(SimError::Usage("a serial protocol needs --port PATH or --pty")),
        (None, SimArgs { protocol: SimProtocol::Hl7, mllp: Some(a), .. }) => Target::Mllp { addr: a.clone() },
        (None, SimArgs { protocol: SimProtocol::Hl7, .. }) => {
            return Err(SimError::Usage("hl7 needs --mllp HOST:PORT"));
        }
        (None, SimArgs { mqtt: Some(u), .. }) => Target::Mqtt { url: u.clone() },
        (None, _) => return Err(SimError::Usage("mqtt_json needs --mqtt mqtt://HOST:PORT")),
    };
    let sim = Simulation { target, serial: args.serial.clone(), interval, count: args.count, start_tick: 0 };
    let sent = sim.run(stop).await?;
    eprintln!("{sent} reading(s) sent.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::FieldValue;
    use crate::protocols::decoded::PortIdentity;

    #[test]
    fn every_serial_protocol_decodes_what_the_simulator_sends() {
        let wall = chrono::Utc::now();
        for p in Protocol::ALL {
            let mut dec = p.decoder(PortIdentity { serial: Some("SIM-1".into()), signal_type: None });
            for tick in [0u64, 61, 82] {
                let v = SimVitals::at(tick);
                let d = dec.feed(&serial_tick(p, "SIM-1", &v, wall), crate::now_ns() + tick as i64 * 2_000_000_000);
                assert!(d.rejected.is_empty(), "{p} {tick}: {:?}", d.rejected);
                let r = d.readings.first().unwrap_or_else(|| panic!("{p} {tick}: no reading"));
                let pr = r.fields.iter().find(|(s, _)| s.name == "pulse_rate").map(|(_, v)| *v);
                if v.finger_out {
                    assert_eq!(pr, None, "{p}");
                } else {
                    assert_eq!(pr, Some(FieldValue::Int(i64::from(v.pulse_rate))), "{p} {tick}");
                }
            }
        }
    }

    #[test]
    fn hl7_and_json_ticks_decode() {
        let wall = chrono::Utc::now();
        let v = SimVitals::at(65);
        assert!(v.heart_rate >= 128);
        let now = crate::decode::Now { ns: crate::now_ns(), future_tolerance_ns: 120_000_000_000 };
        let m = hl7::decode::decode_message(&hl7_tick("0123456789ABCDEF", 65, &v, wall), now, hl7::time::Zone::Local);
        assert_eq!(m.ack, hl7::ack::AckCode::Accept);
        assert_eq!(m.decoded.readings.len(), 2, "vitals and the earlier NIBP");
        let d = crate::decode::json::decode(&json_tick("ABC-001", &v, wall), None, now, 1 << 16);
        assert_eq!(d.readings.len(), 1);
    }
}
