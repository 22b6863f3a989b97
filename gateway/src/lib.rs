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
pub mod http_commands;
pub mod media;
pub mod outbox;
pub mod query;
pub mod readiness;
pub mod ws;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

pub use config::{GatewayConfig, Limits};

pub struct AppState {
    pub config: GatewayConfig,
    pub client: async_nats::Client,
    pub appender: Arc<im_streams::Appender>,
    pub verifier: auth::Verifier,
    pub dispatcher: Arc<dispatch::Dispatcher>,
    pub connections: AtomicUsize,
    pub media: Option<Arc<media::Media>>,
    pub readiness: Arc<readiness::Readiness>,
}

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

impl AppState {
    pub async fn new(
        config: GatewayConfig,
        client: async_nats::Client,
    ) -> Result<Arc<Self>, GatewayError> {
        config.validate().map_err(GatewayError::Config)?;
        let js = async_nats::jetstream::new(client.clone());
        let topology = im_streams::definitions::read_topology(&js).await?;
        let appender = im_streams::Appender::new(client.clone(), topology).await?;
        let verifier = auth::Verifier::new(
            config.hs256_secret.as_deref(),
            config.rs256_public_pem.as_deref(),
        )?;
        let media = match &config.media {
            Some(backend) => Some(Arc::new(media::Media::open(backend, &client).await?)),
            None => None,
        };
        let dispatcher = dispatch::Dispatcher::start(&config.nats_url)?;
        let readiness = Arc::new(readiness::Readiness::default());
        tokio::spawn(readiness::listen(client.clone(), readiness.clone()));
        Ok(Arc::new(AppState {
            readiness,
            media,
            dispatcher,
            config,
            client,
            appender,
            verifier,
            connections: AtomicUsize::new(0),
        }))
    }
}

async fn healthz() -> &'static str {
    "ok"
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/history", get(http::history))
        .route(
            "/v1/conversations",
            get(http::conversations).post(http_commands::create_group),
        )
        .route("/v1/conversations/{id}/members", get(http::members))
        .route("/v1/conversations/{id}/role/me", get(http::my_role))
        .route(
            "/v1/conversations/{id}/{verb}",
            post(http_commands::command),
        )
        .route(
            "/v1/conversations/{id}/{verb}/{target}",
            post(http_commands::command),
        )
        .route("/v1/media/upload", post(media::http::upload))
        .route("/v1/media/sts", post(media::http::sts))
        .route("/v1/media/{id}", get(media::http::download))
        .route("/v1/media/{id}/complete", post(media::http::complete))
        .route(
            "/v1/media/{id}/content",
            axum::routing::put(media::http::put_content),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(http::readyz))
        .route("/metrics", get(http::metrics))
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
