//! What an operator should look at in a [`Status`], most urgent first: the gateway's health,
//! its connections, destinations, queue, bindings and devices, in that order.

use super::human::age;
use crate::telemetry::status::Status;

/// A waiting point older than this is worth a warning.
const BEHIND_NS: i64 = 60 * 1_000_000_000;
/// A device whose newest reading is this much older than its arrival is worth a warning.
const OLD_READING_NS: i64 = 5 * 60 * 1_000_000_000;
/// Unbound devices named in their warning; the rest are counted.
const UNBOUND_NAMED: usize = 5;

/// What an operator should look at, most urgent first.
pub fn warnings(s: &Status) -> Vec<String> {
    let mut w = Vec::new();
    health(s, &mut w);
    connections(s, &mut w);
    destinations(s, &mut w);
    queue(s, &mut w);
    bindings(s, &mut w);
    devices(s, &mut w);
    w
}

fn health(s: &Status, w: &mut Vec<String>) {
    if s.ready == Some(false) {
        w.push("The gateway is not ready (starting, stopping, or its queue does not answer).".to_owned());
    }
    for (stage, age) in &s.stuck_stages {
        w.push(format!(
            "Stage {stage} has not beaten for {age} s: it may be stuck (the systemd watchdog restarts the gateway)."
        ));
    }
}

/// Sources not connected and serial ports not open.
fn connections(s: &Status, w: &mut Vec<String>) {
    for src in s.sources.iter().filter(|src| src.connected == Some(false)) {
        w.push(format!("Source {} ({}) is not connected.", src.source, src.protocol));
    }
    for p in s.ports.iter().filter(|p| p.state != "open") {
        w.push(format!("Serial port {} ({}) is {}.", p.path, p.protocol, p.state));
    }
}

fn destinations(s: &Status, w: &mut Vec<String>) {
    for d in s.destinations.iter().filter(|d| d.failing == Some(true)) {
        let why = d.last_error.as_deref().unwrap_or("unknown error");
        w.push(format!("Destination {} is failing ({why}); its points wait in the queue.", d.name));
    }
}

fn queue(s: &Status, w: &mut Vec<String>) {
    let Some(q) = &s.queue else { return };
    if let Some(t) = q.oldest_enqueued_ns
        && s.now_ns - t > BEHIND_NS
    {
        w.push(format!(
            "The oldest waiting point was queued {} ago: delivery is behind or InfluxDB is unreachable.",
            age(s.now_ns - t)
        ));
    }
    if q.parked > 0 {
        w.push(format!("{} reading(s) parked, waiting for a binding or a current copy of the bindings.", q.parked));
    }
    let dead: u64 = q.dead_letters.iter().map(|(_, n)| n).sum();
    if dead > 0 {
        w.push(format!("{dead} dead letter(s): see `heartguard-gateway dead-letters list`."));
    }
    if q.evicted_parked > 0 {
        w.push(format!(
            "{} unbound parked reading(s) deleted since start: over queue.max_parked_bytes.",
            q.evicted_parked
        ));
    }
    if q.evicted_dead_letters > 0 {
        w.push(format!(
            "{} dead letter(s) deleted since start: over queue.max_dead_letter_bytes.",
            q.evicted_dead_letters
        ));
    }
}

fn bindings(s: &Status, w: &mut Vec<String>) {
    match &s.bindings {
        Some(b) if b.count == 0 => w.push("No bindings: every reading is counted as unbound and not stored.".into()),
        None => w.push("No bindings cached yet.".into()),
        Some(_) => {}
    }
    if s.bindings_sync_errors > 0 {
        w.push(format!(
            "{} binding load or sync error(s) since start; the bindings in force stay (see the log).",
            s.bindings_sync_errors
        ));
    }
}

/// Devices without a binding, and devices whose newest reading is old when it arrives.
fn devices(s: &Status, w: &mut Vec<String>) {
    let unbound: Vec<&str> = s.devices.iter().filter(|d| !d.bound).map(|d| d.serial.as_str()).collect();
    if !unbound.is_empty() {
        let more = if unbound.len() > UNBOUND_NAMED {
            format!(" and {} more", unbound.len() - UNBOUND_NAMED)
        } else {
            String::new()
        };
        w.push(format!(
            "{} device(s) seen in the last minute have no binding: {}{more}.",
            unbound.len(),
            unbound.iter().take(UNBOUND_NAMED).copied().collect::<Vec<_>>().join(", ")
        ));
    }
    for d in s.devices.iter().filter(|d| d.received_ns - d.reading_ts_ns > OLD_READING_NS) {
        w.push(format!(
            "Device {}: its newest reading is {} older than its arrival (device clock, or a backlog it is replaying).",
            d.serial,
            age(d.received_ns - d.reading_ts_ns)
        ));
    }
}
