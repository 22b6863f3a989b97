//! Test support: a real `nats-server` per test (free port, temp store dir,
//! JetStream on, killed on drop) and 3-node clusters for R3 tests. `imctl up`
//! runs its managed server through the same type, on a persistent store.
//!
//! The binary is the one `scripts/setup.sh` installs into `.tools/bin`, at the
//! version pinned in `tools/versions.env`; `IM_NATS_SERVER` may point at
//! another build, which must still be 2.11 or newer.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub mod cluster;
pub mod receiver;
pub mod s3;
pub mod stack;
pub use cluster::NatsCluster;
pub use receiver::{Mode as ReceiverMode, Receiver};
pub use s3::{S3Server, S3_ACCESS_KEY, S3_SECRET_KEY};
pub use stack::Stack;

const VERSIONS_ENV: &str = include_str!("../../tools/versions.env");

/// The oldest nats-server the project accepts. 2.9.x lets conflicting
/// expected-sequence writes both commit on replicated streams.
pub const MIN_NATS_SERVER: (u32, u32, u32) = (2, 11, 0);

/// How long a started server has to accept connections and answer JetStream
/// API requests. Generous: CI machines have 2 cores and many tests at once.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Attempts to find a free port and start on it; another process may take a
/// port between our probe and the server's bind.
const START_ATTEMPTS_MAX: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{1} not found at {0}: run scripts/setup.sh (installs the pinned tools)")]
    Missing(PathBuf, String),
    #[error("nats-server at {path} is {found}; the project needs {required} or newer (run scripts/setup.sh)")]
    TooOld {
        path: PathBuf,
        found: String,
        required: String,
    },
    #[error("nats-server at {path} is {found}, not the pinned {pinned} (run scripts/setup.sh)")]
    NotPinned {
        path: PathBuf,
        found: String,
        pinned: String,
    },
    #[error("nats-server did not become ready: {0}")]
    NotReady(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// The nats-server version pinned in tools/versions.env.
pub fn pinned_nats_version() -> String {
    VERSIONS_ENV
        .lines()
        .find_map(|l| l.trim().strip_prefix("NATS_SERVER_VERSION="))
        .expect("tools/versions.env pins NATS_SERVER_VERSION")
        .trim()
        .to_string()
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives in the workspace")
        .to_path_buf()
}

fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.split_whitespace().find(|w| w.starts_with('v'))?;
    let mut parts = v.trim_start_matches('v').split(['.', '-']);
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    ))
}

/// Finds the nats-server binary and checks its version.
pub fn nats_server_binary() -> Result<PathBuf, HarnessError> {
    match std::env::var_os("IM_NATS_SERVER") {
        Some(p) => check_binary(PathBuf::from(p), false),
        None => check_binary(workspace_root().join(".tools/bin/nats-server"), true),
    }
}

/// Runs `path --version` and checks it: 2.11+ always, the pin when asked.
pub fn check_binary(path: PathBuf, must_be_pinned: bool) -> Result<PathBuf, HarnessError> {
    let pinned = pinned_nats_version();
    let out = Command::new(&path)
        .arg("--version")
        .output()
        .map_err(|_| HarnessError::Missing(path.clone(), format!("nats-server {pinned}")))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let found = parse_version(&text);
    let required = format!(
        "{}.{}.{}",
        MIN_NATS_SERVER.0, MIN_NATS_SERVER.1, MIN_NATS_SERVER.2
    );
    match found {
        Some(v) if v >= MIN_NATS_SERVER => {}
        _ => {
            return Err(HarnessError::TooOld {
                path,
                found: text,
                required,
            })
        }
    }
    if must_be_pinned && !text.ends_with(&format!("v{pinned}")) {
        return Err(HarnessError::NotPinned {
            path,
            found: text,
            pinned,
        });
    }
    Ok(path)
}

/// Checks a version string the way the harness does; exposed for tests.
pub fn version_is_acceptable(version_output: &str) -> bool {
    parse_version(version_output).is_some_and(|v| v >= MIN_NATS_SERVER)
}

/// Messages `stream` holds now (panics when the server cannot say: a test
/// helper).
pub async fn stream_messages(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .unwrap_or_else(|e| panic!("stream {stream}: {e}"))
        .info()
        .await
        .unwrap_or_else(|e| panic!("stream {stream} info: {e}"))
        .state
        .messages
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the loopback interface has a free port")
}

/// Options a node is started with.
#[derive(Clone, Debug, Default)]
pub(crate) struct NodeConfig {
    pub(crate) name: String,
    pub(crate) client_port: u16,
    pub(crate) cluster: Option<ClusterConfig>,
    pub(crate) sync_always: bool,
    pub(crate) auth: Option<ServerAuth>,
}

/// A server that refuses connections without a user: its `authorization`
/// block (`im_streams::identities::authorization_block`), and the user the
/// harness itself connects as to see it ready.
#[derive(Clone, Debug)]
pub struct ServerAuth {
    /// Config text: the `authorization` block (and a `tls` one, if any).
    pub authorization: String,
    pub user: String,
    pub password: String,
    /// The CA of the server's TLS certificate, when it requires TLS.
    pub ca: Option<PathBuf>,
}

impl ServerAuth {
    async fn connect(&self, url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
        let options = async_nats::ConnectOptions::with_user_and_password(
            self.user.clone(),
            self.password.clone(),
        );
        match &self.ca {
            Some(ca) => options.add_root_certificates(ca.clone()).require_tls(true),
            None => options,
        }
        .connect(url)
        .await
    }
}

/// Where and how a long-lived server runs (`imctl up`).
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Holds the JetStream store, the config file and the server log.
    pub dir: PathBuf,
    pub port: u16,
    /// `sync_interval: always`: fsync every write before acking it. Survives
    /// power loss, at a large throughput cost; the default (the server's
    /// periodic sync) survives process crashes, not machine crashes.
    pub sync_always: bool,
    /// Authorization on (`imctl up`'s default).
    pub auth: Option<ServerAuth>,
}

/// How long a graceful stop may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub(crate) struct ClusterConfig {
    pub(crate) name: String,
    pub(crate) port: u16,
    pub(crate) routes: Vec<u16>,
}

fn render_config(node: &NodeConfig, store_dir: &Path) -> String {
    let sync = if node.sync_always {
        "  sync_interval: always\n"
    } else {
        ""
    };
    let mut cfg = format!(
        "server_name: {name}\nlisten: 127.0.0.1:{port}\n\
         jetstream {{\n  store_dir: \"{dir}\"\n  max_memory_store: 256MB\n  max_file_store: 4GB\n{sync}}}\n",
        name = node.name,
        port = node.client_port,
        dir = store_dir.display(),
    );
    if let Some(auth) = &node.auth {
        cfg.push_str(&auth.authorization);
    }
    if let Some(c) = &node.cluster {
        let routes: Vec<String> = c
            .routes
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        cfg.push_str(&format!(
            "cluster {{\n  name: {}\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
            c.name,
            c.port,
            routes.join(", ")
        ));
    }
    cfg
}

/// One nats-server process with its own store directory. Killed on drop.
pub struct NatsServer {
    binary: PathBuf,
    node: NodeConfig,
    dir: PathBuf,
    /// Removed on drop, for servers on a temp dir.
    _temp: Option<tempfile::TempDir>,
    child: Option<Child>,
}

/// Every file under `dirs` (recursively) whose bytes contain `needle`:
/// what a test of erasure greps the data directories with.
pub fn files_containing(dirs: &[PathBuf], needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo: Vec<PathBuf> = dirs.to_vec();
    while let Some(path) = todo.pop() {
        if path.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                todo.extend(entries.flatten().map(|e| e.path()));
            }
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path);
            }
        }
    }
    found
}

impl NatsServer {
    /// Where the server keeps its JetStream files.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// Starts a single node with JetStream on a free port and waits until it
    /// answers JetStream API requests.
    pub async fn start() -> Result<Self, HarnessError> {
        Self::start_with(None).await
    }

    /// As `start`, with authorization on.
    pub async fn start_secured(auth: ServerAuth) -> Result<Self, HarnessError> {
        Self::start_with(Some(auth)).await
    }

    /// As `start`, with authorization on when `auth` says so.
    pub async fn start_with(auth: Option<ServerAuth>) -> Result<Self, HarnessError> {
        let binary = nats_server_binary()?;
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS_MAX {
            let node = NodeConfig {
                name: "n1".into(),
                client_port: free_port(),
                auth: auth.clone(),
                ..Default::default()
            };
            let mut server = Self::spawn(binary.clone(), node, tempfile::tempdir()?)?;
            match server.wait_ready(false).await {
                Ok(()) => return Ok(server),
                Err(e) => {
                    server.kill();
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    /// Starts a long-lived server on a given store dir and port, and waits
    /// until it answers JetStream API requests. The data outlives it.
    pub async fn start_persistent(options: &ServerOptions) -> Result<Self, HarnessError> {
        let binary = nats_server_binary()?;
        std::fs::create_dir_all(&options.dir)?;
        let node = NodeConfig {
            name: "im-local".into(),
            client_port: options.port,
            cluster: None,
            sync_always: options.sync_always,
            auth: options.auth.clone(),
        };
        let mut server = NatsServer {
            binary,
            node,
            dir: options.dir.clone(),
            _temp: None,
            child: None,
        };
        server.launch()?;
        if let Err(e) = server.wait_ready(false).await {
            server.kill();
            return Err(e);
        }
        Ok(server)
    }

    pub(crate) fn spawn(
        binary: PathBuf,
        node: NodeConfig,
        dir: tempfile::TempDir,
    ) -> Result<Self, HarnessError> {
        let mut server = NatsServer {
            binary,
            node,
            dir: dir.path().to_path_buf(),
            _temp: Some(dir),
            child: None,
        };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> Result<(), HarnessError> {
        let store = self.dir.join("store");
        let conf = self.dir.join("nats.conf");
        std::fs::write(&conf, render_config(&self.node, &store))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// Where the server's own log goes (kept with the store, for failures).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("nats.log")
    }

    pub(crate) async fn wait_ready(&mut self, clustered: bool) -> Result<(), HarnessError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                    return Err(HarnessError::NotReady(format!(
                        "exited with {status}: {log}"
                    )));
                }
            }
            let client = match &self.node.auth {
                Some(auth) => auth.connect(&self.url()).await,
                None => async_nats::connect(self.url()).await,
            };
            if let Ok(client) = client {
                if clustered {
                    return Ok(());
                }
                let js = async_nats::jetstream::new(client);
                if js.query_account().await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(HarnessError::NotReady(format!(
                    "no answer on {} within {READY_TIMEOUT:?}",
                    self.url()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.node.client_port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.node.client_port
    }

    /// A new client connection.
    pub async fn connect(&self) -> async_nats::Client {
        match &self.node.auth {
            Some(auth) => auth.connect(&self.url()).await,
            None => async_nats::connect(self.url()).await,
        }
        .expect("connect to the test nats-server")
    }

    /// SIGKILL: no shutdown, no flush, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for the server to flush and exit (killed after
    /// `STOP_TIMEOUT`).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Starts the server again on the same port and store directory.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill();
        let clustered = self.node.cluster.is_some();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.launch()?;
            match self.wait_ready(clustered).await {
                Ok(()) => return Ok(()),
                // The old process's port may linger briefly after a kill.
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => {
                    self.kill();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_2_9_10_is_refused_and_current_releases_accepted() {
        assert!(!version_is_acceptable("nats-server: v2.9.10"));
        assert!(!version_is_acceptable("nats-server: v2.10.26"));
        assert!(version_is_acceptable("nats-server: v2.11.0"));
        assert!(version_is_acceptable("nats-server: v2.15.1"));
        assert!(!version_is_acceptable("garbage"));
    }

    #[test]
    fn an_old_binary_is_refused_naming_the_required_version() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("nats-server");
        std::fs::write(&fake, "#!/bin/sh\necho 'nats-server: v2.9.10'\n").unwrap();
        Command::new("chmod").arg("+x").arg(&fake).status().unwrap();
        let err = check_binary(fake.clone(), false).unwrap_err();
        assert!(matches!(err, HarnessError::TooOld { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("v2.9.10") && text.contains("2.11.0"),
            "{text}"
        );
        let missing = check_binary(dir.path().join("nope"), true).unwrap_err();
        assert!(matches!(missing, HarnessError::Missing(..)), "{missing}");
        assert!(missing.to_string().contains("scripts/setup.sh"));
    }

    #[test]
    fn pin_is_a_current_release() {
        assert!(version_is_acceptable(&format!(
            "nats-server: v{}",
            pinned_nats_version()
        )));
    }

    #[tokio::test]
    async fn server_starts_and_answers_jetstream() {
        let server = NatsServer::start().await.unwrap();
        let js = async_nats::jetstream::new(server.connect().await);
        js.query_account().await.unwrap();
    }
}
