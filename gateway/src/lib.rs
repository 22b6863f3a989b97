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
pub mod outbox;
pub mod query;
pub mod readiness;
pub mod state;
pub mod ws;

use std::sync::Arc;

use axum::routing::{get, post};
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

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/history", get(http::queries::history))
        .route(
            "/v1/conversations",
            get(http::queries::conversations).post(http::commands::create_group),
        )
        .route(
            "/v1/conversations/{id}/members",
            get(http::queries::members),
        )
        .route(
            "/v1/conversations/{id}/role/me",
            get(http::queries::my_role),
        )
        .route(
            "/v1/conversations/{id}/{verb}",
            post(http::commands::command),
        )
        .route(
            "/v1/conversations/{id}/{verb}/{target}",
            post(http::commands::command),
        )
        .route("/v1/media/upload", post(http::media::upload))
        .route("/v1/media/sts", post(http::media::sts))
        .route("/v1/media/{id}", get(http::media::download))
        .route("/v1/media/{id}/complete", post(http::media::complete))
        .route(
            "/v1/media/{id}/content",
            axum::routing::put(http::media::put_content),
        )
        .route("/healthz", get(http::status::healthz))
        .route("/readyz", get(http::status::readyz))
        .route("/metrics", get(http::status::metrics))
        .with_state(state)
}

/// Serves until the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
) -> Result<(), GatewayError> {
    use axum::serve::ListenerExt;
    // Nagle would hold a small frame (an ack) while an earlier one (a
    // delivery) waits for the client's delayed ACK: up to 40 ms per reply.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "tcp_nodelay not set");
        }
    });
    axum::serve(listener, router(state)).await?;
    Ok(())
}
