//! SIGHUP (`systemctl reload heartguard-gateway`): re-reads the configuration file and applies
//! what can change while running, says what cannot.
//!
//! - `log.level` is applied at once (unless `RUST_LOG` is set, which always wins).
//! - The bindings file (`bindings.file`, also a new path) is read, validated and put in force
//!   as one swap; a file with problems is refused whole, logged and counted
//!   (`heartguard_bindings_sync_errors_total`), and the bindings in force stay. Bindings from
//!   PostgreSQL are kept current by their sync; SIGHUP does not touch them.
//! - Every other key whose value changed is logged at WARN with its name: it takes effect at
//!   the next restart. Nothing is silently ignored.
//! - A configuration file that does not parse or validate changes nothing (ERROR with every
//!   problem).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::bindings::{self, view::View, view::ViewTx};
use crate::config::Config;
use crate::queue::handle::QueueHandle;
use crate::telemetry::{Counters, logging, systemd};

/// Keys SIGHUP applies; every other changed key needs a restart.
const APPLIED: [&str; 2] = ["log.level", "bindings.file"];

/// What a reload did (for tests and the log).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Keys whose new value waits for a restart.
    pub needs_restart: Vec<String>,
    /// The bindings were replaced.
    pub bindings: bool,
    /// Something was refused (the configuration or the bindings file).
    pub refused: bool,
}

pub struct Reloader {
    /// The configuration in force (what a reload compares against).
    pub cfg: Config,
    pub queue: QueueHandle,
    pub view: ViewTx,
    pub counters: Arc<Counters>,
}

impl Reloader {
    /// Takes over SIGHUP (its default would end the process) and reloads on each one, until
    /// `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "Cannot handle SIGHUP; reloading needs a restart.");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            info!("SIGHUP: reloading the configuration file, the bindings file and the log level.");
            systemd::reloading();
            self.reload().await;
            systemd::ready("Reloaded.");
        }
    }

    /// One reload.
    pub async fn reload(&mut self) -> Reloaded {
        let mut done = Reloaded::default();
        let new = match &self.cfg.source {
            None => self.cfg.clone(),
            Some(path) => match Config::load(path) {
                Ok(c) => c,
                Err(problems) => {
                    let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
                    error!(file = %path.display(), problems = %list.join("; "), "Configuration file refused at reload; nothing changed.");
                    done.refused = true;
                    return done;
                }
            },
        };
        match logging::set_level(&new.log.level) {
            Ok(filter) => info!(filter = %filter, "Log level in force."),
            Err(e) => warn!(error = %e, "Log level not changed."),
        }
        self.cfg.log.level = new.log.level.clone();

        done.needs_restart =
            changed_keys(&self.cfg, &new).into_iter().filter(|k| !APPLIED.contains(&k.as_str())).collect();
        for key in &done.needs_restart {
            warn!(key = %key, "Setting changed in the configuration file; it takes effect only after a restart.");
        }

        if new.bindings.postgres_url_file.is_some() {
            info!("Bindings come from PostgreSQL and are kept current by its sync; not reloaded from a file.");
        } else if let Some(path) = &new.bindings.file {
            match bindings::load_table(Some(path), &self.queue).await {
                Ok(table) => {
                    info!(bindings = table.len(), source = %table.source, version = %table.version, "Bindings reloaded.");
                    View::put_table(&self.view, table);
                    self.cfg.bindings.file = new.bindings.file.clone();
                    done.bindings = true;
                }
                Err(problems) => {
                    self.counters.sync_errors.fetch_add(1, Relaxed);
                    error!(problems = %problems.join("; "), "Bindings file refused at reload; the bindings in force stay.");
                    done.refused = true;
                }
            }
        }
        done
    }
}

/// Dotted keys whose values differ (arrays such as `[[serial]]` compare whole).
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (flatten(old), flatten(new));
    let mut keys: Vec<String> = a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).cloned().collect();
    keys.sort();
    keys.dedup();
    keys
}

fn flatten(cfg: &Config) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_owned(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(v) = toml::Value::try_from(cfg) {
        walk("", &v, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_name_each_setting_and_absent_optionals() {
        let old = Config::default();
        let mut new = Config::default();
        new.mqtt.keep_alive_secs = 40;
        new.log.level = "debug".into();
        new.influx.token_file = Some("/etc/x".into());
        assert_eq!(changed_keys(&old, &new), ["influx.token_file", "log.level", "mqtt.keep_alive_secs"]);
        assert!(changed_keys(&old, &old).is_empty());
    }
}
