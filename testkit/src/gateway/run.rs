//! Starting the gateway as most end-to-end tests need it, and waiting for what it does.

use std::path::Path;

use crate::gateway::config::DB;
use crate::gateway::daemon::Gateway;
use crate::influx::Influx1;
use crate::wait::{WAIT, eventually};

/// Starts the gateway `binary` and waits until its subscription is in place (from then on
/// the broker holds messages for its persistent session).
pub async fn start_gateway(binary: &Path, dir: &Path, toml: &str) -> Gateway {
    let mut gw = Gateway::start(binary, dir, toml);
    wait_for_log(&gw, "Subscribed.").await;
    assert!(gw.is_running(), "gateway exited:\n{}", gw.log());
    gw
}

/// Waits until the gateway's log contains `text`.
pub async fn wait_for_log(gw: &Gateway, text: &str) {
    eventually(WAIT, &format!("gateway log contains {text:?}"), || {
        let found = gw.log().contains(text);
        async move { found }
    })
    .await;
}

/// Waits until `measurement` in [`DB`] holds exactly `n` points.
pub async fn wait_count(influx: &Influx1, measurement: &str, n: u64) {
    eventually(WAIT, &format!("{n} points in {measurement}"), || async { influx.count(DB, measurement).await == n })
        .await;
}
