//! The one-screen summary of a [`Status`]: a line per source, serial port, the queue, each
//! destination, the bindings and the devices seen, then the warnings. Ages are written for
//! people (`3 min 20 s`), sizes in binary units.

use std::fmt::Write;

use super::human::{age, size};
use super::warnings::warnings;
use crate::telemetry::status::{ORIGIN_DAEMON, ORIGIN_DATABASE, ORIGIN_FILE, ORIGIN_STOPPED, Status};

/// Devices listed by name; the rest are counted.
const DEVICES_LISTED: usize = 12;

/// The one-screen summary.
pub fn render(s: &Status) -> String {
    // A status file is read later than it was written: its ages run on.
    let now_ns = if matches!(s.origin.as_str(), ORIGIN_FILE | ORIGIN_STOPPED) { crate::now_ns() } else { s.now_ns };
    let mut screen = Screen { o: String::new(), s, now_ns };
    screen.header();
    screen.sources();
    screen.ports();
    screen.queue();
    screen.destinations();
    screen.bindings();
    if s.origin != ORIGIN_DATABASE {
        screen.devices();
    }
    screen.warnings();
    screen.o
}

/// The summary being written, one section after the other. Writing into a `String` cannot
/// fail, so the results of `writeln!` are ignored.
struct Screen<'a> {
    o: String,
    s: &'a Status,
    /// What ages are measured from.
    now_ns: i64,
}

impl Screen<'_> {
    fn ago(&self, t: i64) -> String {
        age(self.now_ns - t)
    }

    /// Version, gateway, where the figures come from, health and uptime.
    fn header(&mut self) {
        let s = self.s;
        let health = match s.ready {
            Some(true) if s.stuck_stages.is_empty() => "ready",
            Some(true) => "ready, NOT HEALTHY",
            _ => "NOT READY",
        };
        let state = match s.origin.as_str() {
            ORIGIN_DAEMON => format!("running, {health}"),
            ORIGIN_FILE => format!("running, {health} (from its status file, written {} ago)", self.ago(s.now_ns)),
            ORIGIN_STOPPED => format!("stopped {} ago (figures from its last status file)", self.ago(s.now_ns)),
            _ => "daemon not reachable: figures from the database only".to_owned(),
        };
        let up = s.started_ns.map(|t| format!(", up {}", self.ago(t))).unwrap_or_default();
        let _ = writeln!(self.o, "heartguard-gateway {} — gateway {}: {state}{up}", s.version, s.gateway_id);
    }

    fn sources(&mut self) {
        for src in &self.s.sources {
            let connected = match src.connected {
                Some(true) => "connected; ",
                Some(false) => "NOT CONNECTED; ",
                None => "",
            };
            let _ = writeln!(
                self.o,
                "Source       {}/{}: {connected}{} messages, {} readings, {} rejected",
                src.source, src.protocol, src.messages, src.readings, src.rejected
            );
        }
    }

    fn ports(&mut self) {
        for p in &self.s.ports {
            let last = p
                .last_frame_ns
                .map(|t| format!("last frame {} ago", self.ago(t)))
                .unwrap_or_else(|| "no frame yet".into());
            let _ =
                writeln!(self.o, "Serial port  {} ({}): {}, {} frames, {last}", p.path, p.protocol, p.state, p.frames);
        }
    }

    fn queue(&mut self) {
        let Some(q) = &self.s.queue else {
            let _ = writeln!(self.o, "Queue        (did not answer)");
            return;
        };
        let oldest = q.oldest_enqueued_ns.map(|t| format!(", oldest queued {} ago", self.ago(t))).unwrap_or_default();
        let dead: u64 = q.dead_letters.iter().map(|(_, n)| n).sum();
        let _ = writeln!(
            self.o,
            "Queue        {} points waiting ({}){oldest}; {} parked ({}); database {}; {dead} dead letter(s) ({})",
            q.points,
            size(q.bytes),
            q.parked,
            size(q.parked_bytes),
            size(q.db_file_bytes),
            size(q.dead_letter_bytes)
        );
    }

    fn destinations(&mut self) {
        if self.s.destinations.is_empty() {
            let _ = writeln!(self.o, "Destinations none yet");
        }
        for d in &self.s.destinations {
            let state = match d.failing {
                Some(true) => "FAILING",
                Some(false) if d.last_success_ns.is_some() => "ok",
                Some(false) => "idle",
                None => "-",
            };
            let mut line = format!("Destination  {}: {state}, {} waiting", d.name, d.waiting);
            if let Some(n) = d.delivered {
                let _ = write!(line, ", {n} delivered");
            }
            if let Some(n) = d.write_failures {
                let _ = write!(line, ", {n} failed attempts");
            }
            if let Some(t) = d.last_success_ns {
                let _ = write!(line, ", last write {} ago", self.ago(t));
            }
            if let (Some(true), Some(e)) = (d.failing, &d.last_error) {
                let _ = write!(line, "; last error: {e}");
            }
            let _ = writeln!(self.o, "{line}");
        }
    }

    fn bindings(&mut self) {
        let Some(b) = &self.s.bindings else {
            let _ = writeln!(self.o, "Bindings     none cached");
            return;
        };
        let version = if b.version.is_empty() { String::new() } else { format!(", version {}", b.version) };
        let _ = writeln!(
            self.o,
            "Bindings     {} from {}{version}, in force for {}; {} sync error(s)",
            b.count,
            b.source,
            self.ago(b.loaded_ns),
            self.s.bindings_sync_errors
        );
    }

    /// Only the daemon knows them (not shown from the database alone).
    fn devices(&mut self) {
        let s = self.s;
        let unbound: u64 = s.unbound.iter().map(|(_, n)| n).sum();
        let _ = writeln!(
            self.o,
            "Devices      {} seen in the last minute; {unbound} unbound reading(s) since start",
            s.devices.len()
        );
        for d in s.devices.iter().take(DEVICES_LISTED) {
            let _ = writeln!(
                self.o,
                "  {:<24} last reading {} old, received {} ago{}",
                d.serial,
                self.ago(d.reading_ts_ns),
                self.ago(d.received_ns),
                if d.bound { "" } else { ", NO BINDING" }
            );
        }
        if s.devices.len() > DEVICES_LISTED {
            let _ = writeln!(self.o, "  … and {} more", s.devices.len() - DEVICES_LISTED);
        }
    }

    fn warnings(&mut self) {
        let warnings = warnings(self.s);
        if warnings.is_empty() {
            let _ = writeln!(self.o, "Warnings     none");
        } else {
            let _ = writeln!(self.o, "Warnings");
            for w in warnings {
                let _ = writeln!(self.o, "  - {w}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::BindingsInfo;
    use crate::telemetry::status::{DestinationStatus, DeviceStatus, QueueStatus, SourceStatus};

    const S: i64 = 1_000_000_000;

    fn sample() -> Status {
        let now = 1_800_000_000 * S;
        Status {
            origin: ORIGIN_DAEMON.into(),
            gateway_id: "ward3".into(),
            version: "0.1.0".into(),
            now_ns: now,
            started_ns: Some(now - 7500 * S),
            ready: Some(true),
            stuck_stages: vec![],
            ports: vec![],
            sources: vec![SourceStatus {
                source: "mqtt".into(),
                protocol: "json".into(),
                connected: Some(true),
                messages: 1204,
                readings: 1200,
                rejected: 4,
            }],
            queue: Some(QueueStatus {
                points: 12,
                bytes: 3500,
                oldest_enqueued_ns: Some(now - 2 * S),
                db_file_bytes: 1_300_000,
                dead_letters: vec![],
                parked: 0,
                parked_bytes: 0,
                dead_letter_bytes: 0,
                evicted_parked: 0,
                evicted_dead_letters: 0,
            }),
            destinations: vec![DestinationStatus {
                name: "heartguard_vitals".into(),
                waiting: 12,
                oldest_enqueued_ns: Some(now - 2 * S),
                delivered: Some(1180),
                write_failures: Some(0),
                failing: Some(false),
                last_success_ns: Some(now - S),
                last_error: None,
            }],
            bindings: Some(BindingsInfo {
                count: 3,
                source: "file".into(),
                version: "1a2b".into(),
                loaded_ns: now - 7500 * S,
            }),
            bindings_sync_errors: 0,
            unbound: vec![("unknown_serial".into(), 0)],
            devices: vec![DeviceStatus {
                serial: "ABC-001".into(),
                received_ns: now - S,
                reading_ts_ns: now - S - 200_000_000,
                bound: true,
            }],
        }
    }

    #[test]
    fn a_healthy_gateway_fits_on_a_few_lines() {
        assert_eq!(
            render(&sample()),
            "\
heartguard-gateway 0.1.0 — gateway ward3: running, ready, up 2 h 5 min
Source       mqtt/json: connected; 1204 messages, 1200 readings, 4 rejected
Queue        12 points waiting (3.4 KiB), oldest queued 2 s ago; 0 parked (0 B); database 1.2 MiB; 0 dead letter(s) (0 B)
Destination  heartguard_vitals: ok, 12 waiting, 1180 delivered, 0 failed attempts, last write 1 s ago
Bindings     3 from file, version 1a2b, in force for 2 h 5 min; 0 sync error(s)
Devices      1 seen in the last minute; 0 unbound reading(s) since start
  ABC-001                  last reading 1 s old, received 1 s ago
Warnings     none
"
        );
    }

    #[test]
    fn trouble_is_spelled_out_in_warnings() {
        let mut s = sample();
        let now = s.now_ns;
        s.sources[0].connected = Some(false);
        s.destinations[0].failing = Some(true);
        s.destinations[0].last_error = Some("HTTP 404".into());
        if let Some(q) = &mut s.queue {
            q.oldest_enqueued_ns = Some(now - 200 * S);
            q.dead_letters = vec![("rejected".into(), 2)];
            q.evicted_parked = 40;
            q.evicted_dead_letters = 3;
        }
        s.stuck_stages = vec![("intake".into(), 14)];
        s.devices.push(DeviceStatus {
            serial: "X-9".into(),
            received_ns: now,
            reading_ts_ns: now - 600 * S,
            bound: false,
        });
        let out = render(&s);
        assert!(out.starts_with("heartguard-gateway 0.1.0 — gateway ward3: running, ready, NOT HEALTHY"), "{out}");
        assert!(out.contains("Destination  heartguard_vitals: FAILING, 12 waiting"), "{out}");
        assert!(
            out.ends_with(
                "\
Warnings
  - Stage intake has not beaten for 14 s: it may be stuck (the systemd watchdog restarts the gateway).
  - Source mqtt (json) is not connected.
  - Destination heartguard_vitals is failing (HTTP 404); its points wait in the queue.
  - The oldest waiting point was queued 3 min 20 s ago: delivery is behind or InfluxDB is unreachable.
  - 2 dead letter(s): see `heartguard-gateway dead-letters list`.
  - 40 unbound parked reading(s) deleted since start: over queue.max_parked_bytes.
  - 3 dead letter(s) deleted since start: over queue.max_dead_letter_bytes.
  - 1 device(s) seen in the last minute have no binding: X-9.
  - Device X-9: its newest reading is 10 min 0 s older than its arrival (device clock, or a backlog it is replaying).
"
            ),
            "{out}"
        );
    }
}
