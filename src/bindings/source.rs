//! Where the binding table in force came from.
//!
//! Status, logs and `bindings list` show it as text, and the cache keeps that text beside its
//! copy: `none`, `file <path>`, `postgres <host/database>`, `push v<version> key <key>` (the
//! first 16 hex digits of the key that signed the snapshot). [`BindingSource`] reads back
//! exactly the texts it writes and nothing else.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The source of a binding table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BindingSource {
    /// No copy was ever stored: nothing is bound.
    #[default]
    None,
    /// A bindings file (`bindings.file`).
    File(PathBuf),
    /// The central database, by its label: host and database, never the password.
    Postgres(String),
    /// A signed snapshot pushed over MQTT: its version, and the opening of its key.
    Push { version: u64, key: String },
}

impl BindingSource {
    /// The kind of source, one word: a metric label (a file path never becomes one).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::File(_) => "file",
            Self::Postgres(_) => "postgres",
            Self::Push { .. } => "push",
        }
    }

    /// The version of the signed snapshot in force; 0 when the table did not come from one.
    pub fn push_version(&self) -> u64 {
        match self {
            Self::Push { version, .. } => *version,
            _ => 0,
        }
    }
}

impl fmt::Display for BindingSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Postgres(label) => write!(f, "postgres {label}"),
            Self::Push { version, key } => write!(f, "push v{version} key {key}"),
        }
    }
}

/// A source text this gateway never writes: the cache was changed by something else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the source {0:?} is not one this gateway writes")]
pub struct UnknownSource(pub String);

impl FromStr for BindingSource {
    type Err = UnknownSource;

    fn from_str(s: &str) -> Result<Self, UnknownSource> {
        if s == "none" {
            return Ok(Self::None);
        }
        if let Some(path) = s.strip_prefix("file ") {
            return Ok(Self::File(PathBuf::from(path)));
        }
        if let Some(label) = s.strip_prefix("postgres ") {
            return Ok(Self::Postgres(label.to_owned()));
        }
        if let Some((version, key)) = s.strip_prefix("push v").and_then(|rest| rest.split_once(" key "))
            && let Ok(version) = version.parse()
        {
            return Ok(Self::Push { version, key: key.to_owned() });
        }
        Err(UnknownSource(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_reads_back_from_the_text_it_shows() {
        let sources = [
            (BindingSource::None, "none"),
            (BindingSource::File("/etc/heartguard/bindings.toml".into()), "file /etc/heartguard/bindings.toml"),
            (BindingSource::File("/srv/ward 3/bindings.toml".into()), "file /srv/ward 3/bindings.toml"),
            (BindingSource::Postgres("db.ward3,db2.ward3/heartguard".into()), "postgres db.ward3,db2.ward3/heartguard"),
            (BindingSource::Push { version: 30, key: "0123456789abcdef".into() }, "push v30 key 0123456789abcdef"),
        ];
        for (source, text) in sources {
            assert_eq!(source.to_string(), text);
            assert_eq!(text.parse::<BindingSource>(), Ok(source.clone()), "{text}");
            assert_eq!(source.kind(), text.split_whitespace().next().unwrap_or_default());
        }
    }

    #[test]
    fn only_a_push_has_a_snapshot_version() {
        assert_eq!(BindingSource::Push { version: 7, key: "ab".into() }.push_version(), 7);
        assert_eq!(BindingSource::Postgres("h/db".into()).push_version(), 0);
        assert_eq!(BindingSource::None.push_version(), 0);
    }

    #[test]
    fn texts_the_gateway_never_writes_are_refused() {
        for text in ["", "cache", "file", "push v key ab", "push vX key ab", "push v7", "None"] {
            assert_eq!(text.parse::<BindingSource>(), Err(UnknownSource(text.to_owned())), "{text}");
        }
    }
}
