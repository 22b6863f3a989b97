//! Starts the notifier's parts: its projector (supervised, as the
//! projector process runs one), the sender with what the outbox holds,
//! the decider, the control subject.

use std::sync::Arc;

use im_projectors::query::QueryContext;
use im_projectors::{Clients, ProjectorConfig, Serves};
use im_streams::append::{Appender, AppenderOptions};
use tokio::sync::{mpsc, watch};

use crate::decide::Decider;
use crate::presence::Presence;
use crate::send::Sender;
use crate::stats::Stats;
use crate::window::Windows;
use crate::{queue, NotifierConfig};

/// Control commands waiting for the decider.
pub const CONTROL_QUEUE_MAX: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("streams: {0}")]
    Streams(#[from] im_streams::StreamsError),
    #[error("the store: {0}")]
    Store(#[from] im_projectors::store::StoreError),
    #[error("the HTTP client: {0}")]
    Http(#[source] reqwest::Error),
    #[error("the projector stopped before it started")]
    NotStarted,
}

pub struct Notifier {
    pub stats: Arc<Stats>,
    pub contexts: watch::Receiver<Option<Arc<QueryContext>>>,
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

/// The writer that ends refused registrations, signing with the
/// notifier's key when it has one.
async fn writer(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    cfg: &NotifierConfig,
) -> Result<Arc<Appender>, NotifierError> {
    let topology = im_streams::definitions::read_topology(js).await?;
    let signer = match &cfg.signing_key_file {
        Some(path) => Some(Arc::new(im_streams::signing::EventSigner::load_or_create(
            path,
        )?)),
        None => None,
    };
    let options = AppenderOptions {
        signer,
        ..Default::default()
    };
    Ok(Appender::with_options(client.clone(), topology, options).await?)
}

fn http_client(cfg: &NotifierConfig) -> Result<reqwest::Client, NotifierError> {
    let mut b = reqwest::Client::builder()
        .timeout(cfg.request_timeout)
        .connect_timeout(cfg.request_timeout)
        // A push gateway answers; it does not send us elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("im-notifier/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path).map_err(|source| crate::config::ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(NotifierError::Http)? {
            b = b.add_root_certificate(cert);
        }
    }
    b.build().map_err(NotifierError::Http)
}

impl Notifier {
    pub async fn start(
        client: async_nats::Client,
        cfg: NotifierConfig,
    ) -> Result<Self, NotifierError> {
        cfg.validate()?;
        let cfg = Arc::new(cfg);
        let http = http_client(&cfg)?;
        let js = async_nats::jetstream::new(client.clone());
        // Where content is encrypted it must be given the KEK (it refuses
        // to start otherwise): a notification's text and name are opened.
        im_streams::content::open_keys(&js, &cfg.kek).await?;
        let appender = writer(&client, &js, &cfg).await?;
        let (stop, stopping) = watch::channel(false);
        let (current, contexts) = watch::channel(None);
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(run_projector(
            client.clone(),
            &cfg,
            current,
            stopping.clone(),
        ));
        // Started once it has a store (a start that cannot open one ends
        // here, as the projector process's does).
        contexts
            .clone()
            .wait_for(Option::is_some)
            .await
            .map_err(|_| NotifierError::NotStarted)?;
        // The decider counts the outbox and publishes its seq once it has
        // read the store (`Decider::reopened`); the sender waits for it.
        let stats = Arc::new(Stats::default());
        let (committed, committed_rx) = watch::channel(0);
        let sender = Sender::new(cfg.clone(), http, Some(appender), stats.clone());
        tasks.spawn(sender.run(committed_rx, contexts.clone(), stopping.clone()));
        let decider = Decider {
            cfg: cfg.clone(),
            presence: Presence::open(&js, cfg.late_max + cfg.debounce).await?,
            stats: stats.clone(),
            committed,
            js: js.clone(),
            next_seq: 1,
            windows: Windows::default(),
            observed: Default::default(),
            folded_until_ms: 0,
            store: None,
        };
        let (to_decider, control) = mpsc::channel(CONTROL_QUEUE_MAX);
        tasks.spawn(decider.run(contexts.clone(), control, stopping));
        let instance = cfg.instance.clone();
        tasks.spawn(async move {
            if let Err(e) = crate::control::serve(client, instance, to_decider).await {
                tracing::warn!(error = %e, "the control subject could not be served");
            }
        });
        Ok(Notifier {
            stats,
            contexts,
            stop,
            tasks,
        })
    }

    /// Stops every part; what is decided and not sent stays in the outbox.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        let bound = im_projectors::projector::STOP_MAX + std::time::Duration::from_secs(5);
        let _ = tokio::time::timeout(bound, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
    }

    /// Ends when a part ends (none should before a stop).
    pub async fn wait(&mut self) {
        self.tasks.join_next().await;
    }
}

/// The notifier's own projector: every partition, the three projections
/// it reads, no fan-out, no client queries; supervised (a storage error
/// restarts it, as in the projector process).
fn run_projector(
    client: async_nats::Client,
    cfg: &NotifierConfig,
    current: watch::Sender<Option<Arc<QueryContext>>>,
    stopping: watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + 'static {
    let config = ProjectorConfig {
        kek: cfg.kek.clone(),
        instance: cfg.instance.clone(),
        partitions: None,
        data_dir: cfg.data_dir.join("store"),
        fanout_threshold: im_projectors::DEFAULT_FANOUT_THRESHOLD,
        fanout: false,
        store_faults: None,
        store_engine: Default::default(),
        serves: Serves::OwnerOnly,
        lease: None,
        projections: Some(vec![
            Arc::new(im_projectors::projections::members::Members),
            Arc::new(im_projectors::projections::unread::Unread),
            Arc::new(queue::Notify {
                late_max_ms: cfg.late_max.as_millis() as i64,
            }),
        ]),
    };
    let clients = Clients {
        consume: client.clone(),
        publish: client,
    };
    async move {
        if let Err(e) = im_projectors::supervisor::run(clients, config, current, stopping).await {
            tracing::error!(error = %e, "the notifier's projector stopped");
        }
    }
}
