//! HL7 v2 over MLLP: a TCP listener for patient monitors and central stations (IHE PCD-01
//! Device Observation Reporters), decoded by [`crate::protocols::hl7`].
//!
//! - Each message is answered on its connection, in order. **AA is sent only after the
//!   message's readings are committed** (intake completes an
//!   [`Ack::Mllp`](crate::ingest::Ack::Mllp)); a monitor such as the GE B40 resends a message
//!   that got no ACK, so a gateway crash before the commit loses nothing. AE/AR carry a fixed
//!   reason in MSA-3 (protocols.md §3.3).
//! - **Retries** are recognised by their content
//!   ([`hl7::retry_key`](crate::protocols::hl7::retry_key): the message without MSH-7, and
//!   the times of its readings), never by MSH-10 alone, whose counters restart and wrap: a
//!   message already committed is answered AA again without being stored twice. When in
//!   doubt it is stored: a second copy of a point overwrites the first in InfluxDB, a dropped
//!   one is lost.
//! - Connections are capped (`hl7.max_connections`, mini-redis' semaphore). One beyond the cap
//!   is closed at once, counted, and makes `/readyz` report it for a minute
//!   ([`crate::telemetry::mllp`]): left in the kernel's backlog it would wait unseen. A
//!   connection that sends nothing for `hl7.idle_timeout_secs` is closed, and accepted
//!   sockets have TCP keepalive, so the half-open sockets of unplugged monitors free their
//!   slots.
//! - **Who may connect**: peers in `hl7.allow` (loopback by default); any other connection is
//!   closed at once, before it takes a slot, counted and logged (at most every 60 s per
//!   address), so a flood from elsewhere never delays a listed monitor. With
//!   `hl7.tls_cert_file`, MLLP runs over TLS (rustls, ring); with `hl7.client_ca_file` a
//!   client certificate signed by those CAs is required. A failed handshake is counted.
//! - Messages are capped (`hl7.max_message_bytes`, answered AR). Nothing from a message — no
//!   field, no patient data — goes into a log line: only the peer address, control id and
//!   reason.
//!
//! Parts: [`listener`] (the [`listener::MllpSource`]: accept, allowlist, slots, TLS),
//! `connection` (framing, decoding, the answer to each message), `seen` (the retry memory),
//! [`config`] (the `[hl7]` section).

pub mod config;
mod connection;
pub mod listener;
mod seen;
