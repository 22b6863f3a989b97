//! The system a check runs against, as separate processes it can kill:
//! nats-server (one node, or a 3-node cluster with R3 streams), one
//! projector (`im-projector`, pinned to every partition) or a pool of them,
//! and two gateways (`im-gateway`), each on a fixed port so that clients
//! find a restarted one where it was.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use im_streams::connect::{NatsArgs, NatsAuth};
use im_streams::identities::{authorization_block, Component, Secret};

/// The projector instance a check runs (and verifies).
pub const INSTANCE: &str = "check";

/// A directory to keep each process's log in (its stderr, `<name>.log`).
pub const LOG_DIR_ENV: &str = "IM_CHECK_LOG_DIR";

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
        // Each process's log, kept when asked (`IM_CHECK_LOG_DIR`): what a
        // finding is read against.
        let (filter, stderr) = match std::env::var_os(LOG_DIR_ENV) {
            Some(dir) => {
                let path = std::path::Path::new(&dir).join(format!("{}.log", self.name));
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?;
                ("warn,im_projectors::pool=info", Stdio::from(file))
            }
            None => ("error", Stdio::null()),
        };
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(stderr)
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

    /// SIGTERM, as an orchestrator stops it, and waits up to `bound` for it
    /// to exit (then SIGKILL); whether it exited by itself, successfully.
    pub async fn terminate(&mut self, bound: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-s", "TERM", &child.id().to_string()])
            .status();
        let deadline = tokio::time::Instant::now() + bound;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        false
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

/// Each component's NATS password in a check (made per run).
pub struct Identities(std::collections::BTreeMap<Component, String>);

impl Identities {
    fn new() -> Identities {
        let passwords = Component::ALL
            .into_iter()
            .map(|c| (c, format!("{}-{:032x}", c.user(), rand::random::<u128>())))
            .collect();
        Identities(passwords)
    }

    /// The server's side: the shipped `authorization` block with these
    /// passwords, the harness connecting as the operator.
    fn server_auth(&self) -> im_testkit::ServerAuth {
        let users: Vec<(Component, Secret)> = self
            .0
            .iter()
            .map(|(c, p)| (*c, Secret::Inline(p.clone())))
            .collect();
        im_testkit::ServerAuth {
            authorization: authorization_block(&users),
            user: Component::Operator.user().into(),
            password: self.0[&Component::Operator].clone(),
            ca: None,
        }
    }

    /// The environment a component's process connects with.
    pub fn env(&self, component: Component) -> Vec<(String, String)> {
        vec![
            ("IM_NATS_USER".into(), component.user().into()),
            ("IM_NATS_PASSWORD".into(), self.0[&component].clone()),
        ]
    }

    /// How the check itself connects, as `component`.
    pub fn auth(&self, component: Component) -> NatsAuth {
        NatsAuth::password(component.user(), self.0[&component].clone())
    }
}

/// The projector processes, started: one pinned to every partition
/// (`INSTANCE`), or `n` members of the pool.
fn projector_procs(
    n: usize,
    dir: &std::path::Path,
    env: &[(String, String)],
) -> anyhow::Result<Vec<Proc>> {
    let exe = sibling("im-projector")?.display().to_string();
    let mut procs = Vec::new();
    for i in 1..=n.max(1) {
        let (name, pinned) = match n {
            0 | 1 => (INSTANCE.to_string(), true),
            _ => (pool_member(i), false),
        };
        let mut command = vec![exe.clone(), "--instance".into(), name.clone()];
        command.extend(["--data-dir".into(), dir.join(&name).display().to_string()]);
        if pinned {
            command.extend(["--partitions".into(), "all".into()]);
        }
        let mut proc = Proc {
            name,
            command,
            env: env.to_vec(),
            child: None,
        };
        proc.start()?;
        procs.push(proc);
    }
    Ok(procs)
}

/// The name of the pool's `i`th member in a check.
pub fn pool_member(i: usize) -> String {
    format!("{INSTANCE}-{i}")
}

/// Everything under test, as deployed: the shipped NATS authorization with
/// one identity per component, and gateways that sign what they append
/// with keys the operator registered.
pub struct System {
    pub nats: Nats,
    pub identities: Identities,
    /// One pinned instance (`INSTANCE`), or the pool's members
    /// (`check-1`..).
    pub projectors: Vec<Proc>,
    pub gateways: Vec<(Proc, std::net::SocketAddr)>,
    _dir: tempfile::TempDir,
}

impl System {
    pub async fn start(cluster: bool, projectors: usize) -> anyhow::Result<System> {
        let identities = Identities::new();
        let auth = Some(identities.server_auth());
        let nats = if cluster {
            Nats::Cluster(im_testkit::NatsCluster::start_with(3, auth).await?)
        } else {
            Nats::Single(Box::new(im_testkit::NatsServer::start_with(auth).await?))
        };
        let urls = nats.urls();
        let client = NatsArgs::new(&urls)
            .with_auth(identities.auth(Component::Operator))
            .connect("imctl-check")
            .await?;
        let settings = im_streams::StreamSettings {
            replicas: nats.replicas(),
            duplicate_window_ms: DUPLICATE_WINDOW_MS,
            ..Default::default()
        };
        let js = async_nats::jetstream::new(client);
        im_streams::apply_streams(&js, &settings).await?;
        let dir = tempfile::tempdir()?;
        let mut env = vec![("IM_NATS_URL".into(), urls.clone())];
        env.extend(identities.env(Component::Projector));
        let projectors = projector_procs(projectors, dir.path(), &env)?;
        let mut gateways = Vec::new();
        for i in 0..2 {
            // Its own signing key, registered by the operator first.
            let key_file = dir.path().join(format!("gateway{i}-signing-key"));
            let signer = im_streams::signing::EventSigner::load_or_create(&key_file)?;
            im_streams::signing::register(&js, &signer.public()).await?;
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
                (
                    "IM_EVENT_SIGNING_KEY_FILE".into(),
                    key_file.display().to_string(),
                ),
            ];
            env.extend(identities.env(Component::Gateway));
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
            identities,
            projectors,
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
            super::http::ready(*addr, deadline).await?;
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

    /// Whether the projectors are a pool (else one pinned instance).
    pub fn pool(&self) -> bool {
        self.projectors.len() > 1
    }

    pub fn nodes(&self) -> usize {
        match &self.nats {
            Nats::Single(_) => 1,
            Nats::Cluster(c) => c.nodes.len(),
        }
    }
}

/// Sends `sig` (`-STOP`, `-INT`, ...) to `pid`, if there is one; whether
/// it was delivered.
pub(crate) fn signal(sig: &str, pid: Option<u32>) -> bool {
    pid.is_some_and(|pid| {
        std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    })
}
