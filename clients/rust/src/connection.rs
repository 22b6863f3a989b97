//! One WebSocket to a gateway, past its `Connected` frame.

use std::collections::VecDeque;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use im_schema::v1::{self, envelope::Payload};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::{decode_frame, encode_frame, ClientError, Wire};

/// The WebSocket stream under a connection.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long the handshake and the `Connected` frame may take by default.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// The gateway: `ws://host:port` (or `http://`, taken as the same).
    pub url: String,
    /// A bearer token; none tests the refusal.
    pub token: Option<String>,
    pub device_id: String,
    pub wire: Wire,
    /// tungstenite's read and write buffers; `None`: its defaults (128 KiB).
    /// Thousands of idle clients in one process (`imctl bench`) want less.
    pub buffer_bytes: Option<usize>,
    /// How long the handshake and the `Connected` frame may take.
    pub timeout: Duration,
}

impl ConnectOptions {
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        ConnectOptions {
            url: url.into(),
            token: Some(token.into()),
            device_id: "d1".into(),
            wire: Wire::Proto,
            buffer_bytes: None,
            timeout: CONNECT_TIMEOUT,
        }
    }

    pub fn device(mut self, device: &str) -> Self {
        self.device_id = device.into();
        self
    }

    pub fn wire(mut self, wire: Wire) -> Self {
        self.wire = wire;
        self
    }
}

pub struct Connection {
    pub wire: Wire,
    pub user_id: String,
    /// The rest of a frame that carried several envelopes, in order.
    unread: VecDeque<v1::Envelope>,
    ws: Ws,
}

impl Connection {
    /// Opens the WebSocket and reads up to `Connected`. A refused upgrade,
    /// or a close instead of `Connected`, is `Refused` with the status or
    /// close code.
    pub async fn connect(opts: &ConnectOptions) -> Result<Connection, ClientError> {
        tokio::time::timeout(opts.timeout, Self::open(opts))
            .await
            .map_err(|_| ClientError::Timeout(opts.timeout))?
    }

    async fn open(opts: &ConnectOptions) -> Result<Connection, ClientError> {
        let base = opts.url.replacen("http", "ws", 1);
        let mut req = format!("{base}/v1/ws?device_id={}", opts.device_id).into_client_request()?;
        let headers = req.headers_mut();
        headers.insert(
            "sec-websocket-protocol",
            opts.wire.subprotocol().parse().expect("a header value"),
        );
        if let Some(t) = &opts.token {
            let value = format!("Bearer {t}")
                .parse()
                .map_err(tungstenite::Error::from)?;
            headers.insert("authorization", value);
        }
        let config = opts.buffer_bytes.map(|b| {
            WebSocketConfig::default()
                .read_buffer_size(b)
                .write_buffer_size(b)
        });
        let ws = match tokio_tungstenite::connect_async_with_config(req, config, true).await {
            Ok((ws, _)) => ws,
            Err(tungstenite::Error::Http(resp)) => {
                return Err(ClientError::Refused(resp.status().as_u16()))
            }
            Err(e) => return Err(e.into()),
        };
        let mut conn = Connection {
            wire: opts.wire,
            user_id: String::new(),
            unread: VecDeque::new(),
            ws,
        };
        match conn.next_envelope().await {
            Ok(Some(v1::Envelope {
                payload: Some(Payload::Connected(c)),
                ..
            })) => {
                conn.user_id = c.user_id;
                Ok(conn)
            }
            Ok(other) => Err(ClientError::Protocol(format!(
                "the first frame is Connected, not {other:?}"
            ))),
            Err(ClientError::Closed(code)) => Err(ClientError::Refused(code.unwrap_or(0))),
            Err(e) => Err(e),
        }
    }

    pub async fn send(&mut self, payload: Payload) -> Result<(), ClientError> {
        Ok(self.ws.send(encode_frame(self.wire, payload)).await?)
    }

    /// A frame as it is (malformed ones, to test the server).
    pub async fn send_raw(&mut self, msg: Message) -> Result<(), ClientError> {
        Ok(self.ws.send(msg).await?)
    }

    /// The next envelope; `Ok(None)` when nothing came within `wait`,
    /// `Closed` once the connection ended.
    pub async fn recv(&mut self, wait: Duration) -> Result<Option<v1::Envelope>, ClientError> {
        match tokio::time::timeout(wait, self.next_envelope()).await {
            Ok(r) => r,
            Err(_) => Ok(None),
        }
    }

    async fn next_envelope(&mut self) -> Result<Option<v1::Envelope>, ClientError> {
        if let Some(env) = self.unread.pop_front() {
            return Ok(Some(env));
        }
        loop {
            let msg = match self.ws.next().await {
                None => return Err(ClientError::Closed(None)),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(msg)) => msg,
            };
            match (&msg, self.wire) {
                (Message::Close(frame), _) => {
                    return Err(ClientError::Closed(
                        frame.as_ref().map(|f| u16::from(f.code)),
                    ))
                }
                // Each client gets frames in the form it asked for.
                (Message::Binary(_), Wire::Json) | (Message::Text(_), Wire::Proto) => {
                    return Err(ClientError::Protocol(format!(
                        "a {} frame on a {:?} connection",
                        if msg.is_binary() { "binary" } else { "text" },
                        self.wire
                    )))
                }
                _ => {}
            }
            let mut envs = decode_frame(&msg)?.into_iter();
            if let Some(first) = envs.next() {
                self.unread.extend(envs);
                return Ok(Some(first));
            }
        }
    }

    /// Reads until the server closes: (frames read, its close code).
    pub async fn drain(&mut self, wait: Duration) -> (usize, Option<u16>) {
        let mut frames = 0;
        loop {
            match tokio::time::timeout(wait, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(f)))) => return (frames, f.map(|f| u16::from(f.code))),
                Ok(Some(Ok(_))) => frames += 1,
                _ => return (frames, None),
            }
        }
    }

    /// The raw stream, for callers that drive frames themselves (`imctl
    /// bench`), and the envelopes already read from it.
    pub fn into_parts(self) -> (Ws, Vec<v1::Envelope>) {
        (self.ws, self.unread.into())
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
