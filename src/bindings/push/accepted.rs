//! The highest snapshot this gateway accepted, kept in a file of its own in the data
//! directory: it outlives the binding cache, so a lost database does not let an older
//! snapshot back in.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The highest snapshot accepted, in the data directory.
pub const ACCEPTED_FILE: &str = "push-accepted.json";

/// The highest snapshot this gateway accepted, as kept in [`ACCEPTED_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accepted {
    pub version: u64,
    pub created_at: String,
    /// SHA-256 (hex) of the snapshot text.
    pub sha256: String,
}

/// Why [`ACCEPTED_FILE`] could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AcceptedError {
    #[error("{}: {error}", path.display())]
    Unreadable { path: PathBuf, error: std::io::Error },
    #[error("{}: {error}", path.display())]
    Invalid { path: PathBuf, error: serde_json::Error },
}

/// Reads [`ACCEPTED_FILE`] from `dir`; `None` if there is none.
pub fn load_accepted(dir: &Path) -> Result<Option<Accepted>, AcceptedError> {
    let path = dir.join(ACCEPTED_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|error| AcceptedError::Invalid { path, error }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(AcceptedError::Unreadable { path, error }),
    }
}

/// Replaces [`ACCEPTED_FILE`] in `dir` so that a crash or power loss leaves the old content
/// or the new, never a mix: write a temporary file, fsync it, rename it over the old one,
/// fsync the directory (which makes the rename durable).
pub fn store_accepted(dir: &Path, a: &Accepted) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(ACCEPTED_FILE);
    let tmp = dir.join(format!("{ACCEPTED_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(a)?)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accepted_version_survives_in_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load_accepted(dir.path()).expect("no file yet"), None);
        let a = Accepted { version: 7, created_at: "2026-11-28T00:00:00Z".into(), sha256: "ab".repeat(32) };
        store_accepted(dir.path(), &a).expect("store");
        let b = Accepted { version: 8, ..a };
        store_accepted(dir.path(), &b).expect("store");
        assert_eq!(load_accepted(dir.path()).expect("read"), Some(b));
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).expect("dir").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, [ACCEPTED_FILE], "no temporary file left behind");
        std::fs::write(dir.path().join(ACCEPTED_FILE), "{").expect("write");
        assert!(load_accepted(dir.path()).is_err());
    }
}
