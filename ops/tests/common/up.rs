//! `imctl up` as a real process, for the tests that drive a whole stack.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `imctl up`, with `configure` applied to its command (environment,
/// stderr), until it prints that it is ready: (process, stdout lines).
pub fn start_as(
    data: &std::path::Path,
    port: u16,
    gateway: &str,
    configure: impl FnOnce(&mut Command),
) -> (Child, Vec<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imctl"));
    cmd.args(["up", "--data-dir"])
        .arg(data)
        .args(["--nats-port", &port.to_string()])
        .args(["--gateway-listen", gateway])
        .args(["--admin-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    configure(&mut cmd);
    let mut child = cmd.spawn().expect("spawn imctl");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let ready = line.contains("imctl: ready");
            lines.push(line);
            if ready {
                return (child, lines);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("imctl up never became ready: {lines:?}");
}

pub fn interrupt_and_wait(mut child: Child) {
    Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "imctl exited with {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("imctl did not stop on SIGINT");
}

pub fn gateway_addr(lines: &[String]) -> std::net::SocketAddr {
    addr_after(lines, "imctl: gateway http://")
}

pub fn addr_after(lines: &[String], prefix: &str) -> std::net::SocketAddr {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.split(['/', ' ']).next())
        .unwrap_or_else(|| panic!("a line {prefix}: {lines:?}"))
        .parse()
        .unwrap()
}

pub fn token(data: &std::path::Path, user: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_imctl"))
        .args(["token", "issue", "--user", user, "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub async fn ws_connect(addr: std::net::SocketAddr, token: &str) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}/v1/ws?access_token={token}")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "im.v1.json".parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket")
        .0
}

/// The next JSON envelope containing `needle`.
pub async fn next_with(ws: &mut Ws, needle: &str) -> String {
    use futures::StreamExt;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame")
            .unwrap()
            .unwrap();
        if let Ok(text) = msg.to_text() {
            if text.contains(needle) {
                return text.to_string();
            }
        }
    }
}

/// Stops `imctl up` (by pid) when dropped: a test that fails before it
/// stops the stack leaves neither it nor its nats-server running (and its
/// test hanging). SIGINT first, so that `up` stops its server; SIGKILL if
/// it has not ended in 5 s.
pub struct Reaper(pub u32);

impl Drop for Reaper {
    fn drop(&mut self) {
        let signal = |sig: &str| {
            Command::new("kill")
                .args([sig, &self.0.to_string()])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !signal("-INT") {
            return; // ended already
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && signal("-0") {
            std::thread::sleep(Duration::from_millis(50));
        }
        signal("-KILL");
    }
}

/// A 1×1 PNG.
pub const PNG: [u8; 67] = [
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0A, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE,
    0x42, 0x60, 0x82,
];

/// One raw HTTP/1.1 exchange: (status, body bytes).
pub async fn exchange(addr: std::net::SocketAddr, head: String, body: &[u8]) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    sock.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = String::from_utf8_lossy(&raw[9..12]).parse().unwrap();
    (status, raw[split + 4..].to_vec())
}

/// `imctl up` on loopback, as is.
pub fn start(data: &std::path::Path, port: u16) -> (Child, Vec<String>) {
    start_as(data, port, "127.0.0.1:0", |_| {})
}

/// Until the gateway's `/readyz` answers 200.
pub async fn wait_ready(gw: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = super::http_get(gw, "/readyz").await;
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "never ready: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `imctl`'s output as the operator of `data`'s stack: (success, stdout).
pub fn imctl_as_operator(data: &std::path::Path, url: &str, args: &[&str]) -> (bool, String) {
    let auth =
        im_ops::cmd::nats_identities::auth(data, im_streams::identities::Component::Operator)
            .unwrap();
    let (user, password) = (auth.user.unwrap(), auth.password.unwrap());
    let args: Vec<&str> = args.iter().copied().chain(["--nats-url", url]).collect();
    let env = [
        ("IM_NATS_USER", user.as_str()),
        ("IM_NATS_PASSWORD", password.as_str()),
    ];
    super::imctl_with_env(&args, &env)
}
