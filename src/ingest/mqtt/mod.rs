//! MQTT source: a persistent session whose QoS 1 messages are acknowledged only after their
//! readings are committed (by intake, through [`crate::ingest::Ack`]).
//!
//! - `clean_session = false` with a fixed client id: while the gateway is down or has not
//!   acknowledged, the broker keeps the messages and redelivers them ([MQTT-3.1.2-4]).
//! - Subscriptions are (re)sent on every CONNACK, so a broker that lost the session still
//!   delivers.
//! - The client is the gateway's own ([`wire`]) rather than a general-purpose library's, for
//!   three properties a general client does not give a subscriber that acknowledges late:
//!   - acknowledgements are written in bulk: a commit of 500 readings costs one `write`, not
//!     500 (the library this replaces wrote and flushed each PUBACK alone);
//!   - the keep-alive does not fail while intake holds the reader back (a full intake channel
//!     is back-pressure, not a dead broker): the writer pings on its own, and the connection
//!     is only judged dead when the broker is silent while the reader waits for it;
//!   - an acknowledgement goes out on the connection its message came in on, or not at all.
//!     After a reconnect the broker redelivers unacknowledged messages under their packet ids
//!     and may give a freed id to a new message; an old ack sent on the new connection could
//!     acknowledge a message not yet committed. A dropped ack only costs a redelivery.
//! - A redelivered message gets the receipt time of its first delivery (`receipts`): a
//!   reading without `ts` is stamped with it, and a message committed whose PUBACK was lost
//!   comes again (DUP set, same packet id). Stamped anew, it would be a second point.
//!
//! Parts, in the order a message meets them:
//! - [`source`]: the [`source::MqttSource`] built from `[mqtt]`; connects, runs sessions,
//!   reconnects with back-off, and closes the session at shutdown;
//! - `connect`: TCP (and TLS), CONNECT and CONNACK;
//! - `session`: reads packets on one live connection and judges it dead;
//! - `publish`: decodes a PUBLISH into an envelope for intake (or hands it to the topic
//!   handler), stamped by `receipts`, the receipt memory for redeliveries;
//! - [`ack`]: acknowledgements bound to their connection, and the topic handler;
//! - `writer`: the connection's writer task (acknowledgements in bulk, pings, DISCONNECT);
//! - [`wire`]: the MQTT 3.1.1 packets; [`config`]: the `[mqtt]` section.

pub mod ack;
pub mod config;
mod connect;
mod publish;
mod receipts;
mod session;
pub mod source;
pub mod wire;
pub(crate) mod writer;
