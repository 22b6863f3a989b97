//! `/v1/ws`: authenticate at the upgrade, then one task per connection: a
//! loop that reads frames and runs commands (`conn`) and writes what the
//! connection's outbox holds (`writer`); deliveries reach the outbox
//! through the gateway's dispatcher.

mod conn;
mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use im_schema::v1::{self, envelope::Payload};

use crate::cmd;
use crate::dispatch::JoinError;
use crate::frames::{Codec, CLOSE_RESYNC, JSON_SUBPROTOCOL, PROTO_SUBPROTOCOL};
use crate::http::ApiError;
use crate::outbox::{Outbound, Outbox};
use crate::AppState;
pub use conn::timed_out;
use conn::{Conn, End};
use v1::ErrorCode as C;
use writer::{Stop, Writer};

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// How long closing may wait on a client that does not read.
const CLOSE_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a client that fell behind has to read what was already on its
/// way and then the 4008 that tells it to resync (the queue behind them is
/// dropped): a client paused for a few seconds (a phone waking, a busy
/// tab) still learns why. Bounded: the connection's socket and buffers are
/// held meanwhile, under `connections_max`.
const RESYNC_CLOSE_LINGER: Duration = Duration::from_secs(10);

/// RFC 6455's "try again later", for a connect the gateway cannot serve now.
const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// `device_id` and `access_token`; anything else is refused, so that a
/// misspelt name is an error rather than the default device.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsQuery {
    access_token: Option<String>,
    device_id: Option<String>,
}

fn bearer(headers: &HeaderMap, query: &WsQuery) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::http::bearer_token)
        .map(str::to_string)
        .or_else(|| query.access_token.clone())
}

pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    // Refused before the upgrade: nothing is allocated for a bad token.
    let Some(token) = bearer(&headers, &query) else {
        return ApiError(C::Unauthorized, "missing bearer token".into()).into_response();
    };
    let user = match state.verifier.verify(&token).await {
        Ok(user) => user,
        Err(e) => return ApiError(C::Unauthorized, e.to_string()).into_response(),
    };
    let device = query.device_id.clone().unwrap_or_else(|| "default".into());
    if let Err(e) = im_streams::ids::validate_id(im_streams::ids::IdKind::Device, &device) {
        return ApiError(C::BadRequest, e.to_string()).into_response();
    }
    let limits = &state.config.limits;
    if state.connections.load(Ordering::SeqCst) >= limits.connections_max {
        return ApiError(C::Unavailable, "gateway full".into()).into_response();
    }
    // Counted from here to the connection's end (`ConnGuard`); a refused
    // or failed upgrade gives it back at once.
    let ip = crate::rate::client_key(peer.ip());
    if !state.addresses.try_add(ip, limits.connections_per_ip_max) {
        let message = "too many connections from this address".into();
        return ApiError(C::RateLimited, message).into_response();
    }
    let address = AddressGuard(state.clone(), ip);
    // The subprotocol is chosen by `protocols` (the first the client offered
    // that we speak); none offered means protobuf.
    let ws = ws.protocols([PROTO_SUBPROTOCOL, JSON_SUBPROTOCOL]);
    let codec = match ws.selected_protocol().and_then(|p| p.to_str().ok()) {
        Some(JSON_SUBPROTOCOL) => Codec::Json,
        _ => Codec::Proto,
    };
    ws.read_buffer_size(limits.ws_read_buffer_bytes)
        .write_buffer_size(limits.ws_write_buffer_bytes)
        .max_message_size(limits.frame_bytes_max)
        .max_frame_size(limits.frame_bytes_max)
        // The guard is run's own argument: wrapping run in an async block
        // that held it would keep the block's captures beside run's future,
        // some 750 bytes more per connection (measured).
        .on_upgrade(move |socket| run(state, socket, user, device, codec, address))
}

/// Gives an address's connection back when the connection (or the upgrade
/// that would have made it) ends.
struct AddressGuard(Arc<AppState>, std::net::IpAddr);

impl Drop for AddressGuard {
    fn drop(&mut self) {
        self.0.addresses.remove(self.1);
    }
}

struct ConnGuard<'a>(&'a AppState, &'a str, u64);

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.0.dispatcher.leave(self.1, self.2);
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn run(
    state: Arc<AppState>,
    socket: WebSocket,
    user: String,
    device: String,
    codec: Codec,
    _address: AddressGuard,
) {
    let limits = &state.config.limits;
    let conn_id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
    state.connections.fetch_add(1, Ordering::SeqCst);
    let outbox = Arc::new(Outbox::new(limits.outbound_queue_max));
    let (mut sink, mut stream) = socket.split();
    let _guard = ConnGuard(&state, &user, conn_id);
    // The first frame: deliveries are subscribed when the client gets it,
    // and none comes before it.
    let connected = Outbound::reply(cmd::reply(Payload::Connected(v1::Connected {
        user_id: user.clone(),
        device_id: device.clone(),
        server_time_ms: cmd::heartbeat::now_ms(),
    })));
    let joined = state.dispatcher.join(
        &user,
        (conn_id, &device),
        outbox.clone(),
        limits.connections_per_user_max,
        connected,
    );
    if let Err(e) = joined.await {
        let code = match e {
            JoinError::TooManyDevices(_) | JoinError::BadUser(_) => 1008,
            JoinError::Busy | JoinError::Unavailable => CLOSE_TRY_AGAIN_LATER,
        };
        close(&mut sink, code, e.to_string()).await;
        return;
    }
    tracing::debug!(user, device, conn_id, "connected");
    let _presence = crate::presence::connected(&state, &user);
    let mut writer = Writer::new(
        codec,
        limits.envelopes_per_frame_max,
        limits.frame_bytes_max,
        state.metrics.delivery.clone(),
    );
    let mut conn = Conn::new(&state, &user, &device, &outbox);
    let end = conn
        .serve(&mut stream, &mut sink, &mut writer, conn_id)
        .await;
    state.dispatcher.leave(&user, conn_id);
    match end {
        End::Overflowed => {
            state.metrics.queue_drops.inc();
            tracing::info!(conn_id, "outbound queue full: closing with 4008 (resync)");
            drop(outbox);
            resync_close(&mut sink, &mut stream).await;
        }
        End::Gone => {}
        End::Closed(frame) => {
            // What is queued goes out first, then the reason, if any.
            let flush = async {
                let drained = std::future::poll_fn(|cx| writer.poll(cx, &mut sink, &outbox, true));
                let frame = match drained.await {
                    Stop::Drained => frame,
                    Stop::Overflowed => Some(close_frame(
                        CLOSE_RESYNC,
                        "outbound queue full: resync".into(),
                    )),
                    Stop::Gone => return,
                };
                match frame {
                    Some(frame) => drop(sink.send(Message::Close(Some(frame))).await),
                    None => drop(sink.flush().await),
                }
            };
            let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, flush).await;
        }
    }
}

fn close_frame(code: u16, reason: String) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

/// Tells a client that fell behind to resync: the 4008 goes right after
/// what the socket already holds (nothing queued behind it is sent), and
/// the client's own close is awaited, its frames discarded, so the socket
/// closes cleanly (a reset would make the client lose what it has not read
/// yet, the 4008 included). All within `RESYNC_CLOSE_LINGER`.
async fn resync_close(
    sink: &mut SplitSink<WebSocket, Message>,
    stream: &mut futures::stream::SplitStream<WebSocket>,
) {
    let frame = Message::Close(Some(close_frame(
        CLOSE_RESYNC,
        "outbound queue full: resync".into(),
    )));
    let linger = async {
        if sink.send(frame).await.is_err() {
            return;
        }
        // Bounded by the linger: each frame read is within the size limit.
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(RESYNC_CLOSE_LINGER, linger).await;
}

async fn close(sink: &mut SplitSink<WebSocket, Message>, code: u16, reason: String) {
    let frame = Message::Close(Some(close_frame(code, reason)));
    let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, sink.send(frame)).await;
}
