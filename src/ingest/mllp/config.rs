//! `[hl7]`: the MLLP listener for HL7 v2 (IHE PCD-01) messages: who may connect, TLS, limits,
//! and the zone of times sent without an offset.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::problem::Problems;
use crate::config::secrets::secret_file_mode;
use crate::model::valid_signal_type;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hl7 {
    /// Off by default: the listener opens a TCP port.
    pub enabled: bool,
    /// `host:port` to listen on for MLLP connections.
    pub listen: String,
    /// Connections served at once; more are closed at once (counted; `/readyz` says so).
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed: an unplugged monitor leaves a
    /// half-open socket that would hold its slot for ever.
    pub idle_timeout_secs: u64,
    /// Largest message accepted; a larger one is refused (AR) and skipped.
    pub max_message_bytes: usize,
    /// Signal type given to HL7 readings (routes devices with several streams).
    pub signal_type: Option<String>,
    /// How times without a zone offset are read: `local` (the gateway's zone), `UTC` or a
    /// fixed offset such as `+01:00` ([`crate::protocols::hl7::Zone`]).
    pub time_zone: String,
    /// Peers that may connect (addresses or CIDR networks); others are closed at once. MLLP
    /// has no authentication of its own: whoever reaches the port could write vitals for a
    /// bound device.
    pub allow: Vec<String>,
    /// MLLP over TLS: the gateway's certificate chain and private key (PEM). Both or neither.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// With TLS: CA certificates (PEM) that sign the monitors' client certificates; when set,
    /// a client certificate is required.
    pub client_ca_file: Option<PathBuf>,
}

impl Default for Hl7 {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: "127.0.0.1:2575".into(),
            max_connections: 64,
            idle_timeout_secs: 300,
            max_message_bytes: 1024 * 1024,
            signal_type: None,
            time_zone: "local".into(),
            allow: vec!["127.0.0.0/8".into(), "::1".into()],
            tls_cert_file: None,
            tls_key_file: None,
            client_ca_file: None,
        }
    }
}

/// An entry of `hl7.allow` that is neither an address nor a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address or a CIDR network (e.g. 10.20.0.0/16)")]
pub struct PeerNetworkError(String);

/// A peer address (`10.20.1.7`, `::1`) or network (`10.20.0.0/16`) of `hl7.allow`.
pub fn peer_network(s: &str) -> Result<ipnet::IpNet, PeerNetworkError> {
    let s = s.trim();
    let net = if s.contains('/') {
        s.parse::<ipnet::IpNet>().ok()
    } else {
        s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from)
    };
    net.ok_or_else(|| PeerNetworkError(s.to_owned()))
}

impl Hl7 {
    /// Checks every `hl7.*` key when the listener is enabled, the files it names included.
    pub fn validate(&self, p: &mut Problems) {
        let h = self;
        if !h.enabled {
            return;
        }
        if h.listen.parse::<std::net::SocketAddr>().is_err() {
            p.bad("hl7.listen", format!("{:?} is not an address:port (e.g. 127.0.0.1:2575)", h.listen));
        }
        if !(1..=10_000).contains(&h.max_connections) {
            p.bad("hl7.max_connections", "between 1 and 10000".into());
        }
        if !(1..=86_400).contains(&h.idle_timeout_secs) {
            p.bad("hl7.idle_timeout_secs", "between 1 and 86400".into());
        }
        if !(1024..=64 * 1024 * 1024).contains(&h.max_message_bytes) {
            p.bad("hl7.max_message_bytes", "between 1024 and 67108864".into());
        }
        if h.signal_type.as_deref().is_some_and(|s| !valid_signal_type(s)) {
            p.bad("hl7.signal_type", "1 to 60 characters without control characters".into());
        }
        if let Err(e) = crate::protocols::hl7::time::Zone::parse(&h.time_zone) {
            p.bad("hl7.time_zone", e.to_string());
        }
        if h.allow.is_empty() {
            p.bad("hl7.allow", "empty: no monitor could connect (the default is loopback only)".into());
        }
        for (n, a) in h.allow.iter().enumerate() {
            if let Err(e) = peer_network(a) {
                p.bad(&format!("hl7.allow[{n}]"), e.to_string());
            }
        }
        if h.tls_cert_file.is_some() != h.tls_key_file.is_some() {
            p.bad("hl7.tls_key_file", "tls_cert_file and tls_key_file go together".into());
        }
        if h.client_ca_file.is_some() && h.tls_cert_file.is_none() {
            p.bad("hl7.client_ca_file", "only with hl7.tls_cert_file and hl7.tls_key_file".into());
        }
        for (key, file) in [("hl7.tls_cert_file", &h.tls_cert_file), ("hl7.client_ca_file", &h.client_ca_file)] {
            if let Some(f) = file
                && let Err(e) = std::fs::metadata(f)
            {
                p.bad(key, format!("{}: {e}", f.display()));
            }
        }
        if let Some(f) = &h.tls_key_file
            && let Err(e) = secret_file_mode(f)
        {
            p.bad("hl7.tls_key_file", e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn hl7_allowlist_and_tls_are_validated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "k").expect("write");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
        let cfg = Config::parse(&format!(
            "[hl7]\nenabled = true\nallow = [\"10.20.0.0/16\", \"10.20.0.0/33\", \"host\"]\ntls_key_file = \"{}\"\nclient_ca_file = \"/nonexistent/ca.pem\"\n",
            key.display()
        ))
        .expect("parses");
        let keys: Vec<String> = cfg.validate().expect_err("invalid").into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            ["hl7.allow[1]", "hl7.allow[2]", "hl7.tls_key_file", "hl7.client_ca_file", "hl7.client_ca_file"]
        );
        let net = |s: &str| peer_network(s).expect(s);
        assert!(net("10.20.0.0/16").contains(&"10.20.3.4".parse::<std::net::IpAddr>().expect("ip")));
        assert!(!net("127.0.0.1").contains(&"127.0.0.2".parse::<std::net::IpAddr>().expect("ip")));
        assert!(net("::1").contains(&"::1".parse::<std::net::IpAddr>().expect("ip")));
        assert!(Config::parse("[hl7]\nenabled = true\nallow = []\n").expect("parses").validate().is_err());
    }
}
