//! The push task: applies the snapshots the slot hands it, if [`check`] lets them, and
//! remembers the highest one accepted.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{error, info};

use super::accepted::{ACCEPTED_FILE, Accepted, load_accepted, store_accepted};
use super::check::{Before, check};
use super::envelope::Authenticated;
use super::inbox::{AckOnDrop, REFUSAL_LOG_EVERY, Slot, refuse};
use crate::bindings::source::BindingSource;
use crate::bindings::view::ViewTx;
use crate::telemetry::Counters;
use crate::telemetry::logging::RateLimited;

pub struct Applier {
    pub gateway_id: String,
    pub max_age: Duration,
    /// Where [`ACCEPTED_FILE`] lives.
    pub data_dir: PathBuf,
    pub queue: crate::queue::handle::QueueHandle,
    pub view: ViewTx,
    pub counters: Arc<Counters>,
}

impl Applier {
    pub async fn run(self, slot: Arc<Slot>) {
        let log = Mutex::new(RateLimited::new(REFUSAL_LOG_EVERY));
        let mut remembered = match load_accepted(&self.data_dir) {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "Cannot read the highest snapshot version accepted before; until a snapshot is accepted, only the binding cache and the age limit guard against older ones.");
                None
            }
        };
        loop {
            let msg = slot.take().await;
            let _ack = AckOnDrop(msg.ack);
            if let Some(accepted) = self.take_in(msg.auth, remembered.clone(), &log).await {
                remembered = Some(accepted);
            }
        }
    }

    /// Checks and applies one snapshot; what is now the highest accepted, if it was applied.
    async fn take_in(
        &self,
        a: Authenticated,
        remembered: Option<Accepted>,
        log: &Mutex<RateLimited>,
    ) -> Option<Accepted> {
        let before = Before { in_force: self.view.borrow().table.source.push_version(), remembered };
        if let Err(why) = check(&a, &self.gateway_id, &before, crate::now_ns(), self.max_age) {
            refuse(&why, &self.counters, log);
            return None;
        }
        let version = a.snapshot.version;
        let source = BindingSource::Push { version, key: a.key.get(..16).unwrap_or(&a.key).to_owned() };
        if let Err(e) = crate::bindings::apply_if(a.snapshot.bindings, source, &self.queue, &self.view, true).await {
            error!(error = %e, "Could not apply a signed binding snapshot; keeping the bindings in force.");
            return None;
        }
        info!(version, "Signed binding snapshot accepted.");
        let accepted = Accepted { version, created_at: a.snapshot.created_at, sha256: a.sha256 };
        let (dir, copy) = (self.data_dir.clone(), accepted.clone());
        let stored = tokio::task::spawn_blocking(move || store_accepted(&dir, &copy))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = stored {
            error!(error = %e, file = %self.data_dir.join(ACCEPTED_FILE).display(), "Cannot record the accepted snapshot version; should the binding cache be lost, only the age limit guards against older snapshots.");
        }
        Some(accepted)
    }
}
