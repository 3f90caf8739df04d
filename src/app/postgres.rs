//! The PostgreSQL sources the configuration names: the bindings database and the one the
//! reporter writes to (the same unless `report.postgres_url_file` is set), with the TLS
//! settings of `[bindings]`.

use std::time::Duration;

use crate::bindings::{self, postgres::PgSource};
use crate::config::Config;

/// The database the reporter writes to: `report.postgres_url_file` or the bindings one.
pub fn report_source(cfg: &Config) -> Result<PgSource, String> {
    let file = cfg.report.postgres_url_file.as_deref().or(cfg.bindings.postgres_url_file.as_deref());
    let file = file.ok_or("report.postgres_url_file: reporting needs a database")?;
    pg_source_from(cfg, file)
}

/// The PostgreSQL binding source, if configured.
pub fn pg_source(cfg: &Config) -> Result<Option<PgSource>, String> {
    match &cfg.bindings.postgres_url_file {
        Some(f) => pg_source_from(cfg, f).map(Some),
        None => Ok(None),
    }
}

fn pg_source_from(cfg: &Config, f: &std::path::Path) -> Result<PgSource, String> {
    let b = &cfg.bindings;
    let url = crate::config::secrets::read_secret(f).map_err(|e| format!("bindings.postgres_url_file: {e}"))?;
    let mut config =
        crate::bindings::config::postgres_config(&url).map_err(|e| format!("bindings.postgres_url_file: {e}"))?;
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
        let ca = b.ca_file.as_deref().ok_or("bindings.ca_file: required for TLS")?;
        Some(tokio_postgres_rustls::MakeRustlsConnect::new(
            crate::tls::client_config(ca, None).map_err(|e| e.to_string())?,
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
