//! `heartguard-gateway`: the daemon and the operator's tools in one binary. The commands are
//! in `heartguard_gateway::cli`; here they are parsed, dispatched and turned into an exit code.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use heartguard_gateway::cli::{self, Cli};

/// Exit codes (sysexits.h): usage and configuration errors are told apart from failures.
const EX_USAGE: u8 = 64;
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    // Before anything can build a TLS configuration or an HTTP client.
    heartguard_gateway::tls::install_provider();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(EX_USAGE),
            };
        }
    };
    match cli::dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            e.report();
            if e.is_configuration() { ExitCode::from(EX_CONFIG) } else { ExitCode::FAILURE }
        }
    }
}
