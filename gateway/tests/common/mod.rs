//! Real parts for gateway tests: nats-server, streams, a projector and a
//! gateway in-process on a free port, and WebSocket clients.
#![allow(dead_code)]

use std::time::Duration;

use im_gateway::{AppState, GatewayConfig, Limits};
use im_schema::v1::{self, envelope::Payload};
use tokio_tungstenite::tungstenite::Message;

pub const SECRET: &str = "test-secret-that-is-long-enough-32b";
pub const RS256_PRIVATE: &str = include_str!("../keys/rs256-test-private.pem");
pub const RS256_PUBLIC: &str = include_str!("../keys/rs256-test-public.pem");

/// The testkit's stack (server, streams, projector `main`) with gateways
/// in-process.
pub struct Stack {
    pub kit: im_testkit::Stack,
    pub _projector: im_projectors::Projector,
    pub gateways: Vec<std::net::SocketAddr>,
    /// Each gateway's `/metrics` address.
    pub metrics: Vec<std::net::SocketAddr>,
    pub states: Vec<std::sync::Arc<AppState>>,
}

impl std::ops::Deref for Stack {
    type Target = im_testkit::Stack;
    fn deref(&self) -> &im_testkit::Stack {
        &self.kit
    }
}

impl std::ops::DerefMut for Stack {
    fn deref_mut(&mut self) -> &mut im_testkit::Stack {
        &mut self.kit
    }
}

impl Stack {
    pub async fn start(limits: Limits) -> Stack {
        Self::start_with(limits, &Default::default()).await
    }

    /// A stack whose streams have `settings` (a short duplicate window).
    pub async fn start_with(limits: Limits, settings: &im_streams::StreamSettings) -> Stack {
        let mut kit = im_testkit::Stack::start_with(settings).await;
        let projector = kit.main_projector().await;
        let mut stack = Stack {
            kit,
            _projector: projector,
            gateways: Vec::new(),
            metrics: Vec::new(),
            states: Vec::new(),
        };
        stack.add_gateway(limits).await;
        stack
    }

    /// A secured stack (below) that encrypts content under `policy`
    /// (docs/privacy.md).
    pub async fn start_encrypted(limits: Limits, policy: im_streams::content::Policy) -> Stack {
        let mut kit = im_testkit::Stack::start_secured().await;
        kit.encrypt(policy).await;
        Self::around(kit, limits).await
    }

    /// A stack with the shipped NATS authorization on: the projector and
    /// the gateways connect as theirs (`im_streams::identities`).
    pub async fn start_secured(limits: Limits) -> Stack {
        let kit = im_testkit::Stack::start_secured().await;
        Self::around(kit, limits).await
    }

    async fn around(mut kit: im_testkit::Stack, limits: Limits) -> Stack {
        let projector = kit.main_projector().await;
        let mut stack = Stack {
            kit,
            _projector: projector,
            gateways: Vec::new(),
            metrics: Vec::new(),
            states: Vec::new(),
        };
        stack.add_gateway(limits).await;
        stack
    }

    /// Another gateway, with its own NATS connection.
    pub async fn add_gateway(&mut self, limits: Limits) -> std::net::SocketAddr {
        self.add_gateway_with(limits, None).await
    }

    /// Another gateway, keeping media where `media` says.
    pub async fn add_gateway_with(
        &mut self,
        limits: Limits,
        media: Option<im_gateway::media::MediaBackend>,
    ) -> std::net::SocketAddr {
        let web = im_gateway::http::web::WebConfig {
            dir: None,
            dev_login: true,
        };
        self.add_gateway_configured(limits, media, web).await
    }

    /// Another gateway serving `web` (the app's files, development sign-in).
    pub async fn add_gateway_with_web(
        &mut self,
        limits: Limits,
        web: im_gateway::http::web::WebConfig,
    ) -> std::net::SocketAddr {
        self.add_gateway_configured(limits, None, web).await
    }

    async fn add_gateway_configured(
        &mut self,
        limits: Limits,
        media: Option<im_gateway::media::MediaBackend>,
        web: im_gateway::http::web::WebConfig,
    ) -> std::net::SocketAddr {
        let config = GatewayConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: None,
            signing_key_file: None,
            kek: self.kit.kek.clone(),
            nats_url: self.server.url(),
            nats_auth: self.kit.auth(im_streams::identities::Component::Gateway),
            tokens: im_gateway::auth::TokenConfig {
                hs256_secret: Some(SECRET.into()),
                rs256_public_pem: Some(RS256_PUBLIC.into()),
                ..Default::default()
            },
            limits,
            media,
            web,
        };
        let client = self
            .kit
            .connect_as(im_streams::identities::Component::Gateway)
            .await;
        let state = AppState::new(config, client).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(im_gateway::serve(listener, state.clone()));
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.metrics.push(metrics.local_addr().unwrap());
        tokio::spawn(im_gateway::serve_metrics(metrics, state.clone()));
        self.gateways.push(addr);
        self.states.push(state);
        addr
    }

    /// Every event of `conv` in the log, read from IM_CONV itself.
    pub async fn log_of(&self, conv: &str) -> Vec<im_streams::codec::StoredEvent> {
        let subject = self.topology.conv_subject(conv).unwrap();
        im_streams::log::read_conv_events(&self.client, "IM_CONV", &subject, 1, usize::MAX)
            .await
            .unwrap()
    }

    pub async fn conv_messages(&self) -> u64 {
        im_testkit::stream_messages(&self.js, "IM_CONV").await
    }
}

pub fn token(user: &str) -> String {
    im_gateway::auth::issue_hs256(SECRET, user, 3600)
}

pub use im_client::Wire;

/// A test's WebSocket client: `im_client::Connection`, failing the test on
/// any error, with a queue of envelopes `recv_until` passed over.
pub struct Client {
    pub wire: Wire,
    /// Frames `recv_until` passed over, handed out by later reads first.
    skipped: std::collections::VecDeque<v1::Envelope>,
    conn: im_client::Connection,
}

/// Opens a WebSocket; `Err` carries the HTTP status of a refused upgrade
/// (or the close code of a close instead of `Connected`).
pub async fn try_connect(
    addr: std::net::SocketAddr,
    bearer: Option<&str>,
    wire: Wire,
    device: &str,
) -> Result<Client, u16> {
    let opts = im_client::ConnectOptions {
        url: format!("ws://{addr}"),
        token: bearer.map(Into::into),
        device_id: device.into(),
        wire,
        buffer_bytes: None,
        timeout: im_client::CONNECT_TIMEOUT,
    };
    match im_client::Connection::connect(&opts).await {
        Ok(conn) => Ok(Client {
            wire,
            skipped: Default::default(),
            conn,
        }),
        Err(im_client::ClientError::Refused(code)) => Err(code),
        Err(e) => panic!("connect: {e}"),
    }
}

pub async fn connect(addr: std::net::SocketAddr, user: &str, wire: Wire) -> Client {
    try_connect(addr, Some(&token(user)), wire, "d1")
        .await
        .unwrap()
}

impl Client {
    pub async fn send(&mut self, payload: Payload) {
        self.conn.send(payload).await.unwrap();
    }

    /// Reads raw frames until the connection ends: (frames read, close code).
    pub async fn drain(&mut self) -> (usize, Option<u16>) {
        self.conn.drain(Duration::from_secs(30)).await
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.conn.send_raw(msg).await.unwrap();
    }

    /// The next envelope, or `None` on close/timeout.
    pub async fn recv(&mut self) -> Option<v1::Envelope> {
        if let Some(env) = self.skipped.pop_front() {
            return Some(env);
        }
        self.recv_wire().await
    }

    /// The next envelope read within `wait` (earlier skipped ones first).
    pub async fn recv_within(&mut self, wait: Duration) -> Option<v1::Envelope> {
        if let Some(env) = self.skipped.pop_front() {
            return Some(env);
        }
        match self.conn.recv(wait).await {
            Ok(env) => env,
            Err(im_client::ClientError::Protocol(p)) => panic!("{p}"),
            Err(_) => None,
        }
    }

    async fn recv_wire(&mut self) -> Option<v1::Envelope> {
        match self.conn.recv(Duration::from_secs(10)).await {
            Ok(env) => env,
            Err(im_client::ClientError::Protocol(p)) => panic!("{p}"),
            Err(_) => None,
        }
    }

    /// The first envelope that matches, earlier skipped ones included;
    /// the others stay for later reads.
    pub async fn recv_until<T>(&mut self, mut pick: impl FnMut(&Payload) -> Option<T>) -> T {
        if let Some(pos) = self
            .skipped
            .iter()
            .position(|e| e.payload.as_ref().and_then(&mut pick).is_some())
        {
            let env = self.skipped.remove(pos).unwrap();
            return pick(env.payload.as_ref().unwrap()).unwrap();
        }
        loop {
            let env = self
                .recv_wire()
                .await
                .expect("connection open and answering");
            if let Some(t) = env.payload.as_ref().and_then(&mut pick) {
                return t;
            }
            self.skipped.push_back(env);
        }
    }

    /// The close frame's code, once the server closes.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.conn.recv(Duration::from_secs(20)).await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(im_client::ClientError::Closed(code)) => return code,
                Err(_) => return None,
            }
        }
    }
}

pub fn text_send_to(user: &str, cmid: &str, text: &str) -> Payload {
    Payload::Send(v1::SendMessage {
        to_user_id: user.into(),
        client_msg_id: cmid.into(),
        body: Some(v1::send_message::Body::Text(text.into())),
        ..Default::default()
    })
}

pub fn text_send_in(conv: &str, cmid: &str, text: &str) -> Payload {
    Payload::Send(v1::SendMessage {
        conversation_id: conv.into(),
        client_msg_id: cmid.into(),
        body: Some(v1::send_message::Body::Text(text.into())),
        ..Default::default()
    })
}

pub fn ack_of(p: &Payload) -> Option<v1::SendAck> {
    match p {
        Payload::SendAck(a) => Some(a.clone()),
        _ => None,
    }
}

pub fn deliver_of(p: &Payload) -> Option<v1::Deliver> {
    match p {
        Payload::Deliver(d) => Some(d.clone()),
        _ => None,
    }
}

pub fn receipt_of(p: &Payload) -> Option<v1::ReceiptUpdate> {
    match p {
        Payload::ReceiptUpdate(r) => Some(r.clone()),
        _ => None,
    }
}

pub fn error_of(p: &Payload) -> Option<v1::Error> {
    match p {
        Payload::Error(e) => Some(e.clone()),
        _ => None,
    }
}

/// `GET path` over plain HTTP/1.1; returns (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str, bearer: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {bearer}\r\nConnection: close\r\n\r\n");
    http_raw(addr, &req).await
}

/// A writer of the tests' own, for setup the HTTP API does not cover yet.
pub async fn appender(stack: &Stack) -> std::sync::Arc<im_streams::Appender> {
    stack.kit.appender().await
}

/// `POST path` with a JSON body over plain HTTP/1.1; returns (status, body).
pub async fn http_post(
    addr: std::net::SocketAddr,
    path: &str,
    bearer: &str,
    json: &str,
) -> (u16, String) {
    http_post_as(addr, path, bearer, json, None).await
}

/// `POST path` with an empty JSON body and an `Idempotency-Key`.
pub async fn http_post_with_key(
    addr: std::net::SocketAddr,
    path: &str,
    bearer: &str,
    key: &str,
) -> (u16, String) {
    http_post_as(addr, path, bearer, "{}", Some(key)).await
}

async fn http_post_as(
    addr: std::net::SocketAddr,
    path: &str,
    bearer: &str,
    json: &str,
    key: Option<&str>,
) -> (u16, String) {
    let key = key
        .map(|k| format!("Idempotency-Key: {k}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {bearer}\r\n{key}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    );
    http_raw(addr, &req).await
}

/// One raw HTTP/1.1 request (with `Connection: close`): (status, body).
pub async fn http_raw(addr: std::net::SocketAddr, request: &str) -> (u16, String) {
    let (status, _, body) = http_exchange(addr, request).await;
    (status, body)
}

/// One raw HTTP/1.1 request (with `Connection: close`): (status, the head
/// lower-cased, body).
pub async fn http_exchange(addr: std::net::SocketAddr, request: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    sock.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// A gateway process (the real binary): the process, its public address,
/// its `/metrics` address. SIGKILLed on drop.
pub struct Gateway(
    pub std::process::Child,
    pub std::net::SocketAddr,
    pub std::net::SocketAddr,
);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Gateway {
    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap()
    }
}

/// Limits as a JSON object of `Limits` fields, as the environment an
/// `im-gateway` process reads them from.
pub fn limits_env(limits_json: &str) -> Vec<(&'static str, String)> {
    let limits: Limits = serde_json::from_str(limits_json).expect("limits JSON");
    limits.to_env()
}

pub fn spawn_gateway(nats_url: &str, limits_json: &str) -> Gateway {
    spawn_gateway_env(nats_url, limits_json, &[])
}

/// A gateway process with more environment (media, say).
pub fn spawn_gateway_env(nats_url: &str, limits_json: &str, env: &[(&str, &str)]) -> Gateway {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_im-gateway"))
        .env("IM_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("IM_GATEWAY_METRICS_LISTEN", "127.0.0.1:0")
        .env("IM_NATS_URL", nats_url)
        .env("IM_JWT_HS256_SECRET", SECRET)
        .envs(limits_env(limits_json))
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn im-gateway");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().expect("a ready line").unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .parse()
        .unwrap();
    let metrics = line
        .split_once(" metrics http://")
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap_or_else(|| panic!("no metrics address in {line:?}"))
        .parse()
        .unwrap();
    std::thread::spawn(move || for _ in lines {});
    Gateway(child, addr, metrics)
}

/// Waits until the projector has applied `stream_seq` of `conv` in every
/// read model a client's sync, list or history uses.
pub async fn wait_projected(stack: &Stack, conv: &str, stream_seq: u64) {
    use im_schema::v1::{query_request::Query, query_response::Result as R};
    let js = async_nats::jetstream::new(stack.client.clone());
    let topo = im_streams::definitions::read_topology(&js).await.unwrap();
    let subject = format!("im.q.{}", topo.partition_of(conv));
    let queries = [
        Query::ConvList(v1::ConvListQuery {
            user_id: "nobody".into(),
            limit: 1,
            ..Default::default()
        }),
        Query::History(v1::HistoryQuery {
            conversation_id: conv.into(),
            limit: 1,
            ..Default::default()
        }),
        Query::Role(v1::RoleQuery {
            conversation_id: conv.into(),
            user_id: "nobody".into(),
        }),
    ];
    for q in queries {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let req = v1::QueryRequest {
                min_position: stream_seq,
                min_rcpt_position: 0,
                query: Some(q.clone()),
                after_delivered: false,
            };
            let reply = stack
                .client
                .request(subject.clone(), im_schema::encode(&req).into())
                .await
                .unwrap();
            let resp: v1::QueryResponse = im_schema::decode(&reply.payload).unwrap();
            match resp.result {
                Some(R::Error(e)) if e.code == v1::QueryErrorCode::NotYet as i32 => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "projector never reached {stream_seq}"
                    );
                }
                _ => break,
            }
        }
    }
}

/// One raw HTTP/1.1 exchange; `url` is absolute or a path on `addr`.
pub async fn exchange(
    addr: std::net::SocketAddr,
    method: &str,
    url: &str,
    bearer: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let (host, path) = match url.strip_prefix("http://") {
        Some(rest) => {
            let (h, p) = rest.split_once('/').unwrap();
            (h.to_string(), format!("/{p}"))
        }
        None => (addr.to_string(), url.to_string()),
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(&host).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(b) = bearer {
        head.push_str(&format!("Authorization: Bearer {b}\r\n"));
    }
    if !content_type.is_empty() {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    let _ = sock.read_to_end(&mut raw).await;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

/// `POST /v1/media/upload` of `bytes` declared as `mime`, as `user`.
pub async fn upload(
    addr: std::net::SocketAddr,
    user: &str,
    mime: &str,
    bytes: &[u8],
) -> (u16, Vec<u8>) {
    exchange(
        addr,
        "POST",
        "/v1/media/upload",
        Some(&token(user)),
        mime,
        bytes,
    )
    .await
}

pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

pub fn png(w: u32, h: u32, noise: bool) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let v = if noise {
            (x.wrapping_mul(7919) ^ y.wrapping_mul(104729)) as u8
        } else {
            (x + y) as u8
        };
        image::Rgb([v, v.wrapping_mul(3), v.wrapping_mul(7)])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}
