//! The gateway's operator commands (`queue stats`, `dead-letters …`, `status`, …).

use std::path::Path;

/// Runs an operator command of the gateway `binary`; returns (exit code, stdout, stderr).
pub fn gateway_cli(binary: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(binary).args(args).output().expect("run the gateway binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
