//! The commands that run until a signal: `run` (the daemon), `demo` and `simulate`. Each
//! builds its own tokio runtime; SIGTERM (systemd) or SIGINT (a terminal) stops it.

use std::path::Path;

use tracing::{error, info};

use super::Error;
use crate::app::{self, StartError};
use crate::telemetry::logging::{self, LogFormat};

/// Why the daemon did not run to a graceful stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Start(#[from] StartError),
}

impl DaemonError {
    /// The daemon refused its configuration (exit code 78).
    pub fn is_configuration(&self) -> bool {
        matches!(self, Self::Start(StartError::Config(_)))
    }
}

/// `run`: the daemon, logging as `[log]` (or `--log-format`) says, until a signal.
pub fn run(config: Option<&Path>, log_format: Option<LogFormat>) -> Result<(), Error> {
    let cfg = super::load(config)?;
    logging::init(&cfg.log.level, log_format.unwrap_or(cfg.log.format));
    if config.is_none() {
        info!("No --config given: running on the embedded defaults (see `heartguard-gateway default-config`).");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "Cannot start the async runtime.");
            return Err(DaemonError::Runtime(e).into());
        }
    };
    // Logged here, before the runtime is dropped (which waits for blocking tasks), so the
    // cause is in the log even if one of them hangs.
    rt.block_on(app::run(cfg, shutdown_signal())).map_err(|e| {
        match &e {
            StartError::Config(why) => error!(error = %why, "Configuration refused."),
            StartError::Runtime(why) => error!(error = %why, "Gateway failed."),
            StartError::TaskEnded { .. } => error!(error = %e, "Gateway failed."),
        }
        DaemonError::Start(e).into()
    })
}

/// `demo`: the daemon on its embedded defaults with simulated devices.
pub fn demo(args: crate::demo::DemoArgs) -> Result<(), Error> {
    crate::telemetry::init_logging();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(Error::NoRuntime)?;
    Ok(rt.block_on(crate::demo::run(args, shutdown_signal()))?)
}

/// `simulate`: one simulated device, until its count is sent or a signal.
pub fn simulate(args: crate::simulate::SimArgs) -> Result<(), Error> {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(Error::NoRuntime)?;
    let stop = tokio_util::sync::CancellationToken::new();
    let on_signal = stop.clone();
    Ok(rt.block_on(async move {
        tokio::spawn(async move {
            shutdown_signal().await;
            on_signal.cancel();
        });
        crate::simulate::run_cli(args, stop).await
    })?)
}

/// SIGTERM (systemd) or SIGINT (a terminal), whichever comes first.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        error!("Cannot install signal handlers; stop with SIGKILL (nothing is lost).");
        return std::future::pending().await;
    };
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(signal = which, "Shutdown requested.");
}
