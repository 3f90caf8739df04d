//! `[mqtt]`: the broker, the topics readings arrive on, the persistent session.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::problem::Problems;
use crate::config::secrets::{read_secret, secret_file_mode};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mqtt {
    /// Set to false to run without MQTT.
    pub enabled: bool,
    /// `mqtt://host:port`.
    pub url: String,
    /// Topic filters; a level written `{serial}` names the device serial.
    pub topics: Vec<String>,
    /// Fixed client id of the persistent session; default `heartguard-gateway-<gateway.id>`.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub keep_alive_secs: u64,
    /// Largest payload decoded; larger ones are counted and dropped.
    pub max_payload_bytes: usize,
    /// `mqtts://` only: CA certificates (PEM) that sign the broker's certificate.
    pub ca_file: Option<PathBuf>,
    /// `mqtts://` only: a client certificate chain (PEM) and its private key, for brokers
    /// that authenticate clients by certificate. Both or neither.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl Default for Mqtt {
    fn default() -> Self {
        Self {
            enabled: true,
            url: "mqtt://127.0.0.1:1883".into(),
            topics: vec!["devices/{serial}/vitals".into()],
            client_id: None,
            username: None,
            password_file: None,
            keep_alive_secs: 30,
            max_payload_bytes: 256 * 1024,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

/// Where the MQTT broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
    /// `mqtts://`: TLS.
    pub tls: bool,
}

/// Why `mqtt.url` names no broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerUrlError {
    #[error("{0:?} must start with mqtt:// or mqtts://")]
    Scheme(String),
    #[error("{0:?} is not a port number")]
    Port(String),
    #[error("{0:?} has no host")]
    NoHost(String),
}

/// The commands that publish to the broker (`publish-bindings`, the simulator) report
/// errors as text.
impl From<BrokerUrlError> for String {
    fn from(e: BrokerUrlError) -> Self {
        e.to_string()
    }
}

/// Parses `mqtt://host[:port]`.
pub fn broker_addr(url: &str) -> Result<BrokerAddr, BrokerUrlError> {
    let (rest, tls) = match (url.strip_prefix("mqtt://"), url.strip_prefix("mqtts://")) {
        (Some(r), _) => (r, false),
        (_, Some(r)) => (r, true),
        _ => return Err(BrokerUrlError::Scheme(url.to_owned())),
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| BrokerUrlError::Port(p.to_owned()))?)
        }
        _ => (rest, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return Err(BrokerUrlError::NoHost(url.to_owned()));
    }
    Ok(BrokerAddr { host: host.to_owned(), port, tls })
}

/// A configured topic filter: what to subscribe to and where the serial sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    /// The MQTT filter (`{serial}` replaced by `+`).
    pub filter: String,
    /// Index of the `{serial}` level, if any.
    pub serial_level: Option<usize>,
}

/// Why a topic of `mqtt.topics` is not a filter the gateway can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("must not be empty")]
    Empty,
    #[error("{{serial}} may appear once")]
    SerialTwice,
    #[error("'#' must be the last level")]
    HashNotLast,
    #[error("level {0:?}: wildcards must fill a whole level")]
    PartialWildcard(String),
}

impl TopicPattern {
    pub fn parse(t: &str) -> Result<Self, TopicError> {
        if t.is_empty() {
            return Err(TopicError::Empty);
        }
        let levels: Vec<&str> = t.split('/').collect();
        let mut serial_level = None;
        for (i, l) in levels.iter().enumerate() {
            match *l {
                "{serial}" if serial_level.is_none() => serial_level = Some(i),
                "{serial}" => return Err(TopicError::SerialTwice),
                "#" if i + 1 != levels.len() => return Err(TopicError::HashNotLast),
                l if l != "#" && l != "+" && (l.contains(['+', '#', '{', '}'])) => {
                    return Err(TopicError::PartialWildcard(l.to_owned()));
                }
                _ => {}
            }
        }
        let filter = levels.iter().map(|l| if *l == "{serial}" { "+" } else { l }).collect::<Vec<_>>().join("/");
        Ok(Self { filter, serial_level })
    }

    /// The serial named by `topic`, when this pattern matches it and has a `{serial}` level.
    pub fn serial_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let idx = self.serial_level?;
        if !topic_matches(&self.filter, topic) {
            return None;
        }
        topic.split('/').nth(idx)
    }
}

/// MQTT filter matching (`+` one level, `#` the rest).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match (f, t.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(l)) if f == l => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

impl Mqtt {
    /// Checks every `mqtt.*` key, the files it names included.
    pub fn validate(&self, p: &mut Problems) {
        let m = self;
        if m.enabled {
            m.validate_session(p);
        }
        // Certificates are public; private keys and passwords are secrets (their mode is checked).
        for (key, file) in [("mqtt.ca_file", &m.ca_file), ("mqtt.client_cert_file", &m.client_cert_file)] {
            if let Some(f) = file
                && let Err(e) = std::fs::metadata(f)
            {
                p.bad(key, format!("{}: {e}", f.display()));
            }
        }
        if let Some(f) = &m.client_key_file
            && let Err(e) = secret_file_mode(f)
        {
            p.bad("mqtt.client_key_file", e.to_string());
        }
        if let Some(f) = &m.password_file
            && let Err(e) = read_secret(f)
        {
            p.bad("mqtt.password_file", e.to_string());
        }
    }

    fn validate_session(&self, p: &mut Problems) {
        let m = self;
        if let Err(e) = broker_addr(&m.url) {
            p.bad("mqtt.url", e.to_string());
        }
        if m.topics.is_empty() {
            p.bad("mqtt.topics", "at least one topic filter".into());
        }
        for (i, t) in m.topics.iter().enumerate() {
            if let Err(e) = TopicPattern::parse(t) {
                p.bad(&format!("mqtt.topics[{i}]"), e.to_string());
            }
        }
        if let Some(id) = &m.client_id
            && (id.is_empty() || id.len() > 23 * 4 || id.contains(['+', '#', '/']))
        {
            p.bad(
                "mqtt.client_id",
                "must be non-empty (the persistent session needs a fixed id), without '+', '#', '/'".into(),
            );
        }
        if m.password_file.is_some() && m.username.is_none() {
            p.bad("mqtt.password_file", "needs mqtt.username".into());
        }
        if !(2..=65_535).contains(&m.keep_alive_secs) {
            p.bad("mqtt.keep_alive_secs", "between 2 and 65535".into());
        }
        if !(64..=64 * 1024 * 1024).contains(&m.max_payload_bytes) {
            p.bad("mqtt.max_payload_bytes", "between 64 and 67108864".into());
        }
        if let Ok(addr) = broker_addr(&m.url) {
            if addr.tls && m.ca_file.is_none() {
                p.bad("mqtt.ca_file", "required for mqtts:// (the CA that signs the broker's certificate)".into());
            }
            for (key, f) in [
                ("mqtt.ca_file", &m.ca_file),
                ("mqtt.client_cert_file", &m.client_cert_file),
                ("mqtt.client_key_file", &m.client_key_file),
            ] {
                if !addr.tls && f.is_some() {
                    p.bad(key, "only with an mqtts:// mqtt.url".into());
                }
            }
            if m.client_cert_file.is_some() != m.client_key_file.is_some() {
                p.bad("mqtt.client_key_file", "client_cert_file and client_key_file go together".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_extract_the_serial() {
        let p = TopicPattern::parse("devices/{serial}/vitals").expect("valid");
        assert_eq!(p.filter, "devices/+/vitals");
        assert_eq!(p.serial_of("devices/ABC-001/vitals"), Some("ABC-001"));
        assert_eq!(p.serial_of("devices/ABC-001/other"), None);
        assert!(topic_matches("a/#", "a/b/c") && !topic_matches("a/+", "a/b/c"));
        assert!(TopicPattern::parse("a/#/b").is_err() && TopicPattern::parse("a/x+/b").is_err());
    }

    /// `check-config` prints these after the key.
    #[test]
    fn url_and_topic_problems_read_as_before() {
        let url = |u: &str| broker_addr(u).expect_err(u).to_string();
        assert_eq!(url("http://x"), r#""http://x" must start with mqtt:// or mqtts://"#);
        assert_eq!(url("mqtt://broker:x"), r#""x" is not a port number"#);
        assert_eq!(url("mqtt://:1"), r#""mqtt://:1" has no host"#);
        let topic = |t: &str| TopicPattern::parse(t).expect_err(t).to_string();
        assert_eq!(topic(""), "must not be empty");
        assert_eq!(topic("a/{serial}/{serial}"), "{serial} may appear once");
        assert_eq!(topic("a/#/b"), "'#' must be the last level");
        assert_eq!(topic("a/x+/b"), r#"level "x+": wildcards must fill a whole level"#);
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            broker_addr("mqtt://127.0.0.1:1884"),
            Ok(BrokerAddr { host: "127.0.0.1".into(), port: 1884, tls: false })
        );
        assert_eq!(broker_addr("mqtt://broker").map(|b| b.port), Ok(1883));
        assert!(broker_addr("http://x").is_err() && broker_addr("mqtt://:1").is_err());
        assert_eq!(
            broker_addr("mqtts://broker.ward3"),
            Ok(BrokerAddr { host: "broker.ward3".into(), port: 8883, tls: true })
        );
    }
}
