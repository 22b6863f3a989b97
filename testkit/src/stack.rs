//! A test's own stack: a nats-server on a free port, the streams applied
//! through the production path, and projector instances in-process, each
//! on its own temporary store. Every crate's tests start from here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_nats::jetstream;
use im_projectors::{Projector, ProjectorConfig};
use im_streams::connect::{NatsArgs, NatsAuth};
use im_streams::identities::{authorization_block, Component, Secret};
use im_streams::{Appender, StreamSettings, Topology};

use crate::{NatsServer, ServerAuth};

pub struct Stack {
    pub server: NatsServer,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub topology: Topology,
    /// The projectors' stores, removed when the stack is dropped.
    dirs: Vec<tempfile::TempDir>,
    /// Each component's password, when the server runs with authorization.
    passwords: Option<BTreeMap<Component, String>>,
    /// The KEK projectors (and gateways) are given; none: content clear.
    pub kek: im_streams::content::KekArgs,
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
            passwords: None,
            kek: Default::default(),
        }
    }

    /// A server with authorization on: every component its own user with
    /// its own permissions (`im_streams::identities`). `client` is the
    /// operator's, which applied the streams; projectors and writers
    /// started here connect as theirs.
    pub async fn start_secured() -> Stack {
        let passwords: BTreeMap<Component, String> = Component::ALL
            .into_iter()
            .map(|c| (c, format!("{}-{}", c.user(), crate::free_port())))
            .collect();
        let users: Vec<(Component, Secret)> = passwords
            .iter()
            .map(|(c, p)| (*c, Secret::Inline(p.clone())))
            .collect();
        let auth = ServerAuth {
            authorization: authorization_block(&users),
            user: Component::Operator.user().into(),
            password: passwords[&Component::Operator].clone(),
            ca: None,
        };
        let server = NatsServer::start_secured(auth).await.expect("nats-server");
        let mut stack = Stack {
            client: server.connect().await,
            js: jetstream::new(server.connect().await),
            server,
            topology: Topology::new(1),
            dirs: Vec::new(),
            passwords: Some(passwords),
            kek: Default::default(),
        };
        stack.topology = im_streams::apply_streams(&stack.js, &StreamSettings::default())
            .await
            .expect("apply streams")
            .topology;
        stack
    }

    /// How `component` connects: its own identity on a secured stack,
    /// anonymously otherwise.
    /// The projectors' stores (their temporary directories).
    pub fn store_dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.path().to_path_buf()).collect()
    }

    /// Encrypts content from now on: a KEK in a temporary file, the
    /// content keys bucket made by the operator (as `imctl up` does) under
    /// `policy`; projectors configured after this get the KEK.
    pub async fn encrypt(&mut self, policy: im_streams::content::Policy) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("kek");
        let kek = im_streams::content::Kek::load_or_create(&path).expect("kek");
        self.dirs.push(dir);
        im_streams::content::ContentKeys::open(&self.js, Some(kek), policy)
            .await
            .expect("content keys bucket");
        self.kek = im_streams::content::KekArgs::from_file(path);
    }

    pub fn auth(&self, component: Component) -> NatsAuth {
        match &self.passwords {
            Some(p) => NatsAuth::password(component.user(), p[&component].clone()),
            None => NatsAuth::default(),
        }
    }

    /// A new connection as `component`.
    pub async fn connect_as(&self, component: Component) -> async_nats::Client {
        NatsArgs::new(self.url())
            .with_auth(self.auth(component))
            .connect(component.user())
            .await
            .expect("connect")
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
            kek: self.kek.clone(),
            instance: instance.into(),
            partitions: None,
            data_dir,
            fanout_threshold: im_projectors::DEFAULT_FANOUT_THRESHOLD,
            fanout: true,
            store_faults: None,
            store_engine: Default::default(),
            serves: im_projectors::Serves::Clients,
            lease: None,
            projections: None,
        }
    }

    /// A projector in-process, connected as the projector.
    pub async fn projector(&mut self, config: ProjectorConfig) -> Projector {
        let client = self.connect_as(Component::Projector).await;
        Projector::start(client, config)
            .await
            .expect("projector starts")
    }

    /// The usual projector: instance `main`, every partition.
    pub async fn main_projector(&mut self) -> Projector {
        let config = self.projector_config("main");
        self.projector(config).await
    }

    /// A writer with its own connection and cache, as a gateway holds
    /// (connected as the gateway), sealing content where the stack
    /// encrypts it.
    pub async fn appender(&self) -> Arc<Appender> {
        let client = self.connect_as(Component::Gateway).await;
        let js = jetstream::new(client.clone());
        let content = im_streams::content::open_keys(&js, &self.kek)
            .await
            .expect("content keys");
        let options = im_streams::AppenderOptions {
            content,
            ..Default::default()
        };
        Appender::with_options(client, self.topology, options)
            .await
            .expect("appender")
    }
}
