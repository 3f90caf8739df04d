//! The integration tests' toolkit: starts REAL server processes (Mosquitto, InfluxDB 1.x,
//! VictoriaMetrics, PostgreSQL, nginx) and the gateway binary, each on its own loopback port
//! and in its own temporary directory, so tests can run in parallel and leave nothing behind.
//!
//! A library of its own (a dev-dependency of the gateway), not a `mod common;` file: each test
//! file uses a different subset, and a library's public items are never dead code. The test
//! files reach it through `tests/common/mod.rs`, which re-exports it and adds the one thing
//! only the gateway package's own tests know: where Cargo put the gateway binary
//! (`CARGO_BIN_EXE_heartguard-gateway`). Everything that runs the gateway therefore takes the
//! binary as its first argument.
//!
//! Conventions:
//! - `start()` blocks until the server answers (it is plain synchronous code, so it
//!   works from `#[test]` and `#[tokio::test]` alike) and panics with the tail of the
//!   server's log if the server does not come up.
//! - Every struct kills its process on `Drop` (SIGKILL + wait) and then removes its
//!   directory (the `TempDir` field is dropped after `Drop::drop` ran).
//! - Query helpers are async and use `reqwest` (no extra features needed: URLs are
//!   built with `reqwest::Url`, JSON is parsed with `serde_json`).
//!
//! Layout, from the bottom up (a file imports only from files above it):
//! - `repo`: where the repository (fixtures, example configuration, SQL) is.
//! - `ports`: free loopback ports, never handed out twice.
//! - `process`: finding, starting, watching and killing a server process; its logs.
//! - `http`: blocking readiness probes and the async HTTP client of the query helpers.
//! - `wait`: `eventually`, `eventually_sync` and the common patience `WAIT`.
//! - `certs`: a throw-away CA and certificates (`openssl`); secret files.
//! - one file per server: `mosquitto`, `influx` (1.x), `victoria`, `postgres`.
//! - `mqtt`: readings as MQTT messages, published at QoS 1.
//! - `proxy/`: `tcp` (swallow, cut), `fault` (scripted HTTP answers), `nginx` (TLS).
//! - `gateway/`: `config` (test configurations), `daemon` (the process and its logs),
//!   `run` (start and wait for the subscription, log and point waits), `cli` (operator commands).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod certs;
mod gateway;
mod http;
mod influx;
mod mosquitto;
mod mqtt;
mod ports;
mod postgres;
mod process;
mod proxy;
mod repo;
mod victoria;
mod wait;

pub use certs::{TestCerts, write_secret};
pub use gateway::cli::gateway_cli;
pub use gateway::config::{DB, example_bindings, gateway_toml, gateway_toml_pg, gateway_toml_with_queue};
pub use gateway::daemon::Gateway;
pub use gateway::run::{start_gateway, wait_count, wait_for_log};
pub use http::http_client;
pub use influx::{Influx1, influxql_ident};
pub use mosquitto::Mosquitto;
pub use mqtt::{ms, msg, publish_qos1};
pub use ports::free_port;
pub use postgres::Postgres;
pub use process::find_binary;
pub use proxy::fault::{Fault, FaultProxy, ProxiedRequest, empty_400, html_400, redirect};
pub use proxy::nginx::TlsProxy;
pub use proxy::tcp::TcpProxy;
pub use victoria::Victoria;
pub use wait::{WAIT, eventually, eventually_sync};
