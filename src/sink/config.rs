//! `[influx]`: where points are written, how, and how failures are retried.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::problem::Problems;
use crate::config::secrets::{read_secret, secret_file_mode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InfluxApi {
    /// InfluxDB 1.x: `/write?db=&rp=`, user/password.
    V1,
    /// InfluxDB 2.x (and 1.8+/3.x compatibility): `/api/v2/write?org=&bucket=`, token.
    V2,
    /// InfluxDB 3.x: `/api/v3/write_lp?db=`, token; lists rejected lines on a partial write.
    V3,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Influx {
    pub url: String,
    pub api: InfluxApi,
    /// v2: file holding the API token.
    pub token_file: Option<PathBuf>,
    /// v1: user name and the file holding the password (HTTP basic auth).
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub batch_max_lines: usize,
    pub batch_max_bytes: usize,
    pub flush_interval_ms: u64,
    pub gzip: bool,
    pub request_timeout_ms: u64,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// `https://` only: CA certificates (PEM) to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// `https://` only: a client certificate chain (PEM) and its private key. Both or neither.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl Default for Influx {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8086".into(),
            api: InfluxApi::V1,
            token_file: None,
            username: None,
            password_file: None,
            batch_max_lines: 5000,
            batch_max_bytes: 4 * 1024 * 1024,
            flush_interval_ms: 1000,
            gzip: true,
            request_timeout_ms: 30_000,
            retry_initial_ms: 500,
            retry_max_ms: 60_000,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

impl Influx {
    /// Checks every `influx.*` key, the files it names included.
    pub fn validate(&self, p: &mut Problems) {
        let i = self;
        match reqwest::Url::parse(&i.url) {
            Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {
                if u.scheme() == "http" {
                    for (key, f) in [
                        ("influx.ca_file", &i.ca_file),
                        ("influx.client_cert_file", &i.client_cert_file),
                        ("influx.client_key_file", &i.client_key_file),
                    ] {
                        if f.is_some() {
                            p.bad(key, "only with an https:// influx.url".into());
                        }
                    }
                }
            }
            _ => p.bad("influx.url", format!("{:?} is not an http:// or https:// URL", i.url)),
        }
        if i.client_cert_file.is_some() != i.client_key_file.is_some() {
            p.bad("influx.client_key_file", "client_cert_file and client_key_file go together".into());
        }
        // The client certificate is part of the TLS configuration built from the CA file;
        // without one it would silently not be presented.
        if i.client_cert_file.is_some() && i.ca_file.is_none() {
            p.bad(
                "influx.client_cert_file",
                "needs influx.ca_file (the CA that signs InfluxDB's certificate) to be presented".into(),
            );
        }
        match i.api {
            InfluxApi::V2 if i.token_file.is_none() => p.bad("influx.token_file", "required for api = \"v2\"".into()),
            InfluxApi::V1 if i.token_file.is_some() => {
                p.bad("influx.token_file", "only for api = \"v2\" (v1 uses username/password_file)".into())
            }
            _ => {}
        }
        if i.password_file.is_some() && i.username.is_none() {
            p.bad("influx.password_file", "needs influx.username".into());
        }
        if !(1..=100_000).contains(&i.batch_max_lines) {
            p.bad("influx.batch_max_lines", "between 1 and 100000".into());
        }
        if !(1024..=25_000_000).contains(&i.batch_max_bytes) {
            p.bad("influx.batch_max_bytes", "between 1024 and 25000000 (InfluxDB 1.x refuses larger bodies)".into());
        }
        if !(10..=3_600_000).contains(&i.flush_interval_ms) {
            p.bad("influx.flush_interval_ms", "between 10 and 3600000".into());
        }
        if i.request_timeout_ms < 100 {
            p.bad("influx.request_timeout_ms", "at least 100".into());
        }
        if i.retry_initial_ms == 0 || i.retry_max_ms < i.retry_initial_ms {
            p.bad("influx.retry_max_ms", "retry_initial_ms must be > 0 and <= retry_max_ms".into());
        }
        // Certificates are public; private keys, tokens and passwords are secrets.
        for (key, file) in [("influx.ca_file", &i.ca_file), ("influx.client_cert_file", &i.client_cert_file)] {
            if let Some(f) = file
                && let Err(e) = std::fs::metadata(f)
            {
                p.bad(key, format!("{}: {e}", f.display()));
            }
        }
        if let Some(f) = &i.client_key_file
            && let Err(e) = secret_file_mode(f)
        {
            p.bad("influx.client_key_file", e.to_string());
        }
        for (key, file) in [("influx.token_file", &i.token_file), ("influx.password_file", &i.password_file)] {
            if let Some(f) = file
                && let Err(e) = read_secret(f)
            {
                p.bad(key, e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn an_influx_client_certificate_needs_the_ca_it_is_presented_with() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("client.pem"), dir.path().join("client.key"));
        std::fs::write(&cert, "cert").expect("write");
        std::fs::write(&key, "key").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut cfg = Config::default();
        cfg.influx.url = "https://influx.ward3:8086".into();
        cfg.influx.client_cert_file = Some(cert);
        cfg.influx.client_key_file = Some(key);
        let p = cfg.validate().expect_err("a client certificate without a CA file");
        assert_eq!(p.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(), ["influx.client_cert_file"], "{p:?}");
    }
}
