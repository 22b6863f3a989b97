//! What every request and connection shares. Built once at start; the
//! handlers (`http/`, `ws/`, `cmd/`) read it, it imports none of them.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use crate::{auth, dispatch, media, readiness, GatewayConfig, GatewayError};

pub struct AppState {
    pub config: GatewayConfig,
    pub client: async_nats::Client,
    pub appender: Arc<im_streams::Appender>,
    pub verifier: auth::Verifier,
    pub dispatcher: Arc<dispatch::Dispatcher>,
    pub connections: Arc<AtomicUsize>,
    pub media: Option<Arc<media::Media>>,
    pub readiness: Arc<readiness::Readiness>,
    /// True once the gateway is shutting down: connections finish their
    /// command and close with 1001, `/readyz` answers 503.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// Each user's sends across devices (`Limits::user_sends_per_sec`).
    pub user_rates: crate::rate::UserRates,
    /// WebSocket connections per client address.
    pub addresses: crate::rate::AddressCounts,
    /// Who is online (`presence/`).
    pub presence: crate::presence::Presence,
    pub metrics: crate::metrics::Metrics,
}

impl AppState {
    pub async fn new(
        config: GatewayConfig,
        client: async_nats::Client,
    ) -> Result<Arc<Self>, GatewayError> {
        config.validate().map_err(GatewayError::Config)?;
        let js = async_nats::jetstream::new(client.clone());
        let topology = im_streams::definitions::read_topology(&js).await?;
        let signer = match &config.signing_key_file {
            Some(path) => Some(Arc::new(im_streams::signing::EventSigner::load_or_create(
                path,
            )?)),
            None => None,
        };
        let content = im_streams::content::open_keys(&js, &config.kek).await?;
        let options = im_streams::AppenderOptions {
            signer,
            content,
            ..Default::default()
        };
        let appender =
            im_streams::Appender::with_options(client.clone(), topology, options).await?;
        let verifier = auth::Verifier::new(&config.tokens)?;
        let media = match &config.media {
            Some(backend) => Some(Arc::new(media::Media::open(backend, &client).await?)),
            None => None,
        };
        let queries = dispatch::GroupQueries::new(client.clone(), topology);
        let dispatcher =
            dispatch::Dispatcher::start(&config.nats_url, &config.nats_auth, Some(queries))?;
        let readiness = Arc::new(readiness::Readiness::default());
        tokio::spawn(readiness::listen(client.clone(), readiness.clone()));
        let user_rates = crate::rate::UserRates::new(
            config.limits.user_sends_per_sec,
            config.limits.user_send_burst,
        );
        let presence = crate::presence::Presence::open(&client).await?;
        let connections = Arc::new(AtomicUsize::new(0));
        let metrics = crate::metrics::Metrics::new(appender.clone(), connections.clone());
        let state = Arc::new(AppState {
            readiness,
            media,
            dispatcher,
            config,
            client,
            appender: appender.clone(),
            verifier,
            metrics,
            connections,
            shutdown: tokio::sync::watch::Sender::new(false),
            user_rates,
            addresses: Default::default(),
            presence,
        });
        tokio::spawn(crate::presence::maintain(Arc::downgrade(&state)));
        Ok(state)
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}
