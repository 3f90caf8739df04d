//! `[bindings]`: where bindings come from (a file, PostgreSQL, signed pushes) and how fresh
//! they must be.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::problem::Problems;
use crate::config::secrets::read_secret;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bindings {
    /// A bindings file (`[[binding]]` tables). Without a file or PostgreSQL, the cached
    /// copy is used.
    pub file: Option<PathBuf>,
    /// File holding the central database's connection string (URL or `key=value`; it may
    /// carry a password, so it lives in a file only the service user can read).
    pub postgres_url_file: Option<PathBuf>,
    /// `verify-full` (default; `require` is the same here: the certificate chain and the
    /// host name are always verified against `ca_file`) or `disable` (loopback only).
    pub sslmode: String,
    /// CA certificates (PEM) that sign the PostgreSQL server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Load only the bindings of these organizations (`patients.org_id`); empty: all.
    pub org_ids: Vec<String>,
    /// Load only these device serials; empty: all.
    pub serials: Vec<String>,
    /// Full reload this often, also when no notification came (a lost NOTIFY).
    pub refresh_interval_ms: u64,
    /// How often the freshness mark is advanced (one `SELECT now()` round trip).
    pub freshness_poll_ms: u64,
    /// PostgreSQL unreachable: readings newer than the last fresh mark wait this long, then
    /// are resolved on the cached copy (counted as stale).
    pub stale_grace_ms: u64,
    /// A binding change is stamped with its transaction's start time but becomes visible at
    /// commit; the fresh-until mark trails the database clock by this much so that changes
    /// committed within it are never missed. Transactions that move devices should be short.
    pub freshness_margin_ms: u64,
    /// A parked reading (no binding covers it) waits at most this long, then moves to the
    /// dead letters with the reason `unbound`. Ended streams are kept in the cache as long.
    pub max_park_age_ms: u64,
    /// Ed25519 public keys (hex) whose signed snapshots this gateway accepts over MQTT on
    /// `heartguard/gateways/{gateway.id}/bindings`. Empty: pushes are not taken.
    pub trusted_keys: Vec<String>,
    /// A pushed snapshot whose signed `created_at` is older than this is refused: the bound on
    /// replaying an old signed snapshot when the gateway's memory of versions is gone.
    pub push_max_age_hours: u64,
}

impl Default for Bindings {
    fn default() -> Self {
        Self {
            file: None,
            postgres_url_file: None,
            sslmode: "verify-full".into(),
            ca_file: None,
            org_ids: Vec::new(),
            serials: Vec::new(),
            refresh_interval_ms: 60_000,
            freshness_poll_ms: 250,
            stale_grace_ms: 10_000,
            freshness_margin_ms: 500,
            max_park_age_ms: 24 * 3600 * 1000,
            trusted_keys: Vec::new(),
            push_max_age_hours: 720,
        }
    }
}

impl Bindings {
    /// Checks every `bindings.*` key, the files it names included, but the rules it shares
    /// with other sections (in `config`).
    pub fn validate(&self, p: &mut Problems) {
        let b = self;
        if b.file.is_some() && b.postgres_url_file.is_some() {
            p.bad("bindings.file", "choose one source: a file or bindings.postgres_url_file".into());
        }
        match b.sslmode.as_str() {
            "verify-full" | "require" => {
                if b.postgres_url_file.is_some() && b.ca_file.is_none() {
                    p.bad(
                        "bindings.ca_file",
                        "required with sslmode = \"verify-full\" (the server certificate is always verified)".into(),
                    );
                }
            }
            "disable" => {}
            other => {
                p.bad("bindings.sslmode", format!("{other:?}: use \"verify-full\" or \"disable\" (loopback only)"))
            }
        }
        self.plain_text_only_locally("bindings.postgres_url_file", b.postgres_url_file.as_deref(), p);
        if !(50..=60_000).contains(&b.freshness_poll_ms) {
            p.bad("bindings.freshness_poll_ms", "between 50 and 60000".into());
        }
        if b.refresh_interval_ms < 1000 {
            p.bad("bindings.refresh_interval_ms", "at least 1000".into());
        }
        if b.max_park_age_ms < 1000 {
            p.bad("bindings.max_park_age_ms", "at least 1000".into());
        }
        for (i, k) in b.trusted_keys.iter().enumerate() {
            if k.len() != 64 || !k.chars().all(|c| c.is_ascii_hexdigit()) {
                p.bad(&format!("bindings.trusted_keys[{i}]"), "an Ed25519 public key: 64 hex digits".into());
            }
        }
        if !b.trusted_keys.is_empty() && (b.file.is_some() || b.postgres_url_file.is_some()) {
            p.bad(
                "bindings.trusted_keys",
                "signed pushes are a binding source of their own: no bindings.file or postgres_url_file with them"
                    .into(),
            );
        }
        if !(1..=87_600).contains(&b.push_max_age_hours) {
            p.bad("bindings.push_max_age_hours", "between 1 and 87600 (ten years)".into());
        }
        for (i, o) in b.org_ids.iter().enumerate() {
            if o.trim().is_empty() {
                p.bad(&format!("bindings.org_ids[{i}]"), "must not be empty".into());
            }
        }
        b.validate_files(p);
    }

    /// With `sslmode = "disable"`, the database in `file` (under `key`) must be on this
    /// machine. The reporter connects with the same TLS settings, so its file is checked too.
    pub fn plain_text_only_locally(&self, key: &str, file: Option<&Path>, p: &mut Problems) {
        if let (Some(f), "disable") = (file, self.sslmode.as_str())
            && let Ok(url) = read_secret(f)
        {
            match postgres_config(&url) {
                Ok(c) if all_loopback(&c) => {}
                Ok(_) => p.bad(
                    "bindings.sslmode",
                    format!(
                        "\"disable\" is only allowed for a database on this machine (loopback or a Unix socket); {key} names another host"
                    ),
                ),
                Err(e) => p.bad(key, e.to_string()),
            }
        }
    }

    /// The files the section names: the bindings file and the CA exist, the connection
    /// string is a readable secret.
    fn validate_files(&self, p: &mut Problems) {
        for (key, file) in [("bindings.file", &self.file), ("bindings.ca_file", &self.ca_file)] {
            if let Some(f) = file
                && let Err(e) = std::fs::metadata(f)
            {
                p.bad(key, format!("{}: {e}", f.display()));
            }
        }
        if let Some(f) = &self.postgres_url_file
            && let Err(e) = read_secret(f)
        {
            p.bad("bindings.postgres_url_file", e.to_string());
        }
    }
}

/// A connection string tokio-postgres cannot read.
#[derive(Debug, thiserror::Error)]
#[error("not a PostgreSQL connection string: {0}")]
pub struct NotAConnectionString(#[source] tokio_postgres::Error);

/// Parses a PostgreSQL connection string (URL or `key=value` form).
pub fn postgres_config(s: &str) -> Result<tokio_postgres::Config, NotAConnectionString> {
    s.trim().parse::<tokio_postgres::Config>().map_err(NotAConnectionString)
}

/// True when every host of `c` is on this machine. `hostaddr`, when given, is the address
/// actually connected to (the host name then only serves TLS and authentication), so it must
/// be loopback too.
pub fn all_loopback(c: &tokio_postgres::Config) -> bool {
    !c.get_hosts().is_empty()
        && c.get_hosts().iter().all(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => {
                name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
            }
            tokio_postgres::config::Host::Unix(_) => true,
        })
        && c.get_hostaddrs().iter().all(|ip| ip.is_loopback())
}
