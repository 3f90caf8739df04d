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

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use super::Binding;

pub const FORMAT: &str = "heartguard-bindings-snapshot/1";

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
    #[error("snapshot holds invalid bindings: {0}")]
    Invalid(String),
}

impl Refused {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UntrustedKey => "untrusted_key",
            Self::BadSignature => "bad_signature",
            Self::OtherGateway(_) => "other_gateway",
            Self::NotNewer { .. } => "not_newer",
            Self::Invalid(_) => "invalid",
        }
    }
}

/// Checks an envelope; returns the snapshot if it may be applied.
pub fn verify(payload: &[u8], trusted: &[String], gateway_id: &str, have_version: u64) -> Result<Snapshot, Refused> {
    let env: Envelope = serde_json::from_slice(payload).map_err(|e| Refused::Malformed(e.to_string()))?;
    if env.format != FORMAT {
        return Err(Refused::Malformed(format!("format {:?}", crate::model::loggable(&env.format))));
    }
    let key = env.key.to_ascii_lowercase();
    if !trusted.iter().any(|t| t.eq_ignore_ascii_case(&key)) {
        return Err(Refused::UntrustedKey);
    }
    let pk = hex_decode(&key).ok_or_else(|| Refused::Malformed("key is not hex".into()))?;
    let sig = hex_decode(&env.signature).ok_or_else(|| Refused::Malformed("signature is not hex".into()))?;
    UnparsedPublicKey::new(&ED25519, &pk).verify(env.snapshot.as_bytes(), &sig).map_err(|_| Refused::BadSignature)?;
    // Only now is the content trusted enough to parse.
    let snap: Snapshot = serde_json::from_str(&env.snapshot).map_err(|e| Refused::Malformed(e.to_string()))?;
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
    Ok(snap)
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

/// A pushed message and how to acknowledge it.
pub struct PushMsg {
    pub payload: Vec<u8>,
    pub ack: Option<crate::ingest::Ack>,
}

/// The version of the snapshot in force, from the table's source (`push v<N> …`).
pub fn version_in_force(source: &str) -> u64 {
    source.strip_prefix("push v").and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Applies verified snapshots as they arrive; refuses the rest (logged, counted).
pub async fn run(
    mut rx: tokio::sync::mpsc::Receiver<PushMsg>,
    trusted: Vec<String>,
    gateway_id: String,
    queue: crate::queue::QueueHandle,
    view: super::ViewTx,
    counters: std::sync::Arc<crate::telemetry::Counters>,
) {
    while let Some(msg) = rx.recv().await {
        let have = version_in_force(&view.borrow().table.source);
        match verify(&msg.payload, &trusted, &gateway_id, have) {
            Ok(snap) => {
                let key = serde_json::from_slice::<Envelope>(&msg.payload).map(|e| e.key).unwrap_or_default();
                let source = format!("push v{} key {}", snap.version, key.get(..16).unwrap_or(&key));
                match super::apply_if(snap.bindings, &source, &queue, &view, true).await {
                    Ok(_) => tracing::info!(version = snap.version, "Signed binding snapshot accepted."),
                    Err(e) => {
                        tracing::error!(error = %e, "Could not apply a signed binding snapshot; keeping the bindings in force.")
                    }
                }
            }
            Err(why) => {
                counters.push_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(reason = why.label(), detail = %why, "Refused a pushed binding snapshot; the bindings in force stay.");
            }
        }
        if let Some(ack) = msg.ack {
            ack.send();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(version: u64, gateway: &str) -> Snapshot {
        Snapshot { gateway: gateway.into(), version, created_at: "2026-11-28T00:00:00Z".into(), bindings: vec![] }
    }

    #[test]
    fn only_trusted_newer_snapshots_for_this_gateway_pass() {
        let (private, public) = generate_key().expect("key");
        let (other_private, _) = generate_key().expect("key");
        let trusted = vec![public.clone()];
        let good = sign(&snapshot(5, "gw-1"), &private).expect("sign");
        assert_eq!(verify(good.as_bytes(), &trusted, "gw-1", 4).map(|s| s.version), Ok(5));
        assert_eq!(
            verify(good.as_bytes(), &trusted, "gw-1", 5).map(|s| s.version),
            Err(Refused::NotNewer { got: 5, have: 5 })
        );
        assert!(matches!(verify(good.as_bytes(), &trusted, "gw-2", 0), Err(Refused::OtherGateway(_))));
        let stranger = sign(&snapshot(9, "gw-1"), &other_private).expect("sign");
        assert_eq!(verify(stranger.as_bytes(), &trusted, "gw-1", 0).map(|_| ()), Err(Refused::UntrustedKey));
        // The same envelope with a tampered snapshot.
        let mut env: Envelope = serde_json::from_str(&good).expect("env");
        env.snapshot = env.snapshot.replace("\"version\":5", "\"version\":50");
        let tampered = serde_json::to_string(&env).expect("json");
        assert_eq!(verify(tampered.as_bytes(), &trusted, "gw-1", 0).map(|_| ()), Err(Refused::BadSignature));
        assert!(matches!(verify(b"{}", &trusted, "gw-1", 0), Err(Refused::Malformed(_))));
        let all = sign(&snapshot(6, "*"), &private).expect("sign");
        assert!(verify(all.as_bytes(), &trusted, "gw-9", 0).is_ok());
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex_decode(&hex_encode(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
    }
}
