//! Secret files: passwords, tokens, connection strings and private keys live in files the
//! service user alone may read, never in the configuration or on the command line.

use std::path::Path;

/// Why a secret file cannot be used. The message names the file, never its content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("{path}: {error}")]
    Unreadable { path: String, error: String },
    #[error(
        "{path}: readable by group or others (mode {mode:o}); make it readable by the service user only (chmod 600)"
    )]
    TooOpen { path: String, mode: u32 },
    #[error("{path}: empty")]
    Empty { path: String },
}

impl From<SecretError> for String {
    fn from(e: SecretError) -> Self {
        e.to_string()
    }
}

/// Refuses a secret file (password, token, connection string, private key) with any
/// permission bit for its group or other users: a secret others can read is a leak waiting to
/// happen. Give it mode 0600, owned by the service user.
pub fn secret_file_mode(path: &Path) -> Result<(), SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let unreadable =
        |e: std::io::Error| SecretError::Unreadable { path: path.display().to_string(), error: e.to_string() };
    let mode = std::fs::metadata(path).map_err(unreadable)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(SecretError::TooOpen { path: path.display().to_string(), mode: mode & 0o777 });
    }
    Ok(())
}

/// Reads a secret file, trimming one trailing newline. Refuses an empty secret.
pub fn read_secret(path: &Path) -> Result<String, SecretError> {
    secret_file_mode(path)?;
    let s = std::fs::read_to_string(path)
        .map_err(|e| SecretError::Unreadable { path: path.display().to_string(), error: e.to_string() })?;
    let s = s.strip_suffix('\n').map(|s| s.strip_suffix('\r').unwrap_or(s)).unwrap_or(&s).to_owned();
    if s.is_empty() {
        return Err(SecretError::Empty { path: path.display().to_string() });
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_readable_by_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("token");
        std::fs::write(&f, "s3cr3t\n").expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(read_secret(&f).expect_err("0644").to_string().contains("chmod 600"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_secret(&f), Ok("s3cr3t".into()));
    }
}
