//! The gateway under test: its configuration, its process and logs, starting it and waiting
//! for what it does, and its operator commands.
//!
//! Only the gateway package's own test targets know where Cargo put its binary
//! (`CARGO_BIN_EXE_heartguard-gateway` is set for them alone), so everything here that runs
//! the gateway takes the binary as its first argument.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod run;
