//! `check-config` and `default-config`: the configuration file, before anything starts.

use std::path::Path;

use super::Error;
use crate::config::Config;

/// `check-config`: the configuration and its bindings file, every problem of either listed.
pub fn check(path: &Path) -> Result<(), Error> {
    let cfg = super::load(Some(path))?;
    if let Some(f) = &cfg.bindings.file {
        match crate::bindings::file::load(f) {
            Ok(b) => println!("{}: {} binding(s) valid.", f.display(), b.len()),
            Err(problems) => return Err(Error::Invalid { path: f.clone(), problems }),
        }
    }
    println!("{}: configuration valid.", path.display());
    Ok(())
}

/// `default-config`: the embedded defaults, a valid starting point.
pub fn print_default() {
    print!("{}", toml::to_string_pretty(&Config::default()).unwrap_or_default());
}
