//! The PostgreSQL sources the configuration names: the bindings database and the one the
//! reporter writes to (the same unless `report.postgres_url_file` is set), with the TLS
//! settings of `[bindings]`.

use std::time::Duration;

use crate::bindings::{self, postgres::PgSource};
use crate::config::Config;
use crate::config::secrets::SecretError;

/// Why a PostgreSQL source cannot be built; each message names its key.
#[derive(Debug, thiserror::Error)]
pub enum PgSourceError {
    #[error("report.postgres_url_file: reporting needs a database")]
    NoDatabase,
    #[error("bindings.postgres_url_file: {0}")]
    Secret(#[source] SecretError),
    #[error("bindings.postgres_url_file: {0}")]
    ConnectionString(#[source] crate::bindings::config::NotAConnectionString),
    #[error("bindings.ca_file: required for TLS")]
    NoCa,
    #[error("{0}")]
    Tls(#[source] crate::tls::TlsError),
}

/// The database the reporter writes to: `report.postgres_url_file` or the bindings one.
pub fn report_source(cfg: &Config) -> Result<PgSource, PgSourceError> {
    let file = cfg.report.postgres_url_file.as_deref().or(cfg.bindings.postgres_url_file.as_deref());
    let file = file.ok_or(PgSourceError::NoDatabase)?;
    pg_source_from(cfg, file)
}

/// The PostgreSQL binding source, if configured.
pub fn pg_source(cfg: &Config) -> Result<Option<PgSource>, PgSourceError> {
    match &cfg.bindings.postgres_url_file {
        Some(f) => pg_source_from(cfg, f).map(Some),
        None => Ok(None),
    }
}

fn pg_source_from(cfg: &Config, f: &std::path::Path) -> Result<PgSource, PgSourceError> {
    let b = &cfg.bindings;
    let url = crate::config::secrets::read_secret(f).map_err(PgSourceError::Secret)?;
    let mut config = crate::bindings::config::postgres_config(&url).map_err(PgSourceError::ConnectionString)?;
    config
        .application_name(format!("heartguard-gateway {}", cfg.gateway.id))
        .connect_timeout(Duration::from_secs(10))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30));
    let tls = if b.sslmode == "disable" {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        None
    } else {
        // Require: never a silent fallback to plain text.
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
        let ca = b.ca_file.as_deref().ok_or(PgSourceError::NoCa)?;
        Some(tokio_postgres_rustls::MakeRustlsConnect::new(
            crate::tls::client_config(ca, None).map_err(PgSourceError::Tls)?,
        ))
    };
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(n) => n.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    let label = format!("{}/{}", hosts.join(","), config.get_dbname().unwrap_or(""));
    let max_park_age = Duration::from_millis(b.max_park_age_ms);
    Ok(PgSource {
        config,
        tls,
        scope: bindings::postgres::Scope { org_ids: b.org_ids.clone(), serials: b.serials.clone() },
        refresh: Duration::from_millis(b.refresh_interval_ms),
        poll: Duration::from_millis(b.freshness_poll_ms),
        stale_grace: Duration::from_millis(b.stale_grace_ms),
        margin: Duration::from_millis(b.freshness_margin_ms),
        keep_ended: max_park_age,
        label,
    })
}
