//! The wire format of a pushed snapshot: a signed envelope around the snapshot's exact text.
//! The administrator's side makes keys and signs; the gateway's side authenticates.

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use super::refused::Refused;
use crate::model::Binding;

pub const FORMAT: &str = "heartguard-bindings-snapshot/1";

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

/// A snapshot whose envelope, key and signature checked out: its content is the
/// administrator's. Whether it applies here is for [`super::check::check`] to say.
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

/// Why a key pair could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Generate(ring::error::Unspecified),
    #[error("{0}")]
    Rejected(ring::error::KeyRejected),
}

/// Creates a new key pair: (PKCS#8 private key, hex; public key, hex).
pub fn generate_key() -> Result<(String, String), KeyError> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(KeyError::Generate)?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(KeyError::Rejected)?;
    Ok((hex_encode(pkcs8.as_ref()), hex_encode(pair.public_key().as_ref())))
}

/// Why a snapshot could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the key file is not a hex PKCS#8 key")]
    NotHex,
    #[error("not an Ed25519 key: {0}")]
    NotEd25519(ring::error::KeyRejected),
    #[error(transparent)]
    Json(serde_json::Error),
}

/// Signs `snapshot` with a private key as written by [`generate_key`].
pub fn sign(snapshot: &Snapshot, private_key_hex: &str) -> Result<String, SignError> {
    let pkcs8 = hex_decode(private_key_hex.trim()).ok_or(SignError::NotHex)?;
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(SignError::NotEd25519)?;
    let text = serde_json::to_string(snapshot).map_err(SignError::Json)?;
    let env = Envelope {
        format: FORMAT.into(),
        key: hex_encode(pair.public_key().as_ref()),
        signature: hex_encode(pair.sign(text.as_bytes()).as_ref()),
        snapshot: text,
    };
    serde_json::to_string(&env).map_err(SignError::Json)
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn hex_round_trip() {
        assert_eq!(hex_decode(&hex_encode(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
    }
}
