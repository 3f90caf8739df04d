//! Where the gateway's repository is: fixtures, example configuration and SQL files live there.

use std::path::Path;

/// The repository root (the toolkit lives in its `testkit/` directory), spelled exactly as
/// the gateway package's own `CARGO_MANIFEST_DIR`.
pub(crate) fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit/ lies inside the repository")
}
