//! Logs: `tracing` to stderr, plain text or one JSON object per line, with a level that
//! SIGHUP can change (`log.level`, unless `RUST_LOG` is set, which always wins).
//!
//! Under systemd (`JOURNAL_STREAM` set) no time stamp is written: journald adds its own.
//! Whatever the format, log lines carry ids, reasons and counts, never a payload or a
//! patient's personal data (see the module docs of [`crate::telemetry`]).
//!
//! Some values come from devices (a topic, an HL7 control id, a serial): in text logs every
//! control character of a message or field is written escaped ([`EscapedFields`]), so a
//! device can neither start a line of its own (a forged log entry) nor send terminal escape
//! sequences. JSON logs escape them by construction.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::ParseError;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// `text` (default) or `json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

type Reload = Box<dyn Fn(EnvFilter) -> Result<(), tracing_subscriber::reload::Error> + Send + Sync>;

/// Replaces the filter of the installed subscriber.
static RELOAD: OnceLock<Reload> = OnceLock::new();

/// Why a log level was not put in force.
#[derive(Debug, thiserror::Error)]
pub enum LevelError {
    #[error("RUST_LOG: {0}")]
    Env(ParseError),
    #[error("log.level: {0}")]
    Level(ParseError),
    #[error("logging is not initialised")]
    NotInitialised,
    #[error("{0}")]
    Reload(#[from] tracing_subscriber::reload::Error),
}

/// The filter in force: `RUST_LOG` when set, else `level` (an `EnvFilter` directive such as
/// `info` or `info,heartguard_gateway::sink=debug`).
pub fn filter(level: &str) -> Result<EnvFilter, LevelError> {
    match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => EnvFilter::try_new(env).map_err(LevelError::Env),
        _ => EnvFilter::try_new(level).map_err(LevelError::Level),
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
                let _ = RELOAD.set(Box::new(move |f| handle.reload(f)));
            }
        }};
    }
    let base = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    match (format, journald) {
        (LogFormat::Text, false) => install!(base.with_ansi(ansi).fmt_fields(EscapedFields)),
        (LogFormat::Text, true) => install!(base.with_ansi(false).without_time().fmt_fields(EscapedFields)),
        (LogFormat::Json, false) => install!(base.json().flatten_event(true).with_current_span(false)),
        (LogFormat::Json, true) => {
            install!(base.json().flatten_event(true).with_current_span(false).without_time())
        }
    }
}

/// Applies a new `log.level` (SIGHUP). Returns the filter now in force, as text.
pub fn set_level(level: &str) -> Result<String, LevelError> {
    let f = filter(level)?;
    let text = f.to_string();
    let reload = RELOAD.get().ok_or(LevelError::NotInitialised)?;
    reload(f)?;
    Ok(text)
}

/// Lets one log line per key through per period; bounded memory.
pub struct RateLimited {
    period: std::time::Duration,
    last: HashMap<String, tokio::time::Instant>,
}

impl RateLimited {
    pub fn new(period: std::time::Duration) -> Self {
        Self { period, last: HashMap::new() }
    }

    pub fn allow(&mut self, key: &str) -> bool {
        let now = tokio::time::Instant::now();
        if self.last.len() > 10_000 {
            self.last.clear();
        }
        match self.last.get(key) {
            Some(t) if now.duration_since(*t) < self.period => false,
            _ => {
                self.last.insert(key.to_owned(), now);
                true
            }
        }
    }
}

/// The text format's fields (`message key=value key="text"`, as tracing-subscriber writes
/// them) with every control character escaped: `\n`, `\r`, `\t`, others as `\u{1b}`.
#[derive(Debug, Default, Clone, Copy)]
pub struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = EscapingVisitor { out: Escaping(writer), result: Ok(()), first: true };
        fields.record(&mut v);
        v.result
    }
}

struct EscapingVisitor<'w> {
    out: Escaping<Writer<'w>>,
    result: fmt::Result,
    first: bool,
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let sep = if std::mem::take(&mut self.first) { "" } else { " " };
        let name = field.name();
        self.result = match name {
            "message" => write!(self.out.0, "{sep}").and_then(|()| write!(self.out, "{value:?}")),
            name => write!(self.out.0, "{sep}{}=", name.strip_prefix("r#").unwrap_or(name))
                .and_then(|()| write!(self.out, "{value:?}")),
        };
    }
}

/// A writer that escapes control characters on their way through.
struct Escaping<W>(W);

impl<W: fmt::Write> fmt::Write for Escaping<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(i) = rest.find(char::is_control) {
            self.0.write_str(&rest[..i])?;
            let c = rest[i..].chars().next().unwrap_or('\0');
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
            }
            rest = &rest[i + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A control id and a topic as a device could send them: one log line, nothing forged,
    /// no terminal escape; ordinary fields written as the default format writes them.
    #[test]
    fn device_text_cannot_forge_a_line_or_drive_the_terminal() {
        let out = Captured::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .fmt_fields(EscapedFields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let control_id = "C1\n2026-12-06T00:00:00Z ERROR Forged entry.";
            let topic = "devices/\u{1b}[2J/vitals";
            tracing::warn!(control_id = %control_id, topic, attempt = 3, "HL7 message refused.");
        });
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf8");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert_eq!(
            text.trim(),
            "WARN HL7 message refused. control_id=C1\\n2026-12-06T00:00:00Z ERROR Forged entry. topic=\"devices/\\u{1b}[2J/vitals\" attempt=3"
        );
    }
}
