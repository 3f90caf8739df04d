//! heartguard-gateway: bedside readings → HeartGuard stream → durable queue → InfluxDB.
//!
//! ```text
//! device ─► ingest::{mqtt, serial, mllp} ─► decode (JSON) / protocols ─► Reading ─► resolve (+bindings, fresh as of ts) ─► lineproto
//!                                                          │ not yet fresh / no binding
//!                                                          ▼
//!                                              ingest::parking (durable, resolved later)
//!   ack to broker / HL7 ACK ◄── commit ◄── queue (SQLite, one writer thread, group commit)
//!                                             │
//!                                             └─► sink (one worker per destination) ─► InfluxDB
//! bindings: file │ postgres (LISTEN/NOTIFY + freshness mark) │ push (signed snapshots) ─► cache ─► table
//! report: queue activity + gaps ─► PostgreSQL
//! ```
//!
//! Module map, in the order data flows (`docs/architecture.md` follows one reading through
//! them, file by file):
//! - [`ingest`]: transports (MQTT, serial ports, HL7 over MLLP) and the intake stage that
//!   resolves, commits and only then acknowledges ([`ingest::intake`]); [`ingest::parking`]
//!   resolves parked readings once they can be.
//! - [`decode`]: payload formats → [`model::Reading`]. Never panics on any input.
//! - [`protocols`]: bedside device protocols (Nonin, Masimo, GE Datex, HL7 PCD-01) → readings;
//!   pure, panic-free, fuzzed.
//! - [`model`], [`fields`]: the domain types (a reading, a binding, a destination) and the
//!   canonical field table (names, types, legacy aliases).
//! - [`bindings`]: which stream a device's reading belongs to: from a file, PostgreSQL
//!   ([`bindings::postgres`]) or signed MQTT pushes ([`bindings::push`]), via the SQLite cache;
//!   the table in force and its freshness as one value ([`bindings::view`]).
//! - [`resolve`]: `Reading` + binding → an encoded line for one destination.
//! - [`lineproto`]: the only place that knows InfluxDB line-protocol syntax.
//! - [`queue`]: the only place that knows SQL; a point waits here until InfluxDB answered 2xx.
//! - [`sink`]: batching, HTTP, retries, dead letters; one worker per destination.
//! - [`report`]: per-stream activity and data gaps, reported to PostgreSQL.
//! - [`pipeline`]: what the stages share (queue, bindings view, counters, the sinks' channel).
//! - [`app`]: build → spawn → stop. [`config`]: the file, its sections (each beside its
//!   component) and their validation. [`tls`]: rustls configurations. [`telemetry`]: logs,
//!   counters, heartbeats, the HTTP endpoint (metrics, health, readiness, status) and systemd
//!   notifications. [`reload`]: SIGHUP (bindings file, log level; names what needs a restart).
//! - [`simulate`]: simulated devices for every protocol (the `simulate` command, tests, the
//!   demo); [`demo`]: the one-command demo.
//! - [`cli`]: the command line, one file per command family (`main.rs` only parses and
//!   dispatches).
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![deny(rust_2018_idioms)]

pub mod app;
pub mod backoff;
pub mod bindings;
pub mod cli;
pub mod config;
pub mod decode;
pub mod demo;
pub mod fields;
pub mod ingest;
pub mod lineproto;
pub mod model;
pub mod pipeline;
pub mod protocols;
pub mod queue;
pub mod reload;
pub mod report;
pub mod resolve;
pub mod simulate;
pub mod sink;
pub mod telemetry;
pub mod tls;

/// Now, in nanoseconds since the Unix epoch (UTC).
pub fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}
