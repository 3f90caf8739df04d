//! Signed binding snapshots pushed over MQTT, for sites where gateways cannot reach
//! PostgreSQL.
//!
//! An administrator signs a snapshot with an Ed25519 key (`heartguard-gateway bindings
//! keygen | sign | publish`) and publishes it, retained, to
//! `heartguard/gateways/{gateway_id}/bindings`. The gateway accepts it only if the signature
//! verifies with a key listed in `bindings.trusted_keys`, the snapshot names this gateway
//! (or `*`), its version is newer than every snapshot it accepted before, and it was created
//! within `bindings.push_max_age_hours`; anything else is refused, logged and counted, and
//! the bindings in force stay.
//!
//! Wire format (JSON): `{"format": "heartguard-bindings-snapshot/1", "key": <hex public
//! key>, "signature": <hex signature over the UTF-8 bytes of "snapshot">, "snapshot":
//! <a JSON text, as a string: {"gateway", "version", "created_at", "bindings": [...]}>}`.
//! Signing the snapshot's exact bytes avoids any canonical-JSON question.
//!
//! Two stages, so that the push topic can never hold more than two of the broker's in-flight
//! slots, which the device topics share (a slot is freed only by the acknowledgement):
//! - the MQTT reader ([`inbox::Inbox`]) authenticates each message as it arrives
//!   ([`envelope::authenticate`]: envelope, trusted key, signature, snapshot parse). A refused
//!   one is acknowledged at once; an authenticated one goes to the [`inbox::Slot`], which
//!   holds one snapshot waiting, the highest version offered, and gives back the other one,
//!   which is acknowledged at once too;
//! - the push task ([`applier::Applier`]) takes the waiting snapshot, checks it against what
//!   this gateway accepted before ([`check::check`]: gateway, version, age, bindings), applies
//!   it and acknowledges it whatever the outcome.
//!
//! Rollback protection does not rest on the binding cache alone: the highest version accepted
//! is also kept in [`accepted::ACCEPTED_FILE`] in the data directory (replaced atomically),
//! read at start. After a loss of the database, a validly signed older snapshot is still
//! refused; the same snapshot as the remembered one (same version, same bytes) is applied
//! again. A wiped data directory loses that memory too: then only the age limit keeps old
//! snapshots out.
//!
//! Layout: [`envelope`] (the wire format: sign, authenticate, keys), [`refused`] (why a
//! snapshot was refused), [`check`] (against what was accepted before), [`accepted`] (the
//! accepted-version file), [`inbox`] (the MQTT reader's side, the slot, and how refusals are
//! counted and logged), [`applier`] (the push task).

pub mod accepted;
pub mod applier;
pub mod check;
pub mod envelope;
pub mod inbox;
pub mod refused;

/// The MQTT topic a gateway's snapshots are published to.
pub fn topic(gateway_id: &str) -> String {
    format!("heartguard/gateways/{gateway_id}/bindings")
}
