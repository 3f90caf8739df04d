//! Logs: `tracing` to stderr, plain text or one JSON object per line, with a level that
//! SIGHUP can change (`log.level`, unless `RUST_LOG` is set, which always wins).
//!
//! Under systemd (`JOURNAL_STREAM` set) no time stamp is written: journald adds its own.
//! Whatever the format, log lines carry ids, reasons and counts, never a payload or a
//! patient's personal data (see the module docs of [`crate::telemetry`]).

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

/// `text` (default) or `json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

type Reload = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// Replaces the filter of the installed subscriber.
static RELOAD: OnceLock<Reload> = OnceLock::new();

/// The filter in force: `RUST_LOG` when set, else `level` (an `EnvFilter` directive such as
/// `info` or `info,heartguard_gateway::sink=debug`).
pub fn filter(level: &str) -> Result<EnvFilter, String> {
    match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => EnvFilter::try_new(env).map_err(|e| format!("RUST_LOG: {e}")),
        _ => EnvFilter::try_new(level).map_err(|e| format!("log.level: {e}")),
    }
}

/// Installs the subscriber (once per process; later calls do nothing).
pub fn init(level: &str, format: LogFormat) {
    let filter = filter(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = std::env::var_os("NO_COLOR").is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    macro_rules! install {
        ($builder:expr) => {{
            let builder = $builder.with_filter_reloading();
            let handle = builder.reload_handle();
            if builder.try_init().is_ok() {
                let _ = RELOAD.set(Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())));
            }
        }};
    }
    let base = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    match (format, journald) {
        (LogFormat::Text, false) => install!(base.with_ansi(ansi)),
        (LogFormat::Text, true) => install!(base.with_ansi(false).without_time()),
        (LogFormat::Json, false) => install!(base.json().flatten_event(true).with_current_span(false)),
        (LogFormat::Json, true) => {
            install!(base.json().flatten_event(true).with_current_span(false).without_time())
        }
    }
}

/// Applies a new `log.level` (SIGHUP). Returns the filter now in force, as text.
pub fn set_level(level: &str) -> Result<String, String> {
    let f = filter(level)?;
    let text = f.to_string();
    let reload = RELOAD.get().ok_or("logging is not initialised")?;
    reload(f)?;
    Ok(text)
}
