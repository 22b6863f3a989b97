//! The system a check runs against, as separate processes it can kill:
//! nats-server (one node, or a 3-node cluster with R3 streams), one
//! projector (`im-projector`) and two gateways (`im-gateway`), each on a
//! fixed port so that clients find a restarted one where it was.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// The projector instance a check runs (and verifies).
pub const INSTANCE: &str = "check";

/// The secret the gateways check tokens with.
pub const SECRET: &str = "check-secret-that-is-long-enough-for-hs256";

/// JetStream's duplicate window in a check: short, so that retries after it
/// happen within a short run (the guarantee must not depend on it).
pub const DUPLICATE_WINDOW_MS: u64 = 2_000;

/// A sibling binary of this `imctl` (built by the same cargo invocation).
pub(crate) fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?
        .parent()
        .context("imctl's directory")?
        .join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build it beside imctl (cargo build -p im-gateway -p im-projectors)",
        path.display()
    );
    Ok(path)
}

/// One of the system's processes (a gateway or the projector), restartable.
pub struct Proc {
    pub name: String,
    command: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Proc {
    fn start(&mut self) -> anyhow::Result<()> {
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.start()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// nats-server: one node or a cluster.
pub enum Nats {
    Single(Box<im_testkit::NatsServer>),
    Cluster(im_testkit::NatsCluster),
}

impl Nats {
    /// Every node's URL, comma-separated (what the processes are given).
    pub fn urls(&self) -> String {
        match self {
            Nats::Single(s) => s.url(),
            Nats::Cluster(c) => c.urls().join(","),
        }
    }

    pub fn replicas(&self) -> usize {
        match self {
            Nats::Single(_) => 1,
            Nats::Cluster(_) => 3,
        }
    }
}

/// Everything under test.
pub struct System {
    pub nats: Nats,
    pub projector: Proc,
    pub gateways: Vec<(Proc, std::net::SocketAddr)>,
    _dir: tempfile::TempDir,
}

impl System {
    pub async fn start(cluster: bool) -> anyhow::Result<System> {
        let nats = if cluster {
            Nats::Cluster(im_testkit::NatsCluster::start(3).await?)
        } else {
            Nats::Single(Box::new(im_testkit::NatsServer::start().await?))
        };
        let urls = nats.urls();
        let client = im_streams::connect::NatsArgs::new(&urls)
            .connect("imctl-check")
            .await?;
        let settings = im_streams::StreamSettings {
            replicas: nats.replicas(),
            duplicate_window_ms: DUPLICATE_WINDOW_MS,
            ..Default::default()
        };
        im_streams::apply_streams(&async_nats::jetstream::new(client), &settings).await?;
        let dir = tempfile::tempdir()?;
        let mut projector = Proc {
            name: "projector".into(),
            command: vec![
                sibling("im-projector")?.display().to_string(),
                "--instance".into(),
                INSTANCE.into(),
                "--data-dir".into(),
                dir.path().join("projector").display().to_string(),
            ],
            env: vec![("IM_NATS_URL".into(), urls.clone())],
            child: None,
        };
        projector.start()?;
        let mut gateways = Vec::new();
        for i in 0..2 {
            let addr: std::net::SocketAddr =
                format!("127.0.0.1:{}", im_testkit::free_port()).parse()?;
            // The workload sends as fast as it likes: its rate is the check's, not a limit's.
            let limits = im_gateway::Limits {
                sends_per_sec: 100_000,
                send_burst: 100_000,
                user_sends_per_sec: 100_000,
                user_send_burst: 100_000,
                ..Default::default()
            };
            let mut env: Vec<(String, String)> = vec![
                ("IM_NATS_URL".into(), urls.clone()),
                ("IM_GATEWAY_LISTEN".into(), addr.to_string()),
                ("IM_JWT_HS256_SECRET".into(), SECRET.into()),
            ];
            env.extend(limits.to_env().into_iter().map(|(k, v)| (k.to_string(), v)));
            let mut gw = Proc {
                name: format!("gateway{i}"),
                command: vec![sibling("im-gateway")?.display().to_string()],
                env,
                child: None,
            };
            gw.start()?;
            gateways.push((gw, addr));
        }
        let system = System {
            nats,
            projector,
            gateways,
            _dir: dir,
        };
        system.wait_ready().await?;
        Ok(system)
    }

    /// Until every gateway answers `/readyz` with 200.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        for (_, addr) in &self.gateways {
            loop {
                if let Ok((200, _)) = super::http::get(*addr, "/readyz", None).await {
                    break;
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "{addr} never became ready"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// The nats-server process of node `i` (0 on a single node).
    pub fn node(&mut self, i: usize) -> &mut im_testkit::NatsServer {
        match &mut self.nats {
            Nats::Single(s) => s,
            Nats::Cluster(c) => &mut c.nodes[i],
        }
    }

    pub fn nodes(&self) -> usize {
        match &self.nats {
            Nats::Single(_) => 1,
            Nats::Cluster(c) => c.nodes.len(),
        }
    }
}
