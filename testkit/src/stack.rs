//! A test's own stack: a nats-server on a free port, the streams applied
//! through the production path, and projector instances in-process, each
//! on its own temporary store. Every crate's tests start from here.

use std::path::PathBuf;
use std::sync::Arc;

use async_nats::jetstream;
use im_projectors::{Projector, ProjectorConfig};
use im_streams::{Appender, StreamSettings, Topology};

use crate::NatsServer;

pub struct Stack {
    pub server: NatsServer,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub topology: Topology,
    /// The projectors' stores, removed when the stack is dropped.
    dirs: Vec<tempfile::TempDir>,
}

impl Stack {
    /// A server with the streams at their default settings.
    pub async fn start() -> Stack {
        Self::start_with(&StreamSettings::default()).await
    }

    /// A server whose streams have `settings` (a short duplicate window,
    /// fewer partitions).
    pub async fn start_with(settings: &StreamSettings) -> Stack {
        let server = NatsServer::start().await.expect("nats-server");
        let client = async_nats::connect(server.url()).await.expect("connect");
        let js = jetstream::new(client.clone());
        let topology = im_streams::apply_streams(&js, settings)
            .await
            .expect("apply streams")
            .topology;
        Stack {
            server,
            client,
            js,
            topology,
            dirs: Vec::new(),
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A projector's configuration on a new temporary store: instance
    /// `instance`, every partition, publishing deliveries.
    pub fn projector_config(&mut self, instance: &str) -> ProjectorConfig {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir: PathBuf = dir.path().to_path_buf();
        self.dirs.push(dir);
        ProjectorConfig {
            instance: instance.into(),
            partitions: None,
            data_dir,
            fanout_threshold: im_projectors::DEFAULT_FANOUT_THRESHOLD,
            fanout: true,
            store_faults: None,
        }
    }

    /// A projector in-process on the stack's connection.
    pub async fn projector(&mut self, config: ProjectorConfig) -> Projector {
        Projector::start(self.client.clone(), config)
            .await
            .expect("projector starts")
    }

    /// The usual projector: instance `main`, every partition.
    pub async fn main_projector(&mut self) -> Projector {
        let config = self.projector_config("main");
        self.projector(config).await
    }

    /// A writer with its own connection and cache, as a gateway holds.
    pub async fn appender(&self) -> Arc<Appender> {
        let client = async_nats::connect(self.url()).await.expect("connect");
        Appender::new(client, self.topology)
            .await
            .expect("appender")
    }
}
