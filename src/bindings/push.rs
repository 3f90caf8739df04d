//! Signed binding snapshots pushed over MQTT, for sites where gateways cannot reach
//! PostgreSQL.
//!
//! An administrator signs a snapshot with an Ed25519 key (`heartguard-gateway bindings
//! keygen | sign | publish`) and publishes it, retained, to
//! `heartguard/gateways/{gateway_id}/bindings`. The gateway accepts it only if the signature
//! verifies with a key listed in `bindings.trusted_keys`, the snapshot names this gateway
//! (or `*`), and its version is newer than the snapshot in force; anything else is refused,
//! logged and counted, and the bindings in force stay.
//!
//! Wire format (JSON): `{"format": "heartguard-bindings-snapshot/1", "key": <hex public
//! key>, "signature": <hex signature over the UTF-8 bytes of "snapshot">, "snapshot":
//! <a JSON text, as a string: {"gateway", "version", "created_at", "bindings": [...]}>}`.
//! Signing the snapshot's exact bytes avoids any canonical-JSON question.
//!
//! Two stages, so that the push topic can never hold more than two of the broker's in-flight
//! slots, which the device topics share (a slot is freed only by the acknowledgement):
//! - the MQTT reader ([`Inbox`]) authenticates each message as it arrives ([`authenticate`]:
//!   envelope, trusted key, signature, snapshot parse). A refused one is acknowledged at once;
//!   an authenticated one goes to the [`Slot`], which holds one snapshot waiting, the highest
//!   version offered, and gives back the other one, which is acknowledged at once too;
//! - the push task ([`Applier`]) takes the waiting snapshot, checks it against the one in
//!   force ([`check`]: gateway, version, bindings), applies it and acknowledges it whatever
//!   the outcome.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use super::Binding;
use crate::ingest::{Ack, RateLimited};
use crate::telemetry::Counters;

pub const FORMAT: &str = "heartguard-bindings-snapshot/1";

/// Refusals of one reason are logged at most this often (they are all counted).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// The MQTT topic a gateway's snapshots are published to.
pub fn topic(gateway_id: &str) -> String {
    format!("heartguard/gateways/{gateway_id}/bindings")
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub format: String,
    pub key: String,
    pub signature: String,
    pub snapshot: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// The gateway id this snapshot is for, or `*` for every gateway on the topic.
    pub gateway: String,
    /// Strictly increasing; a gateway never goes back to an older one.
    pub version: u64,
    pub created_at: String,
    pub bindings: Vec<Binding>,
}

/// Why a push was refused (metric label and log reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("not a signed snapshot envelope: {0}")]
    Malformed(String),
    #[error("signed with a key that is not in bindings.trusted_keys")]
    UntrustedKey,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("snapshot is for gateway {0:?}")]
    OtherGateway(String),
    #[error("snapshot version {got} is not newer than the one in force ({have})")]
    NotNewer { got: u64, have: u64 },
    #[error("snapshot version {got} gave way to version {by}, waiting to be applied")]
    Superseded { got: u64, by: u64 },
    #[error("snapshot holds invalid bindings: {0}")]
    Invalid(String),
}

impl Refused {
    /// Every label, for metrics that list each reason.
    pub const LABELS: [&'static str; 7] =
        ["malformed", "untrusted_key", "bad_signature", "other_gateway", "not_newer", "superseded", "invalid"];

    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UntrustedKey => "untrusted_key",
            Self::BadSignature => "bad_signature",
            Self::OtherGateway(_) => "other_gateway",
            Self::NotNewer { .. } => "not_newer",
            Self::Superseded { .. } => "superseded",
            Self::Invalid(_) => "invalid",
        }
    }
}

/// A snapshot whose envelope, key and signature checked out: its content is the
/// administrator's. Whether it applies here is for [`check`] to say.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub snapshot: Snapshot,
    /// The signing key (hex, lower case).
    pub key: String,
}

/// Checks an envelope's form, key and signature, then parses the snapshot it signs. Cheap for
/// junk (it stops at the first failure); a signature is verified only for a trusted key.
pub fn authenticate(payload: &[u8], trusted: &[String]) -> Result<Authenticated, Refused> {
    let env: Envelope = serde_json::from_slice(payload).map_err(|e| Refused::Malformed(json_error(&e)))?;
    if env.format != FORMAT {
        return Err(Refused::Malformed(format!("the format is not {FORMAT}")));
    }
    let key = env.key.to_ascii_lowercase();
    if !trusted.iter().any(|t| t.eq_ignore_ascii_case(&key)) {
        return Err(Refused::UntrustedKey);
    }
    let pk = hex_decode(&key).ok_or_else(|| Refused::Malformed("key is not hex".into()))?;
    let sig = hex_decode(&env.signature).ok_or_else(|| Refused::Malformed("signature is not hex".into()))?;
    UnparsedPublicKey::new(&ED25519, &pk).verify(env.snapshot.as_bytes(), &sig).map_err(|_| Refused::BadSignature)?;
    // Only now is the content trusted enough to parse.
    let snapshot: Snapshot = serde_json::from_str(&env.snapshot).map_err(|e| Refused::Malformed(json_error(&e)))?;
    Ok(Authenticated { snapshot, key })
}

/// A JSON error without the text it was found in: serde's messages can quote payload content.
fn json_error(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Data => "a field is missing, unknown or of the wrong type",
        serde_json::error::Category::Eof => "the JSON text ends early",
    };
    format!("{what} (line {}, column {})", e.line(), e.column())
}

/// Checks an authenticated snapshot against this gateway: its id, the version in force and
/// the bindings themselves.
pub fn check(a: &Authenticated, gateway_id: &str, have_version: u64) -> Result<(), Refused> {
    let snap = &a.snapshot;
    if snap.gateway != "*" && snap.gateway != gateway_id {
        return Err(Refused::OtherGateway(crate::model::loggable(&snap.gateway)));
    }
    if snap.version <= have_version {
        return Err(Refused::NotNewer { got: snap.version, have: have_version });
    }
    let problems: Vec<String> = snap
        .bindings
        .iter()
        .enumerate()
        .flat_map(|(i, b)| b.problems().into_iter().map(move |p| format!("binding[{i}]: {p}")))
        .collect();
    if !problems.is_empty() {
        return Err(Refused::Invalid(problems.join("; ")));
    }
    Ok(())
}

/// Creates a new key pair: (PKCS#8 private key, hex; public key, hex).
pub fn generate_key() -> Result<(String, String), String> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| e.to_string())?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| e.to_string())?;
    Ok((hex_encode(pkcs8.as_ref()), hex_encode(pair.public_key().as_ref())))
}

/// Signs `snapshot` with a private key as written by [`generate_key`].
pub fn sign(snapshot: &Snapshot, private_key_hex: &str) -> Result<String, String> {
    let pkcs8 = hex_decode(private_key_hex.trim()).ok_or("the key file is not a hex PKCS#8 key")?;
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| format!("not an Ed25519 key: {e}"))?;
    let text = serde_json::to_string(snapshot).map_err(|e| e.to_string())?;
    let env = Envelope {
        format: FORMAT.into(),
        key: hex_encode(pair.public_key().as_ref()),
        signature: hex_encode(pair.sign(text.as_bytes()).as_ref()),
        snapshot: text,
    };
    serde_json::to_string(&env).map_err(|e| e.to_string())
}

pub fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// An authenticated snapshot and how to acknowledge its message.
pub struct PushMsg {
    pub auth: Authenticated,
    pub ack: Option<Ack>,
}

/// Sends its acknowledgement when dropped: a message the push task took is acknowledged
/// whatever happens to it (refused, applied, failed to apply). A retained snapshot comes back
/// with the next subscription anyway.
struct AckOnDrop(Option<Ack>);

impl Drop for AckOnDrop {
    fn drop(&mut self) {
        if let Some(ack) = self.0.take() {
            ack.send();
        }
    }
}

fn send(ack: Option<Ack>) {
    drop(AckOnDrop(ack));
}

/// The one authenticated snapshot waiting for the push task: the highest version offered.
#[derive(Default)]
pub struct Slot {
    waiting: Mutex<Option<PushMsg>>,
    ready: tokio::sync::Notify,
}

impl Slot {
    /// Keeps the higher version of `msg` and the one waiting, `msg` on a tie (a redelivery
    /// after a reconnect: only its acknowledgement can still reach the broker); returns the
    /// other, which nobody will apply, with the version kept.
    pub fn offer(&self, msg: PushMsg) -> Option<(PushMsg, u64)> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let loser = match waiting.take() {
            Some(w) if w.auth.snapshot.version > msg.auth.snapshot.version => {
                let kept = w.auth.snapshot.version;
                *waiting = Some(w);
                Some((msg, kept))
            }
            w => {
                let kept = msg.auth.snapshot.version;
                *waiting = Some(msg);
                w.map(|w| (w, kept))
            }
        };
        drop(waiting);
        self.ready.notify_one();
        loser
    }

    /// Waits for a snapshot and takes it.
    pub async fn take(&self) -> PushMsg {
        loop {
            if let Some(m) = self.waiting.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return m;
            }
            // `notify_one` leaves a permit when nobody waits, so an offer made between the
            // check above and this wait is not missed.
            self.ready.notified().await;
        }
    }
}

/// Counts a refusal and logs it, at most every [`REFUSAL_LOG_EVERY`] per reason.
fn refuse(why: &Refused, counters: &Counters, log: &Mutex<RateLimited>) {
    counters.push_refused(why.label());
    if !log.lock().unwrap_or_else(|e| e.into_inner()).allow(why.label()) {
        return;
    }
    if let Refused::Superseded { .. } = why {
        info!(reason = why.label(), detail = %why, "A signed binding snapshot gave way to a newer one; only the newest waiting is applied (counted; logged at most every 10 s).");
    } else {
        warn!(reason = why.label(), detail = %why, "Refused a pushed binding snapshot; the bindings in force stay (counted; logged at most every 10 s per reason).");
    }
}

/// The MQTT reader's side of pushes: takes every message of the push topic at once, so that
/// none waits for a slot in a channel while holding one of the broker's in-flight slots.
pub struct Inbox {
    pub topic: String,
    trusted: Vec<String>,
    slot: Arc<Slot>,
    counters: Arc<Counters>,
    log: Mutex<RateLimited>,
}

impl Inbox {
    pub fn new(topic: String, trusted: Vec<String>, slot: Arc<Slot>, counters: Arc<Counters>) -> Self {
        Self { topic, trusted, slot, counters, log: Mutex::new(RateLimited::new(REFUSAL_LOG_EVERY)) }
    }

    /// Authenticates one message: refused, it is acknowledged now; authenticated, it waits in
    /// the slot (and whichever snapshot it displaces is acknowledged now).
    pub fn take(&self, payload: &[u8], ack: Option<Ack>) {
        match authenticate(payload, &self.trusted) {
            Err(why) => {
                refuse(&why, &self.counters, &self.log);
                send(ack);
            }
            Ok(auth) => {
                if let Some((loser, by)) = self.slot.offer(PushMsg { auth, ack }) {
                    refuse(&Refused::Superseded { got: loser.auth.snapshot.version, by }, &self.counters, &self.log);
                    send(loser.ack);
                }
            }
        }
    }
}

/// The version of the snapshot in force, from the table's source (`push v<N> …`).
pub fn version_in_force(source: &str) -> u64 {
    source.strip_prefix("push v").and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The push task: applies the snapshots the slot hands it, if [`check`] lets them.
pub struct Applier {
    pub gateway_id: String,
    pub queue: crate::queue::QueueHandle,
    pub table_tx: tokio::sync::watch::Sender<super::SharedTable>,
    pub counters: Arc<Counters>,
}

impl Applier {
    pub async fn run(self, slot: Arc<Slot>) {
        let log = Mutex::new(RateLimited::new(REFUSAL_LOG_EVERY));
        loop {
            let msg = slot.take().await;
            let _ack = AckOnDrop(msg.ack);
            let a = msg.auth;
            let have = version_in_force(&self.table_tx.borrow().source);
            if let Err(why) = check(&a, &self.gateway_id, have) {
                refuse(&why, &self.counters, &log);
                continue;
            }
            let version = a.snapshot.version;
            let source = format!("push v{version} key {}", a.key.get(..16).unwrap_or(&a.key));
            if let Err(e) = super::apply_if(a.snapshot.bindings, &source, &self.queue, &self.table_tx, true).await {
                error!(error = %e, "Could not apply a signed binding snapshot; keeping the bindings in force.");
                continue;
            }
            info!(version, "Signed binding snapshot accepted.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(version: u64, gateway: &str) -> Snapshot {
        Snapshot { gateway: gateway.into(), version, created_at: "2026-11-28T00:00:00Z".into(), bindings: vec![] }
    }

    /// Authenticates and checks, as the two stages do one after the other.
    fn verify(payload: &[u8], trusted: &[String], gateway_id: &str, have: u64) -> Result<u64, Refused> {
        let a = authenticate(payload, trusted)?;
        check(&a, gateway_id, have)?;
        Ok(a.snapshot.version)
    }

    #[test]
    fn only_trusted_newer_snapshots_for_this_gateway_pass() {
        let (private, public) = generate_key().expect("key");
        let (other_private, _) = generate_key().expect("key");
        let trusted = vec![public.clone()];
        let good = sign(&snapshot(5, "gw-1"), &private).expect("sign");
        assert_eq!(verify(good.as_bytes(), &trusted, "gw-1", 4), Ok(5));
        assert_eq!(verify(good.as_bytes(), &trusted, "gw-1", 5), Err(Refused::NotNewer { got: 5, have: 5 }));
        assert!(matches!(verify(good.as_bytes(), &trusted, "gw-2", 0), Err(Refused::OtherGateway(_))));
        let stranger = sign(&snapshot(9, "gw-1"), &other_private).expect("sign");
        assert_eq!(verify(stranger.as_bytes(), &trusted, "gw-1", 0), Err(Refused::UntrustedKey));
        // The same envelope with a tampered snapshot.
        let mut env: Envelope = serde_json::from_str(&good).expect("env");
        env.snapshot = env.snapshot.replace("\"version\":5", "\"version\":50");
        let tampered = serde_json::to_string(&env).expect("json");
        assert_eq!(verify(tampered.as_bytes(), &trusted, "gw-1", 0), Err(Refused::BadSignature));
        assert!(matches!(verify(b"{}", &trusted, "gw-1", 0), Err(Refused::Malformed(_))));
        let all = sign(&snapshot(6, "*"), &private).expect("sign");
        assert!(verify(all.as_bytes(), &trusted, "gw-9", 0).is_ok());
    }

    #[test]
    fn refusals_never_quote_the_payload() {
        let trusted = vec!["00".repeat(32)];
        for junk in [
            &br#"{"format": "secret-marker", "key": "k", "signature": "s", "snapshot": "x"}"#[..],
            br#"{"format": "heartguard-bindings-snapshot/1", "secret-marker": 1}"#,
            br#"{"format": ["secret-marker"]}"#,
            b"secret-marker",
        ] {
            let why = authenticate(junk, &trusted).expect_err("junk");
            assert!(!why.to_string().contains("secret-marker"), "{why}");
        }
    }

    /// An MLLP-style acknowledgement, to see when a message is acknowledged.
    fn ack() -> (Option<Ack>, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Some(Ack::Mllp(tx)), rx)
    }

    #[tokio::test]
    async fn the_inbox_acknowledges_everything_but_the_highest_snapshot_waiting() {
        let (private, public) = generate_key().expect("key");
        let (stranger, _) = generate_key().expect("key");
        let counters = Arc::new(Counters::default());
        let slot = Arc::new(Slot::default());
        let inbox = Inbox::new(topic("gw"), vec![public], slot.clone(), counters.clone());
        let signed = |v: u64, key: &str| sign(&snapshot(v, "gw"), key).expect("sign").into_bytes();
        let mut acks = Vec::new();
        for payload in [
            b"junk".to_vec(),
            signed(10, &private),
            signed(11, &stranger),
            signed(30, &private),
            b"{}".to_vec(),
            signed(20, &private),
        ] {
            let (a, rx) = ack();
            inbox.take(&payload, a);
            acks.push(rx);
        }
        // v10 was acknowledged when v30 replaced it; v20 at once, being older than v30.
        let waiting: Vec<usize> =
            acks.iter_mut().enumerate().filter_map(|(i, rx)| rx.try_recv().is_err().then_some(i)).collect();
        assert_eq!(waiting, [3], "only v30 holds its message");
        assert_eq!(slot.take().await.auth.snapshot.version, 30);
        let refused = counters.push_refused_by_reason();
        assert_eq!(refused, [("malformed", 2), ("superseded", 2), ("untrusted_key", 1)]);
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex_decode(&hex_encode(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
    }
}
