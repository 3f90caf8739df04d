//! Heartbeats: every long-running stage (intake, the MQTT loop, the sink manager and each
//! destination's worker) beats at least every [`BEAT_EVERY`], idle or not. A stage whose task
//! ended, panicked, or is stuck in a blocking call stops beating; `/healthz` and the systemd
//! watchdog then report it, and systemd restarts the gateway (crash-only design: nothing is
//! lost by a restart).
//!
//! A beat proves the stage's loop comes round, not that data flows: an idle gateway is
//! healthy. Waits that are long by design (a write request bounded by its timeout, a full
//! queue, a reconnect back-off) go through [`Heartbeat::while_waiting`], which keeps beating.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::lock::lock;

/// How often an idle stage beats.
pub const BEAT_EVERY: Duration = Duration::from_secs(2);

/// A stage that has not beaten for this long is reported as stuck.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// Stage names (the `stage` label of `heartguard_health_heartbeat_age_seconds`).
pub const STAGE_INTAKE: &str = "intake";
pub const STAGE_MQTT: &str = "mqtt";
pub const STAGE_SINKS: &str = "sinks";

/// The heartbeats of every stage that is running.
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    stages: Mutex<BTreeMap<String, Arc<Heartbeat>>>,
}

impl Default for Health {
    fn default() -> Self {
        Self { epoch: Instant::now(), stages: Mutex::default() }
    }
}

/// One stage's heartbeat: the time of its last beat.
#[derive(Debug)]
pub struct Heartbeat {
    epoch: Instant,
    /// Milliseconds after `epoch`.
    last_ms: AtomicU64,
}

impl Heartbeat {
    pub fn beat(&self) {
        self.last_ms.store(self.epoch.elapsed().as_millis() as u64, Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Relaxed)))
    }

    /// Awaits `fut`, beating every [`BEAT_EVERY`] meanwhile: for waits that are long by design
    /// and bounded elsewhere (a request timeout, a retry loop that sleeps).
    pub async fn while_waiting<F: Future>(&self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        let mut tick = tokio::time::interval(BEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                out = &mut fut => {
                    self.beat();
                    return out;
                }
                _ = tick.tick() => self.beat(),
            }
        }
    }
}

impl Health {
    /// Registers a stage (or takes over the heartbeat of one that restarted) and beats once.
    pub fn register(&self, stage: impl Into<String>) -> Arc<Heartbeat> {
        let hb = lock(&self.stages)
            .entry(stage.into())
            .or_insert_with(|| Arc::new(Heartbeat { epoch: self.epoch, last_ms: AtomicU64::new(0) }))
            .clone();
        hb.beat();
        hb
    }

    /// Removes a stage that ended on purpose (shutdown). A stage that ends any other way stays
    /// registered, stops beating and is reported.
    pub fn deregister(&self, stage: &str) {
        lock(&self.stages).remove(stage);
    }

    /// Every registered stage with the time since its last beat.
    pub fn ages(&self) -> Vec<(String, Duration)> {
        lock(&self.stages).iter().map(|(k, hb)| (k.clone(), hb.age())).collect()
    }

    /// Stages that have not beaten for `STALE_AFTER`.
    pub fn stale(&self) -> Vec<(String, Duration)> {
        self.ages().into_iter().filter(|(_, age)| *age > STALE_AFTER).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stage_that_stops_beating_is_reported_and_a_waiting_one_is_not() {
        let h = Health::default();
        let idle = h.register("idle");
        let waiting = h.register("waiting");
        let gone = h.register("gone");
        let wait = tokio::spawn({
            let waiting = waiting.clone();
            async move { waiting.while_waiting(tokio::time::sleep(Duration::from_secs(30))).await }
        });
        for _ in 0..10 {
            tokio::time::sleep(BEAT_EVERY).await;
            idle.beat();
        }
        drop(gone);
        let stale: Vec<String> = h.stale().into_iter().map(|(s, _)| s).collect();
        assert_eq!(stale, ["gone"]);
        assert!(waiting.age() <= BEAT_EVERY, "{:?}", waiting.age());
        h.deregister("gone");
        assert!(h.stale().is_empty());
        wait.await.expect("join");
    }
}
