//! A JetStream cluster of real nats-server processes on loopback, for the
//! R3 tests.

use std::time::{Duration, Instant};

use crate::{
    free_port, nats_server_binary, ClusterConfig, HarnessError, NatsServer, NodeConfig,
    READY_TIMEOUT,
};

/// A 3-node (or n-node) JetStream cluster on loopback.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes routed to each other and waits until JetStream has
    /// a meta leader (an R3 stream can be created).
    pub async fn start(size: usize) -> Result<Self, HarnessError> {
        Self::start_with(size, None).await
    }

    /// As `start`, every node with authorization on (`auth`'s block), the
    /// harness connecting as `auth`'s user.
    pub async fn start_with(
        size: usize,
        auth: Option<crate::ServerAuth>,
    ) -> Result<Self, HarnessError> {
        let binary = nats_server_binary()?;
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let mut nodes = Vec::with_capacity(size);
        for (i, port) in cluster_ports.iter().enumerate() {
            let node = NodeConfig {
                name: format!("n{}", i + 1),
                client_port: free_port(),
                cluster: Some(ClusterConfig {
                    name: "im-test".into(),
                    port: *port,
                    routes: cluster_ports.clone(),
                }),
                sync_always: false,
                auth: auth.clone(),
            };
            nodes.push(NatsServer::spawn(
                binary.clone(),
                node,
                tempfile::tempdir()?,
            )?);
        }
        for n in nodes.iter_mut() {
            n.wait_ready(true).await?;
        }
        let cluster = NatsCluster { nodes };
        cluster.wait_meta_leader().await?;
        Ok(cluster)
    }

    async fn wait_meta_leader(&self) -> Result<(), HarnessError> {
        let client = self.connect().await;
        let js = async_nats::jetstream::new(client);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(info) = js.query_account().await {
                let _ = info;
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(HarnessError::NotReady("no JetStream meta leader".into()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Comma-separated URLs of every node, for clients that fail over.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }

    /// A client that knows every node.
    pub async fn connect(&self) -> async_nats::Client {
        let addrs: Vec<async_nats::ServerAddr> = self
            .urls()
            .iter()
            .map(|u| u.parse().expect("valid url"))
            .collect();
        let options = match self.nodes.first().and_then(|n| n.node.auth.as_ref()) {
            Some(a) => async_nats::ConnectOptions::with_user_and_password(
                a.user.clone(),
                a.password.clone(),
            ),
            None => async_nats::ConnectOptions::new(),
        };
        options
            .connect(addrs)
            .await
            .expect("connect to the test cluster")
    }
}
