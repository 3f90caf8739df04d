//! Serial source: one task per `[[serial]]` port, reading a bedside device through a
//! [`crate::protocols`] decoder.
//!
//! ```text
//! open (exclusive) ─► send the protocol's on-connect bytes ─► read ─► decode ─► ring ─► intake
//!      ▲                                                        │ EOF / error
//!      └──────────── back-off (no busy loop) ◄──────────────────┘
//! ```
//! - **Unplug.** A yanked USB adapter gives EOF or EIO: both mean "disconnected". The port is
//!   dropped (so the kernel can give the device back its name) and reopened with capped
//!   back-off. Each transition (opened, lost, cannot open) is logged once, not per attempt.
//! - **Watchdog.** No valid frame for `frame_timeout_secs` is logged once, counted and shown
//!   in the periodic summary; the on-connect bytes are sent again (a Datex monitor that was
//!   restarted needs a new transmission request). Frames coming back are logged once.
//! - **No back-pressure.** A device cannot be paused, so readings wait in a small ring in
//!   front of the intake channel; when it is full the *oldest* reading is dropped and
//!   counted. Serial readings carry no acknowledgement (`Envelope.ack = None`).

pub mod config;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::ingest::Envelope;
use crate::model::{Reading, loggable};
use crate::protocols::decoded::PortIdentity;
use crate::protocols::{self, FlowControl, Parity, Protocol};
use crate::telemetry::logging::RateLimited;
use crate::telemetry::{Counters, SOURCE_SERIAL, SourceCounters};
use config::SerialPort;

/// Readings held per port while intake is busy; beyond this the oldest is dropped.
pub const PORT_RING: usize = 256;
/// Read buffer size.
const READ_CHUNK: usize = 4096;

/// One configured serial port.
pub struct SerialSource {
    path: String,
    protocol: Protocol,
    settings: protocols::LineSettings,
    identity: PortIdentity,
    frame_timeout: Duration,
    counters: Arc<Counters>,
    /// Frames, readings and rejections of the `serial`/<protocol> source.
    stats: Arc<SourceCounters>,
}

impl SerialSource {
    /// From a validated `[[serial]]` entry.
    /// The configured device path (logs, task names).
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn new(port: &SerialPort, counters: Arc<Counters>) -> Self {
        Self {
            path: port.path.display().to_string(),
            protocol: port.protocol,
            settings: port.line(),
            identity: PortIdentity { serial: port.serial.clone(), signal_type: port.signal_type.clone() },
            frame_timeout: Duration::from_secs(port.frame_timeout_secs),
            stats: counters.source(SOURCE_SERIAL, port.protocol.as_str()),
            counters,
        }
    }

    fn builder(&self) -> tokio_serial::SerialPortBuilder {
        let s = self.settings;
        tokio_serial::new(&self.path, s.baud)
            .data_bits(match s.data_bits {
                5 => tokio_serial::DataBits::Five,
                6 => tokio_serial::DataBits::Six,
                7 => tokio_serial::DataBits::Seven,
                _ => tokio_serial::DataBits::Eight,
            })
            .parity(match s.parity {
                Parity::None => tokio_serial::Parity::None,
                Parity::Odd => tokio_serial::Parity::Odd,
                Parity::Even => tokio_serial::Parity::Even,
            })
            .stop_bits(if s.stop_bits == 2 { tokio_serial::StopBits::Two } else { tokio_serial::StopBits::One })
            .flow_control(match s.flow_control {
                FlowControl::None => tokio_serial::FlowControl::None,
                FlowControl::Software => tokio_serial::FlowControl::Software,
                FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
            })
    }

    /// Runs until `shutdown`: open, read, reopen.
    pub async fn run(self, tx: mpsc::Sender<Envelope>, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
        let mut ring: VecDeque<Envelope> = VecDeque::with_capacity(PORT_RING);
        let mut failing_since_logged = false;
        let protocol = self.protocol.as_str().to_owned();
        self.counters.port(&self.path, |p| {
            p.protocol = protocol;
            p.state = "opening";
        });
        loop {
            let port = match self.builder().open_native_async() {
                Ok(p) => p,
                Err(e) => {
                    if !failing_since_logged {
                        self.counters.port(&self.path, |p| p.state = "disconnected");
                        warn!(port = %self.path, protocol = %self.protocol, error = %e, "Cannot open the serial port; retrying with back-off.");
                        failing_since_logged = true;
                    } else {
                        debug!(port = %self.path, error = %e, "Serial port still cannot be opened.");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = drain(&mut ring, &tx) => {}
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                    continue;
                }
            };
            failing_since_logged = false;
            self.counters.port(&self.path, |p| p.state = "open");
            info!(port = %self.path, protocol = %self.protocol, baud = self.settings.baud, "Serial port opened.");
            let outcome = self.read_port(port, &mut ring, &tx, &shutdown).await;
            match outcome {
                Closed::Shutdown => break,
                Closed::Lost(why) => {
                    self.counters.serial_disconnects.fetch_add(1, Relaxed);
                    self.counters.port(&self.path, |p| p.state = "disconnected");
                    warn!(port = %self.path, reason = %why, "Serial device disconnected; reopening with back-off.");
                    backoff.reset();
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
        // Hand over what is held; intake commits it before it stops.
        for env in ring.drain(..) {
            if tx.try_send(env).is_err() {
                self.counters.serial_overflow.fetch_add(1, Relaxed);
            }
        }
        info!(port = %self.path, "Serial source stopped.");
    }

    /// Reads an opened port until shutdown or until the device is lost: sends the protocol's
    /// on-connect bytes, then decodes what comes and hands the readings on through `ring`.
    async fn read_port(
        &self,
        mut port: tokio_serial::SerialStream,
        ring: &mut VecDeque<Envelope>,
        tx: &mpsc::Sender<Envelope>,
        shutdown: &CancellationToken,
    ) -> Closed {
        let hello = self.protocol.on_connect();
        if !hello.is_empty()
            && let Err(source) = port.write_all(&hello).await
        {
            return Closed::Lost(Lost::Hello { protocol: self.protocol, source });
        }
        let mut decoder = self.protocol.decoder(self.identity.clone());
        let mut buf = vec![0u8; READ_CHUNK];
        let mut last_frame = Instant::now();
        let mut silent = false;
        let mut reject_log = RateLimited::new(Duration::from_secs(10));
        let mut overflow_log = RateLimited::new(Duration::from_secs(10));
        loop {
            let deadline = last_frame + self.frame_timeout;
            let n = tokio::select! {
                _ = shutdown.cancelled() => return Closed::Shutdown,
                _ = drain(ring, tx), if !ring.is_empty() => continue,
                _ = tokio::time::sleep_until(deadline), if !silent => {
                    if let Err(lost) = self.watchdog(&mut port, &hello, &mut silent).await {
                        return Closed::Lost(lost);
                    }
                    continue;
                }
                r = port.read(&mut buf) => r,
            };
            let n = match n {
                Ok(0) => {
                    self.unsilence(&mut silent);
                    return Closed::Lost(Lost::Eof);
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted || e.kind() == std::io::ErrorKind::WouldBlock => {
                    continue;
                }
                Err(e) => {
                    self.unsilence(&mut silent);
                    return Closed::Lost(Lost::Read(e));
                }
            };
            let d = decoder.feed(&buf[..n], crate::now_ns());
            if d.frames > 0 {
                last_frame = Instant::now();
                self.frames(d.frames, &mut silent);
            }
            self.count(&d, &mut reject_log);
            self.hold(d.readings, ring, &mut overflow_log);
            if !forward(ring, tx) {
                return Closed::Shutdown;
            }
        }
    }

    /// No frame for the watchdog period: counts it, marks the port silent and sends the
    /// on-connect bytes again.
    async fn watchdog(
        &self,
        port: &mut tokio_serial::SerialStream,
        hello: &[u8],
        silent: &mut bool,
    ) -> Result<(), Lost> {
        *silent = true;
        self.counters.serial_watchdog.fetch_add(1, Relaxed);
        self.counters.serial_ports_silent.fetch_add(1, Relaxed);
        self.counters.port(&self.path, |p| p.state = "silent");
        warn!(port = %self.path, protocol = %self.protocol, secs = self.frame_timeout.as_secs(), "No frame from the serial device for the watchdog period (counted); asking it again.");
        if !hello.is_empty()
            && let Err(e) = port.write_all(hello).await
        {
            self.unsilence(silent);
            return Err(Lost::HelloAgain(e));
        }
        Ok(())
    }

    /// Valid frames came: counted, and the port is no longer silent.
    fn frames(&self, frames: u64, silent: &mut bool) {
        self.counters.serial_frames.fetch_add(frames, Relaxed);
        self.stats.messages.fetch_add(frames, Relaxed);
        let now = crate::now_ns();
        self.counters.port(&self.path, |p| {
            p.state = "open";
            p.frames += frames;
            p.last_frame_ns = Some(now);
        });
        if *silent {
            info!(port = %self.path, "Frames from the serial device again.");
            self.unsilence(silent);
        }
    }

    /// Counts the readings and rejections of one read, and logs the rejections (at most every
    /// 10 s per reason).
    fn count(&self, d: &protocols::decoded::Decoded, reject_log: &mut RateLimited) {
        self.stats.readings.fetch_add(d.readings.len() as u64, Relaxed);
        self.stats.dropped_fields.fetch_add(u64::from(d.dropped_fields), Relaxed);
        for r in &d.rejected {
            self.stats.reject(r.reason.as_str());
            if reject_log.allow(r.reason.as_str()) {
                warn!(port = %self.path, protocol = %self.protocol, reason = r.reason.as_str(), detail = %loggable(&r.detail), "Rejected serial data (counted; logged at most every 10 s per reason).");
            }
        }
    }

    /// Puts readings in the ring, one envelope each, dropping the oldest when it is full.
    fn hold(&self, readings: Vec<Reading>, ring: &mut VecDeque<Envelope>, overflow_log: &mut RateLimited) {
        for reading in readings {
            if ring.len() >= PORT_RING {
                ring.pop_front();
                self.counters.serial_overflow.fetch_add(1, Relaxed);
                if overflow_log.allow("overflow") {
                    warn!(port = %self.path, "Intake is behind: dropped the oldest unread reading of this port (counted).");
                }
            }
            ring.push_back(Envelope { readings: vec![reading], ack: None });
        }
    }

    fn unsilence(&self, silent: &mut bool) {
        if std::mem::take(silent) {
            self.counters.serial_ports_silent.fetch_sub(1, Relaxed);
        }
    }
}

/// Why a port was given up.
enum Closed {
    Shutdown,
    Lost(Lost),
}

/// Why a device was lost.
#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error("sending the {protocol} start command: {source}")]
    Hello { protocol: Protocol, source: std::io::Error },
    #[error("resending the start command: {0}")]
    HelloAgain(#[source] std::io::Error),
    #[error("end of file")]
    Eof,
    #[error(transparent)]
    Read(std::io::Error),
}

/// Hands held readings to intake while its channel has room; false once intake is gone.
fn forward(ring: &mut VecDeque<Envelope>, tx: &mpsc::Sender<Envelope>) -> bool {
    while let Some(env) = ring.pop_front() {
        match tx.try_send(env) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(env)) => {
                ring.push_front(env);
                break;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
        }
    }
    true
}

/// Moves held readings into intake as it frees room; pending forever when the ring is empty.
async fn drain(ring: &mut VecDeque<Envelope>, tx: &mpsc::Sender<Envelope>) {
    if ring.is_empty() {
        return std::future::pending().await;
    }
    if let Ok(permit) = tx.reserve().await
        && let Some(env) = ring.pop_front()
    {
        permit.send(env);
    } else {
        std::future::pending::<()>().await;
    }
}
