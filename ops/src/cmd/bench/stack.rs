//! The stack a benchmark measures: `imctl up` as a child process, with its
//! own nats-server on a free port and a temporary data dir. A separate
//! process so that the gateway's memory and CPU are its own, not the load
//! generator's.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use futures::SinkExt;
use im_schema::v1::{self, envelope::Payload};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite;

/// How long the child may take to say it is ready (it starts nats-server,
/// applies streams, opens sled and binds the gateway).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stopping child may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A client's WebSocket buffers: small, as a phone's would be, so that
/// 20,000 load-generator connections fit beside the stack.
const CLIENT_WS_BUFFER_BYTES: usize = 4 * 1024;

/// How long a WebSocket handshake (and the `Connected` frame) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

pub use im_client::Ws;

pub struct StackOptions {
    /// The gateway's limits, handed over as its variables.
    pub limits: im_gateway::Limits,
    pub fanout_threshold: usize,
    /// Encrypt content (`imctl up`'s default). The other sub-benchmarks
    /// keep it clear, so their figures compare with the runs before
    /// encryption; `bench content` measures what it costs.
    pub encrypt: bool,
}

impl StackOptions {
    /// The stack of the log-folding sub-benchmarks: the bench's limits
    /// with no connection cap, the default fan-out threshold, content
    /// clear.
    pub fn plain() -> StackOptions {
        StackOptions {
            limits: super::bench_limits(0),
            fanout_threshold: im_projectors::DEFAULT_FANOUT_THRESHOLD,
            encrypt: false,
        }
    }
}

pub struct Stack {
    child: tokio::process::Child,
    pub nats_url: String,
    /// The stack's own nats-server (a child of `imctl up`).
    pub nats_pid: u32,
    pub gateway: SocketAddr,
    /// The gateway's `/metrics` listener.
    metrics: SocketAddr,
    /// The projector's `/metrics` listener.
    pub projector_metrics: SocketAddr,
    secret: String,
    _dir: tempfile::TempDir,
}

impl Stack {
    pub async fn start(options: StackOptions) -> anyhow::Result<Stack> {
        let dir = tempfile::tempdir()?;
        let secret: String = {
            use rand::Rng;
            rand::rng()
                .sample_iter(rand::distr::Alphanumeric)
                .take(48)
                .map(char::from)
                .collect()
        };
        let exe = std::env::current_exe().context("locating imctl")?;
        let mut command = tokio::process::Command::new(exe);
        let command = command
            .arg("up")
            // Its raw baselines publish on scratch subjects and a bare
            // broadcast, which no component identity may: the bench's
            // throwaway server runs without authorization (BENCHMARKS.md).
            .arg("--no-auth")
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--nats-port")
            .arg(im_testkit::free_port().to_string())
            .arg("--gateway-listen")
            .arg("127.0.0.1:0")
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
            .envs(options.limits.to_env())
            .arg("--fanout-threshold")
            .arg(options.fanout_threshold.to_string())
            .env("IM_JWT_HS256_SECRET", &secret);
        if !options.encrypt {
            command.arg("--plain-content");
        }
        let (child, mut lines) = spawn_quiet(command, "imctl up")?;
        let (mut gateway, mut nats_url, mut nats_pid) = (None, None, None);
        let (mut metrics, mut projector_metrics) = (None, None);
        let ready = async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix("imctl: nats-server ") {
                    nats_pid = rest
                        .split_whitespace()
                        .skip_while(|w| *w != "pid")
                        .nth(1)
                        .and_then(|p| p.parse::<u32>().ok());
                }
                if let Some(rest) = line.strip_prefix("imctl: gateway metrics http://") {
                    let addr = rest.split('/').next().unwrap_or_default();
                    metrics = Some(addr.parse::<SocketAddr>()?);
                }
                if let Some(rest) = line.strip_prefix("imctl: projector metrics http://") {
                    let addr = rest.split('/').next().unwrap_or_default();
                    projector_metrics = Some(addr.parse::<SocketAddr>()?);
                }
                if let Some(rest) = line.strip_prefix("imctl: gateway http://") {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    gateway = Some(addr.parse::<SocketAddr>()?);
                }
                if let Some(rest) = line.strip_prefix("imctl: ready nats=") {
                    nats_url = rest.split_whitespace().next().map(str::to_string);
                    return anyhow::Ok(());
                }
            }
            anyhow::bail!("imctl up exited before it was ready")
        };
        tokio::time::timeout(START_TIMEOUT, ready)
            .await
            .context("imctl up did not become ready")??;
        // Keep draining its output so that the pipe never blocks it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Stack {
            child,
            nats_url: nats_url.context("no nats url")?,
            nats_pid: nats_pid.context("no nats-server pid")?,
            gateway: gateway.context("no gateway address")?,
            metrics: metrics.context("no metrics address")?,
            projector_metrics: projector_metrics.context("no projector metrics address")?,
            secret,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }

    /// Resident memory of the stack process (gateway and projector).
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        rss_bytes(self.pid())
    }

    pub fn token(&self, user: &str) -> String {
        im_gateway::auth::issue_hs256(&self.secret, user, 3600)
    }

    /// A counter from the gateway's `/metrics` (0 when absent).
    pub async fn gateway_counter(&self, name: &str) -> anyhow::Result<u64> {
        let body = scrape(self.metrics).await?;
        Ok(body
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0))
    }

    /// The gateway's `/metrics` text.
    pub async fn gateway_metrics(&self) -> anyhow::Result<String> {
        scrape(self.metrics).await
    }

    /// The projector's `/metrics` text.
    pub async fn projector_metrics(&self) -> anyhow::Result<String> {
        scrape(self.projector_metrics).await
    }

    /// A connection to the stack's server (no authorization).
    pub async fn nats(&self) -> anyhow::Result<async_nats::Client> {
        Ok(im_streams::connect::NatsArgs::new(&self.nats_url)
            .connect("imctl-bench")
            .await?)
    }

    /// A protobuf WebSocket client of `user`, past its `Connected` frame.
    pub async fn connect(&self, user: &str, device: &str) -> anyhow::Result<Ws> {
        self.connect_at(self.gateway, user, device).await
    }

    /// The same, to the gateway at `gateway` (one started beside the stack).
    pub async fn connect_at(
        &self,
        gateway: SocketAddr,
        user: &str,
        device: &str,
    ) -> anyhow::Result<Ws> {
        let opts = im_client::ConnectOptions {
            url: format!("ws://{gateway}"),
            token: Some(self.token(user)),
            device_id: device.into(),
            wire: im_client::Wire::Proto,
            buffer_bytes: Some(CLIENT_WS_BUFFER_BYTES),
            timeout: CONNECT_TIMEOUT,
        };
        let conn = im_client::Connection::connect(&opts)
            .await
            .with_context(|| format!("connecting {user}"))?;
        Ok(conn.into_parts().0)
    }

    /// An `im-gateway` process of its own on the stack's NATS (its memory
    /// is the gateway's alone): the binary beside this `imctl`.
    pub async fn spawn_gateway(&self, limits: &im_gateway::Limits) -> anyhow::Result<Gateway> {
        let exe = crate::cmd::check::procs::sibling("im-gateway")?;
        let mut command = tokio::process::Command::new(exe);
        let command = command
            .env("IM_GATEWAY_LISTEN", "127.0.0.1:0")
            .env("IM_NATS_URL", &self.nats_url)
            .env("IM_JWT_HS256_SECRET", &self.secret)
            .envs(limits.to_env());
        let (child, mut lines) = spawn_quiet(command, "im-gateway")?;
        let ready = async {
            let line = lines.next_line().await?.context("im-gateway exited")?;
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("http://"))
                .with_context(|| format!("no address in {line:?}"))?;
            anyhow::Ok(addr.parse::<SocketAddr>()?)
        };
        let addr = tokio::time::timeout(START_TIMEOUT, ready)
            .await
            .context("im-gateway did not become ready")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Gateway { child, addr })
    }

    /// Stops the stack (SIGTERM, so that it stops its nats-server too).
    pub async fn stop(mut self) {
        terminate(self.pid());
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // An error path: ask it to stop its nats-server before the kill.
        if let Ok(None) = self.child.try_wait() {
            terminate(self.pid());
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// Starts a child that logs warnings only and says on stdout when it is
/// ready (its lines, to read); killed on drop.
/// The response (headers and all) to `GET /metrics` at `at`.
async fn scrape(at: SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(at).await?;
    sock.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    sock.read_to_string(&mut body).await?;
    Ok(body)
}

fn spawn_quiet(
    command: &mut tokio::process::Command,
    what: &str,
) -> anyhow::Result<(tokio::process::Child, Lines)> {
    let mut child = command
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let stdout = child.stdout.take().expect("piped");
    Ok((child, BufReader::new(stdout).lines()))
}

/// A gateway process beside the stack; killed on drop.
pub struct Gateway {
    child: tokio::process::Child,
    pub addr: SocketAddr,
}

impl Gateway {
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        rss_bytes(self.child.id().unwrap_or_default())
    }
}

/// Resident memory of a process.
pub(super) fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()?;
    Ok(kb * 1024)
}

fn terminate(pid: u32) {
    if pid != 0 {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
    }
}

/// One envelope in a binary frame.
pub fn frame(payload: Payload) -> tungstenite::Message {
    im_client::encode_frame(im_client::Wire::Proto, payload)
}

/// The envelopes of a frame (none for control or malformed frames).
pub fn decode(msg: &tungstenite::Message) -> Vec<v1::Envelope> {
    im_client::decode_frame(msg).unwrap_or_default()
}

/// A text send into a conversation.
pub fn send(conv: &str, client_msg_id: String, text: String) -> tungstenite::Message {
    frame(Payload::Send(v1::SendMessage {
        conversation_id: conv.to_string(),
        client_msg_id,
        body: Some(v1::send_message::Body::Text(text)),
        ..Default::default()
    }))
}

/// Sends a frame, for callers holding a split sink.
pub async fn send_on<S>(sink: &mut S, msg: tungstenite::Message) -> anyhow::Result<()>
where
    S: futures::Sink<tungstenite::Message, Error = tungstenite::Error> + Unpin,
{
    sink.send(msg).await.context("websocket send")
}
