//! systemd notifications (`Type=notify`): `READY=1` once the queue is open, bindings are
//! loaded and every stage runs; a `STATUS=` line kept current; `WATCHDOG=1` at half of
//! `WatchdogSec=`, sent **only** while every stage beats and the queue's store answers (a
//! blind timer would hide a deadlock); `STOPPING=1` when a graceful stop begins.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) every call here does nothing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often `STATUS=` is refreshed when there is no watchdog to pace it.
const STATUS_EVERY: Duration = Duration::from_secs(10);

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "Could not notify systemd.");
    }
}

/// `READY=1` with a first status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STOPPING=1`.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("Stopping: committing and delivering what is in hand.")]);
}

/// `RELOADING=1` (with the monotonic time systemd wants), then, after the reload, [`ready`].
pub fn reloading() {
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The half of `WatchdogSec=` at which the watchdog is fed, if systemd asked for one.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|t| (t / 2).max(Duration::from_millis(100)))
}

/// What the notifier asks the gateway on each tick (the telemetry service answers).
pub trait Probe: Send + Sync + 'static {
    /// What keeps the gateway from being healthy; empty when healthy.
    fn health_problems(&self) -> impl Future<Output = Vec<String>> + Send;
    /// One line for `STATUS=`.
    fn status_line(&self) -> impl Future<Output = String> + Send;
}

/// Feeds the watchdog while healthy and keeps `STATUS=` current, until `stop`.
pub async fn run(telemetry: Arc<impl Probe>, stop: CancellationToken) {
    let watchdog = watchdog_interval();
    if let Some(every) = watchdog {
        info!(every_ms = every.as_millis() as u64, "systemd watchdog enabled; fed while every stage is alive.");
    }
    let mut tick = tokio::time::interval(watchdog.unwrap_or(STATUS_EVERY).min(STATUS_EVERY));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut starving = false;
    let mut status_due = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let problems = telemetry.health_problems().await;
        if problems.is_empty() {
            // Fed first: the status line below may wait on the queue.
            if watchdog.is_some() {
                send(&[NotifyState::Watchdog]);
            }
            if starving {
                info!("Every stage is alive again; feeding the systemd watchdog.");
                starving = false;
                status_due = tokio::time::Instant::now();
            }
            if tokio::time::Instant::now() >= status_due {
                send(&[NotifyState::Status(&telemetry.status_line().await)]);
                status_due = tokio::time::Instant::now() + STATUS_EVERY;
            }
        } else {
            let status = format!("UNHEALTHY: {}", problems.join("; "));
            send(&[NotifyState::Status(&status)]);
            if !starving && watchdog.is_some() {
                tracing::error!(
                    problems = %problems.join("; "),
                    "Not feeding the systemd watchdog: a stage is stuck; systemd will restart the gateway."
                );
            }
            starving = true;
        }
    }
}
