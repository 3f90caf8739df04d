//! Telling the gateway's state: logs, counters, heartbeats, the HTTP endpoint (metrics,
//! health, readiness, status) and systemd notifications.
//!
//! Two layers, so no import goes round in a circle:
//! - what the stages import: [`counters`], [`labels`], [`health`], [`mllp`], [`devices`],
//!   [`clocks`] and [`logging`]. They import nothing that imports telemetry (domain types,
//!   the decoders' clock types, the `[clock]` defaults); a reason reaches a counter as its
//!   label text.
//! - what the application builds on them, which no stage imports: [`service`] (the
//!   [`service::Telemetry`] holding the queue and the binding view), [`metrics`] (one scrape),
//!   [`status`] (the status document), [`http`] (the endpoint) and [`systemd`] (notifications
//!   and the watchdog, which asks the service through [`systemd::Probe`]).
//!
//! - [`Counters`] are plain atomics, cheap on the hot path; [`metrics`] turns them into
//!   Prometheus metric families on each scrape, together with gauges computed at that moment
//!   (queue depth from the store, binding cache, heartbeat ages).
//! - [`health`]: every long-running stage beats; `/healthz` and the systemd watchdog only
//!   report "alive" while every stage has beaten recently and the queue's store answers.
//! - Labels stay low-cardinality: source, protocol, reason, destination (few), stage. Device
//!   serials never become labels; they appear only in `/status`.
//!
//! Logs carry ids (device serial, stream id, destination), reasons and counts — never a
//! payload's contents or anything about a patient but the patient id.

pub mod clocks;
pub mod config;
pub mod counters;
pub mod devices;
pub mod health;
pub mod http;
pub mod labels;
mod lock;
pub mod logging;
pub mod metrics;
pub mod mllp;
pub mod service;
pub mod status;
pub mod systemd;

// The names every stage uses, from their owners (which import nothing from here).
pub use counters::{Counters, DestinationCounters, PortStatus, SourceCounters, destination_label};
pub use labels::{PROTOCOL_HL7, PROTOCOL_JSON, SOURCE_MLLP, SOURCE_MQTT, SOURCE_SERIAL};

/// Sets up `tracing` for the operator's commands and the demo: `RUST_LOG` or `info`, plain
/// text on stderr. The daemon uses [`logging::init`] with its `[log]` settings.
pub fn init_logging() {
    logging::init("info", logging::LogFormat::Text);
}
