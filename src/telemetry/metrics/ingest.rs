//! Ingest and decode families, by source and protocol: what came in (MQTT messages, serial
//! frames, HL7 connections) and what the decoders made of it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::family::{Labels, counter, family, gauge, secs};
use crate::telemetry::counters::{Counters, SourceCounters};

type Sources = [((&'static str, &'static str), Arc<SourceCounters>)];

pub(super) fn encode(e: &mut DescriptorEncoder<'_>, c: &Counters) -> fmt::Result {
    let sources = c.sources();
    received(e, &sources)?;
    serial_ports(e, c)?;
    hl7(e, c)?;
    decoded(e, c, &sources)
}

/// One counter sample per source and protocol.
fn per_source(
    sources: &Sources,
    f: fn(&SourceCounters) -> u64,
) -> impl Iterator<Item = (Labels<'_, 2>, ConstCounter)> + '_ {
    sources.iter().map(move |((s, p), sc)| ([("source", *s), ("protocol", *p)], ConstCounter::new(f(sc))))
}

fn received(e: &mut DescriptorEncoder<'_>, sources: &Sources) -> fmt::Result {
    family(
        e,
        "heartguard_ingest_messages",
        "MQTT messages or serial frames received.",
        MetricType::Counter,
        per_source(sources, |s| s.messages.load(Relaxed)),
    )?;
    family(
        e,
        "heartguard_ingest_readings",
        "Readings decoded successfully.",
        MetricType::Counter,
        per_source(sources, |s| s.readings.load(Relaxed)),
    )?;
    family(
        e,
        "heartguard_ingest_source_connected",
        "1 while the source is connected (MQTT: to its broker).",
        MetricType::Gauge,
        sources.iter().filter_map(|((s, p), sc)| {
            Some(([("source", *s), ("protocol", *p)], ConstGauge::new(u32::from(sc.connection()?))))
        }),
    )?;
    Ok(())
}

fn serial_ports(e: &mut DescriptorEncoder<'_>, c: &Counters) -> fmt::Result {
    let ports = c.ports();
    family(
        e,
        "heartguard_ingest_serial_port_open",
        "1 while the serial port is open and frames arrive (0: opening, silent or disconnected).",
        MetricType::Gauge,
        ports.iter().map(|(path, p)| {
            (
                [("port", path.as_str()), ("protocol", p.protocol.as_str())],
                ConstGauge::new(u32::from(p.state == "open")),
            )
        }),
    )?;
    family(
        e,
        "heartguard_ingest_serial_port_last_frame_timestamp_seconds",
        "When the port's last valid frame arrived (Unix time; 0: none since start).",
        MetricType::Gauge,
        ports.iter().map(|(path, p)| ([("port", path.as_str())], ConstGauge::new(secs(p.last_frame_ns.unwrap_or(0))))),
    )?;
    counter(
        e,
        "heartguard_ingest_serial_disconnects",
        "Serial devices lost (EOF, I/O error) and reopened.",
        c.serial_disconnects.load(Relaxed),
    )?;
    counter(
        e,
        "heartguard_ingest_serial_silences",
        "Times a serial port sent no frame for its watchdog period.",
        c.serial_watchdog.load(Relaxed),
    )?;
    counter(
        e,
        "heartguard_ingest_serial_overflow",
        "Serial readings dropped, oldest first, because intake was behind.",
        c.serial_overflow.load(Relaxed),
    )?;
    Ok(())
}

fn hl7(e: &mut DescriptorEncoder<'_>, c: &Counters) -> fmt::Result {
    counter(
        e,
        "heartguard_ingest_hl7_duplicates",
        "HL7 messages received again (a retry) after they were stored; acknowledged, not stored twice.",
        c.hl7_duplicates.load(Relaxed),
    )?;
    gauge(e, "heartguard_ingest_hl7_connections", "HL7 (MLLP) connections open.", c.mllp.open.load(Relaxed) as i64)?;
    gauge(
        e,
        "heartguard_ingest_hl7_connections_max",
        "hl7.max_connections (0: no HL7 listener).",
        c.mllp.max.load(Relaxed) as i64,
    )?;
    family(
        e,
        "heartguard_ingest_hl7_connections_refused",
        "HL7 connections closed at once: peer outside hl7.allow, every slot in use, failed TLS handshake.",
        MetricType::Counter,
        c.mllp.refused().into_iter().map(|(r, n)| ([("reason", r)], ConstCounter::new(n))),
    )?;
    counter(
        e,
        "heartguard_ingest_hl7_idle_timeouts",
        "HL7 connections closed because nothing came for hl7.idle_timeout_secs.",
        c.mllp.idle_timeouts.load(Relaxed),
    )?;
    Ok(())
}

fn decoded(e: &mut DescriptorEncoder<'_>, c: &Counters, sources: &Sources) -> fmt::Result {
    let mut rejected: Vec<(Labels<'_, 2>, ConstCounter)> = Vec::new();
    for ((_, p), sc) in sources {
        for (reason, n) in sc.rejected() {
            rejected.push(([("protocol", p), ("reason", reason)], ConstCounter::new(n)));
        }
    }
    family(
        e,
        "heartguard_decode_rejected",
        "Payloads or readings refused by the decoder.",
        MetricType::Counter,
        rejected,
    )?;
    family(
        e,
        "heartguard_decode_device_clock_ahead",
        "Readings refused because their device's clock is ahead of the gateway's by more than clock.future_tolerance_ms.",
        MetricType::Counter,
        c.clocks.ahead().into_iter().map(|(p, n)| ([("protocol", p)], ConstCounter::new(n))),
    )?;
    family(
        e,
        "heartguard_decode_unknown_fields",
        "Payload keys that are neither a field nor an alias (skipped).",
        MetricType::Counter,
        per_source(sources, |s| s.unknown_fields.load(Relaxed)),
    )?;
    family(
        e,
        "heartguard_decode_dropped_fields",
        "Fields dropped for a bad value; the rest of the reading was kept.",
        MetricType::Counter,
        per_source(sources, |s| s.dropped_fields.load(Relaxed)),
    )?;
    Ok(())
}
