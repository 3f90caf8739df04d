//! What the integration tests share: the toolkit (`testkit/`, crate `heartguard_testkit`:
//! test servers, proxies, the gateway process, waiting helpers), and the one thing only this
//! package's own test targets know, where Cargo put the gateway binary.
//!
//! Included as `mod common;` by the test files that run the gateway; the files that never run
//! it use `heartguard_testkit` directly (`gateway_bin` would be dead code in them).

use std::path::Path;

pub use heartguard_testkit::*;

/// The `heartguard-gateway` binary Cargo built for these tests: the toolkit's functions that
/// run the gateway take it as their first argument.
pub fn gateway_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_heartguard-gateway"))
}
