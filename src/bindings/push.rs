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
//! - the MQTT reader ([`Inbox`]) authenticates each message as it arrives ([`authenticate`]:
//!   envelope, trusted key, signature, snapshot parse). A refused one is acknowledged at once;
//!   an authenticated one goes to the [`Slot`], which holds one snapshot waiting, the highest
//!   version offered, and gives back the other one, which is acknowledged at once too;
//! - the push task ([`Applier`]) takes the waiting snapshot, checks it against what this
//!   gateway accepted before ([`check`]: gateway, version, age, bindings), applies it and
//!   acknowledges it whatever the outcome.
//!
//! Rollback protection does not rest on the binding cache alone: the highest version accepted
//! is also kept in [`ACCEPTED_FILE`] in the data directory (replaced atomically), read at
//! start. After a loss of the database, a validly signed older snapshot is still refused; the
//! same snapshot as the remembered one (same version, same bytes) is applied again. A wiped
//! data directory loses that memory too: then only the age limit keeps old snapshots out.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::ingest::mqtt::ack::{MqttAck, TopicHandler};
use crate::model::Binding;
use crate::telemetry::Counters;
use crate::telemetry::logging::RateLimited;

pub const FORMAT: &str = "heartguard-bindings-snapshot/1";

/// The highest snapshot accepted, in the data directory.
pub const ACCEPTED_FILE: &str = "push-accepted.json";

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
    /// When the administrator made it (RFC 3339); bounds how long it can be replayed.
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
    #[error("snapshot version {got} is not newer than the one accepted before ({have})")]
    NotNewer { got: u64, have: u64 },
    #[error("snapshot version {got} was created {hours} h ago, more than bindings.push_max_age_hours")]
    TooOld { got: u64, hours: i64 },
    #[error("snapshot version {got} gave way to version {by}, waiting to be applied")]
    Superseded { got: u64, by: u64 },
    #[error("snapshot holds invalid bindings: {0}")]
    Invalid(String),
}

impl Refused {
    /// Every label, for metrics that list each reason.
    pub const LABELS: [&'static str; 8] = [
        "malformed",
        "untrusted_key",
        "bad_signature",
        "other_gateway",
        "not_newer",
        "too_old",
        "superseded",
        "invalid",
    ];

    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UntrustedKey => "untrusted_key",
            Self::BadSignature => "bad_signature",
            Self::OtherGateway(_) => "other_gateway",
            Self::NotNewer { .. } => "not_newer",
            Self::TooOld { .. } => "too_old",
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
    /// `created_at`, in ns since the epoch.
    pub created_ns: i64,
    /// The signing key (hex, lower case).
    pub key: String,
    /// SHA-256 (hex) of the signed snapshot text: the same snapshot has the same digest.
    pub sha256: String,
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
    let created_ns = crate::model::parse_rfc3339(&snapshot.created_at)
        .ok_or_else(|| Refused::Malformed("created_at is not an RFC 3339 time".into()))?;
    let sha256 = hex_encode(ring::digest::digest(&ring::digest::SHA256, env.snapshot.as_bytes()).as_ref());
    Ok(Authenticated { snapshot, created_ns, key, sha256 })
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

/// What this gateway accepted before: the snapshot in force (from the binding table) and the
/// one remembered in [`ACCEPTED_FILE`], which outlives the cache.
#[derive(Debug, Clone, Default)]
pub struct Before {
    pub in_force: u64,
    pub remembered: Option<Accepted>,
}

/// Checks an authenticated snapshot against this gateway: its id, what it accepted before,
/// the age limit and the bindings themselves.
pub fn check(
    a: &Authenticated,
    gateway_id: &str,
    before: &Before,
    now_ns: i64,
    max_age: Duration,
) -> Result<(), Refused> {
    let snap = &a.snapshot;
    if snap.gateway != "*" && snap.gateway != gateway_id {
        return Err(Refused::OtherGateway(crate::model::loggable(&snap.gateway)));
    }
    let got = snap.version;
    if got <= before.in_force {
        return Err(Refused::NotNewer { got, have: before.in_force });
    }
    if let Some(r) = &before.remembered {
        // The remembered snapshot itself may come back (the cache was lost, the broker still
        // retains it); anything else at or below its version is a rollback.
        let same = got == r.version && a.sha256 == r.sha256;
        if got <= r.version && !same {
            return Err(Refused::NotNewer { got, have: r.version });
        }
    }
    let age_ns = now_ns.saturating_sub(a.created_ns);
    if age_ns > i64::try_from(max_age.as_nanos()).unwrap_or(i64::MAX) {
        return Err(Refused::TooOld { got, hours: age_ns / 3_600_000_000_000 });
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

/// The highest snapshot this gateway accepted, as kept in [`ACCEPTED_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accepted {
    pub version: u64,
    pub created_at: String,
    /// SHA-256 (hex) of the snapshot text.
    pub sha256: String,
}

/// Reads [`ACCEPTED_FILE`] from `dir`; `None` if there is none.
pub fn load_accepted(dir: &Path) -> Result<Option<Accepted>, String> {
    let path = dir.join(ACCEPTED_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Replaces [`ACCEPTED_FILE`] in `dir` so that a crash or power loss leaves the old content
/// or the new, never a mix: write a temporary file, fsync it, rename it over the old one,
/// fsync the directory (which makes the rename durable).
pub fn store_accepted(dir: &Path, a: &Accepted) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(ACCEPTED_FILE);
    let tmp = dir.join(format!("{ACCEPTED_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(a)?)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
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
    pub ack: Option<MqttAck>,
}

/// Sends its acknowledgement when dropped: a message the push task took is acknowledged
/// whatever happens to it (refused, applied, failed to apply). A retained snapshot comes back
/// with the next subscription anyway.
struct AckOnDrop(Option<MqttAck>);

impl Drop for AckOnDrop {
    fn drop(&mut self) {
        if let Some(ack) = self.0.take() {
            ack.send();
        }
    }
}

fn send(ack: Option<MqttAck>) {
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
}

impl TopicHandler for Inbox {
    fn topic(&self) -> &str {
        &self.topic
    }

    /// Authenticates one message: refused, it is acknowledged now; authenticated, it waits in
    /// the slot (and whichever snapshot it displaces is acknowledged now).
    fn take(&self, payload: &[u8], ack: Option<MqttAck>) {
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
    pub max_age: Duration,
    /// Where [`ACCEPTED_FILE`] lives.
    pub data_dir: PathBuf,
    pub queue: crate::queue::QueueHandle,
    pub view: super::ViewTx,
    pub counters: Arc<Counters>,
}

impl Applier {
    pub async fn run(self, slot: Arc<Slot>) {
        let log = Mutex::new(RateLimited::new(REFUSAL_LOG_EVERY));
        let mut remembered = match load_accepted(&self.data_dir) {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "Cannot read the highest snapshot version accepted before; until a snapshot is accepted, only the binding cache and the age limit guard against older ones.");
                None
            }
        };
        loop {
            let msg = slot.take().await;
            let _ack = AckOnDrop(msg.ack);
            let a = msg.auth;
            let before =
                Before { in_force: version_in_force(&self.view.borrow().table.source), remembered: remembered.clone() };
            if let Err(why) = check(&a, &self.gateway_id, &before, crate::now_ns(), self.max_age) {
                refuse(&why, &self.counters, &log);
                continue;
            }
            let version = a.snapshot.version;
            let source = format!("push v{version} key {}", a.key.get(..16).unwrap_or(&a.key));
            if let Err(e) = super::apply_if(a.snapshot.bindings, &source, &self.queue, &self.view, true).await {
                error!(error = %e, "Could not apply a signed binding snapshot; keeping the bindings in force.");
                continue;
            }
            info!(version, "Signed binding snapshot accepted.");
            let accepted = Accepted { version, created_at: a.snapshot.created_at, sha256: a.sha256 };
            let (dir, copy) = (self.data_dir.clone(), accepted.clone());
            let stored = tokio::task::spawn_blocking(move || store_accepted(&dir, &copy)).await;
            if let Err(e) = stored.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
                error!(error = %e, file = %self.data_dir.join(ACCEPTED_FILE).display(), "Cannot record the accepted snapshot version; should the binding cache be lost, only the age limit guards against older snapshots.");
            }
            remembered = Some(accepted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_NS: i64 = 3_600_000_000_000;
    const MAX_AGE: Duration = Duration::from_secs(720 * 3600);

    fn snapshot(version: u64, gateway: &str) -> Snapshot {
        Snapshot { gateway: gateway.into(), version, created_at: "2026-11-28T00:00:00Z".into(), bindings: vec![] }
    }

    fn created_ns() -> i64 {
        crate::model::parse_rfc3339("2026-11-28T00:00:00Z").expect("time")
    }

    fn before(in_force: u64) -> Before {
        Before { in_force, remembered: None }
    }

    /// Authenticates and checks, as the two stages do one after the other.
    fn verify(payload: &[u8], trusted: &[String], gateway_id: &str, before: &Before) -> Result<u64, Refused> {
        let a = authenticate(payload, trusted)?;
        check(&a, gateway_id, before, created_ns() + HOUR_NS, MAX_AGE)?;
        Ok(a.snapshot.version)
    }

    #[test]
    fn only_trusted_newer_snapshots_for_this_gateway_pass() {
        let (private, public) = generate_key().expect("key");
        let (other_private, _) = generate_key().expect("key");
        let trusted = vec![public.clone()];
        let good = sign(&snapshot(5, "gw-1"), &private).expect("sign");
        assert_eq!(verify(good.as_bytes(), &trusted, "gw-1", &before(4)), Ok(5));
        assert_eq!(verify(good.as_bytes(), &trusted, "gw-1", &before(5)), Err(Refused::NotNewer { got: 5, have: 5 }));
        assert!(matches!(verify(good.as_bytes(), &trusted, "gw-2", &before(0)), Err(Refused::OtherGateway(_))));
        let stranger = sign(&snapshot(9, "gw-1"), &other_private).expect("sign");
        assert_eq!(verify(stranger.as_bytes(), &trusted, "gw-1", &before(0)), Err(Refused::UntrustedKey));
        // The same envelope with a tampered snapshot.
        let mut env: Envelope = serde_json::from_str(&good).expect("env");
        env.snapshot = env.snapshot.replace("\"version\":5", "\"version\":50");
        let tampered = serde_json::to_string(&env).expect("json");
        assert_eq!(verify(tampered.as_bytes(), &trusted, "gw-1", &before(0)), Err(Refused::BadSignature));
        assert!(matches!(verify(b"{}", &trusted, "gw-1", &before(0)), Err(Refused::Malformed(_))));
        let all = sign(&snapshot(6, "*"), &private).expect("sign");
        assert!(verify(all.as_bytes(), &trusted, "gw-9", &before(0)).is_ok());
    }

    #[test]
    fn the_remembered_snapshot_bars_older_ones_and_may_come_back_itself() {
        let (private, public) = generate_key().expect("key");
        let trusted = vec![public];
        let v5 = authenticate(sign(&snapshot(5, "gw"), &private).expect("sign").as_bytes(), &trusted).expect("v5");
        let remembered = Accepted { version: 5, created_at: v5.snapshot.created_at.clone(), sha256: v5.sha256.clone() };
        // The cache is gone (nothing in force), the memory is not.
        let lost = Before { in_force: 0, remembered: Some(remembered) };
        let at = |v: u64, gateway: &str| {
            let a = authenticate(sign(&snapshot(v, gateway), &private).expect("sign").as_bytes(), &trusted);
            check(&a.expect("authentic"), "gw", &lost, created_ns(), MAX_AGE)
        };
        assert_eq!(at(3, "gw"), Err(Refused::NotNewer { got: 3, have: 5 }));
        // Version 5 again, but other bytes: not the snapshot remembered.
        assert_eq!(at(5, "*"), Err(Refused::NotNewer { got: 5, have: 5 }));
        assert_eq!(check(&v5, "gw", &lost, created_ns(), MAX_AGE), Ok(()));
        assert_eq!(at(6, "gw"), Ok(()));
        // Once in force, the same snapshot is not applied again.
        let applied = Before { in_force: 5, ..lost };
        assert_eq!(check(&v5, "gw", &applied, created_ns(), MAX_AGE), Err(Refused::NotNewer { got: 5, have: 5 }));
    }

    #[test]
    fn snapshots_older_than_the_age_limit_are_refused() {
        let (private, public) = generate_key().expect("key");
        let trusted = [public];
        let a =
            authenticate(sign(&snapshot(5, "gw"), &private).expect("sign").as_bytes(), &trusted).expect("authentic");
        let at_age = |hours: i64| check(&a, "gw", &before(0), created_ns() + hours * HOUR_NS, MAX_AGE);
        assert_eq!(at_age(720), Ok(()));
        assert_eq!(at_age(721), Err(Refused::TooOld { got: 5, hours: 721 }));
        let mut bad_time = snapshot(6, "gw");
        bad_time.created_at = "yesterday".into();
        let env = sign(&bad_time, &private).expect("sign");
        assert!(matches!(authenticate(env.as_bytes(), &trusted), Err(Refused::Malformed(_))));
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

    #[test]
    fn the_accepted_version_survives_in_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load_accepted(dir.path()), Ok(None));
        let a = Accepted { version: 7, created_at: "2026-11-28T00:00:00Z".into(), sha256: "ab".repeat(32) };
        store_accepted(dir.path(), &a).expect("store");
        let b = Accepted { version: 8, ..a };
        store_accepted(dir.path(), &b).expect("store");
        assert_eq!(load_accepted(dir.path()), Ok(Some(b)));
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).expect("dir").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, [ACCEPTED_FILE], "no temporary file left behind");
        std::fs::write(dir.path().join(ACCEPTED_FILE), "{").expect("write");
        assert!(load_accepted(dir.path()).is_err());
    }

    /// An acknowledgement whose PUBACK can be seen.
    fn ack() -> (Option<MqttAck>, tokio::sync::mpsc::UnboundedReceiver<crate::ingest::mqtt::writer::Out>) {
        let (ack, rx) = MqttAck::observed(1);
        (Some(ack), rx)
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
