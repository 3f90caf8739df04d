//! The HTTP endpoint (`[http]`, loopback by default; it has no authentication):
//!
//! | path | answers |
//! |---|---|
//! | `/metrics` | Prometheus text format ([`super::metrics`]) |
//! | `/healthz` | 200 `ok` while every stage beats and the queue answers; else 503 with the problems |
//! | `/readyz` | 200 `ready` once the queue is open, bindings are loaded and every stage runs; else 503 |
//! | `/status` | the operator's summary as JSON ([`super::status::Status`]) |

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::metrics;
use super::service::Telemetry;

/// The running endpoint, if enabled.
pub struct Endpoint {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// `http.listen` could not be bound (a taken port, an address not on this machine).
#[derive(Debug, thiserror::Error)]
#[error("HTTP endpoint on {listen} (http.listen): {source}")]
pub struct BindError {
    pub listen: String,
    pub source: std::io::Error,
}

/// Binds `http.listen` (a taken port stops the start with a message naming the key) and
/// serves on a task of its own.
pub async fn start(cfg: &crate::telemetry::config::Http, telemetry: Arc<Telemetry>) -> Result<Endpoint, BindError> {
    let stop = CancellationToken::new();
    if !cfg.enabled {
        return Ok(Endpoint { stop, task: None });
    }
    let listener =
        TcpListener::bind(&cfg.listen).await.map_err(|source| BindError { listen: cfg.listen.clone(), source })?;
    let task = tokio::spawn(serve(listener, telemetry, stop.clone()));
    Ok(Endpoint { stop, task: Some(task) })
}

impl Endpoint {
    /// Stops serving; requests in progress are answered first.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Some(t) = self.task {
            let _ = t.await;
        }
    }
}

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, telemetry: Arc<Telemetry>, shutdown: CancellationToken) {
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(addr = %addr, "HTTP endpoint listening (/metrics, /healthz, /readyz, /status).");
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(telemetry);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        tracing::error!(error = %e, "HTTP endpoint failed; metrics and health checks are unavailable.");
    }
}

/// The address an operator command should use to reach an endpoint configured as `listen`.
pub fn client_addr(listen: &str) -> Option<SocketAddr> {
    let mut a: SocketAddr = listen.parse().ok()?;
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    Some(a)
}

async fn scrape(State(t): State<Arc<Telemetry>>) -> Response {
    let gauges = t.gauges().await;
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics::render(&t.counters, gauges)).into_response()
}

fn verdict(problems: Vec<String>, good: &'static str) -> Response {
    if problems.is_empty() {
        (StatusCode::OK, format!("{good}\n")).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", problems.join("\n"))).into_response()
    }
}

async fn healthz(State(t): State<Arc<Telemetry>>) -> Response {
    verdict(t.health_problems().await, "ok")
}

async fn readyz(State(t): State<Arc<Telemetry>>) -> Response {
    verdict(t.readiness_problems().await, "ready")
}

async fn status(State(t): State<Arc<Telemetry>>) -> Response {
    match serde_json::to_string_pretty(&t.status().await) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
