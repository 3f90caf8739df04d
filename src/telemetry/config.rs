//! `[http]` and `[log]`: the metrics/health endpoint and the logs.

use serde::{Deserialize, Serialize};

use crate::config::problem::Problems;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Serve `/metrics`, `/healthz`, `/readyz` and `/status`.
    pub enabled: bool,
    /// `address:port`. Loopback by default: the endpoint has no authentication.
    pub listen: String,
}

impl Default for Http {
    fn default() -> Self {
        Self { enabled: true, listen: "127.0.0.1:9187".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `EnvFilter` directives (`info`, `debug`, `info,heartguard_gateway::sink=debug`).
    /// `RUST_LOG` wins when set. SIGHUP applies a new value.
    pub level: String,
    /// `text` or `json` (one object per line); `run --log-format` overrides it.
    pub format: crate::telemetry::logging::LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Self { level: "info".into(), format: crate::telemetry::logging::LogFormat::Text }
    }
}

impl Http {
    pub fn validate(&self, p: &mut Problems) {
        if self.enabled && self.listen.parse::<std::net::SocketAddr>().is_err() {
            p.bad("http.listen", format!("{:?} is not an address:port (for example \"127.0.0.1:9187\")", self.listen));
        }
    }
}

impl Log {
    pub fn validate(&self, p: &mut Problems) {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.level) {
            p.bad(
                "log.level",
                format!("{:?}: {e} (for example \"info\" or \"info,heartguard_gateway::sink=debug\")", self.level),
            );
        }
    }
}
