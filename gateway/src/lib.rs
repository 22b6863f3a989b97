//! The gateway: axum HTTP API and the WebSocket endpoint. Authenticates
//! clients, validates commands, appends through `im_streams::Appender`, and
//! hands deliveries from per-user subjects to connected devices. It holds no
//! state a restart would lose, and never opens sled.

pub mod auth;
pub mod cmd;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod frames;
pub mod http;
pub mod media;
pub mod metrics;
pub mod outbox;
pub mod presence;
pub mod query;
pub mod rate;
pub mod readiness;
pub mod search;
pub mod state;
pub mod ws;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;

pub use config::{GatewayConfig, Limits};
pub use state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Streams(#[from] im_streams::StreamsError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("deliveries: {0}")]
    Dispatch(#[from] dispatch::StartError),
    #[error("media storage: {0}")]
    MediaStore(#[from] media::store::StoreError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl GatewayError {
    /// JetStream not answering yet (a leader election, a node restarting):
    /// worth another try while the gateway starts.
    pub fn is_transient(&self) -> bool {
        matches!(self, GatewayError::Streams(e) if im_streams::connect::is_unavailable(e))
    }
}

pub use http::routes::router;

/// How long a shutdown waits for HTTP requests in flight and WebSocket
/// connections to finish their command and close: longer than a command's
/// bound (`Limits::command_timeout_ms`, 10 s by default), short enough for
/// an orchestrator's grace period (30 s by default in Kubernetes).
pub const SHUTDOWN_DRAIN_MAX: std::time::Duration = std::time::Duration::from_secs(15);

/// `/metrics` on a listener of its own (`IM_GATEWAY_METRICS_LISTEN`), never
/// the public one: what the gateway counts is for operators.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
) -> Result<(), GatewayError> {
    let app = Router::new()
        .route("/metrics", get(http::status::metrics))
        .with_state(state);
    axum::serve(listener, app).await?;
    Ok(())
}

/// Serves until the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
) -> Result<(), GatewayError> {
    serve_until(listener, state, std::future::pending()).await
}

/// Serves until `stop` completes, then shuts down gracefully: accepts no
/// more connections, answers `/readyz` 503, lets each WebSocket finish its
/// running command and closes it with 1001, drains HTTP requests in
/// flight; all within `SHUTDOWN_DRAIN_MAX`.
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let signalled = state.clone();
    let stop = async move {
        stop.await;
        tracing::info!("shutting down: closing connections");
        signalled.shutdown.send_replace(true);
    };
    let drained = state.clone();
    let drain = async move {
        let http = serve_inner(listener, drained.clone(), stop);
        http.await?;
        // Upgraded connections are not the server's to wait for.
        while drained
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok::<_, GatewayError>(())
    };
    let mut shutdown = state.shutdown.subscribe();
    tokio::select! {
        r = drain => r,
        _ = async {
            let _ = shutdown.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_DRAIN_MAX).await;
        } => {
            tracing::warn!(bound_s = SHUTDOWN_DRAIN_MAX.as_secs(), "shutdown: connections still open past the bound");
            Ok(())
        }
    }
}

async fn serve_inner(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    use axum::serve::ListenerExt;
    // Nagle would hold a small frame (an ack) while an earlier one (a
    // delivery) waits for the client's delayed ACK: up to 40 ms per reply.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "tcp_nodelay not set");
        }
    });
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await?;
    Ok(())
}
