//! `/v1/ws`: authenticate at the upgrade, then one reader loop (frames in,
//! commands run, replies queued) and one writer task (the bounded outbound
//! queue out). Deliveries join the same queue through the hub.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::stream::SplitStream;
use futures::{SinkExt, StreamExt};
use im_schema::v1::{self, envelope::Payload};
use im_streams::ReceiptKind;
use tokio::sync::{mpsc, Notify};

use crate::cmd;
use crate::error::error_frame;
use crate::frames::{
    self, Codec, CLOSE_IDLE, CLOSE_RESYNC, CLOSE_TOO_LARGE, JSON_SUBPROTOCOL, PROTO_SUBPROTOCOL,
};
use crate::hub::Device;
use crate::{AppState, Limits};

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// How long closing may wait on a client that does not read.
const CLOSE_SEND_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(serde::Deserialize)]
pub struct WsQuery {
    access_token: Option<String>,
    device_id: Option<String>,
}

fn bearer(headers: &HeaderMap, query: &WsQuery) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string)
        .or_else(|| query.access_token.clone())
}

pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    // Refused before the upgrade: nothing is allocated for a bad token.
    let Some(token) = bearer(&headers, &query) else {
        return (StatusCode::UNAUTHORIZED, "missing bearer token").into_response();
    };
    let user = match state.verifier.verify(&token) {
        Ok(user) => user,
        Err(e) => return (StatusCode::UNAUTHORIZED, e.to_string()).into_response(),
    };
    let device = query.device_id.clone().unwrap_or_else(|| "default".into());
    if let Err(e) = im_streams::ids::validate_id(im_streams::ids::IdKind::Device, &device) {
        return (StatusCode::BAD_REQUEST, e.to_string()).into_response();
    }
    let limits = &state.config.limits;
    if state.connections.load(Ordering::SeqCst) >= limits.connections_max {
        return (StatusCode::SERVICE_UNAVAILABLE, "gateway full").into_response();
    }
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
        .on_upgrade(move |socket| run(state, socket, user, device, codec))
}

/// Send rate per connection.
struct TokenBucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl TokenBucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct ConnGuard<'a>(&'a AppState, &'a str, u64);

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.0.hub.leave(self.1, self.2);
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn run(state: Arc<AppState>, socket: WebSocket, user: String, device: String, codec: Codec) {
    let limits = state.config.limits.clone();
    let conn_id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
    state.connections.fetch_add(1, Ordering::SeqCst);
    let (tx, mut rx) = mpsc::channel::<Arc<v1::Envelope>>(limits.outbound_queue_max);
    let overflowed = Arc::new((AtomicBool::new(false), Notify::new()));
    let dev = Device {
        outbound: tx,
        overflowed: overflowed.clone(),
    };
    let (mut sink, mut stream) = socket.split();
    let _guard = ConnGuard(&state, &user, conn_id);
    // The first frame: deliveries are subscribed when the client gets it,
    // and none comes before it.
    let connected = Arc::new(cmd::reply(Payload::Connected(v1::Connected {
        user_id: user.clone(),
        device_id: device.clone(),
        server_time_ms: cmd::heartbeat::now_ms(),
    })));
    if let Err(e) = state
        .hub
        .join(
            &user,
            conn_id,
            dev.clone(),
            limits.connections_per_user_max,
            connected,
        )
        .await
    {
        let frame = CloseFrame {
            code: 1008,
            reason: e.to_string().into(),
        };
        let _ = sink.send(Message::Close(Some(frame))).await;
        return;
    }
    tracing::debug!(user, device, conn_id, "connected");
    // Why the reader ended, when the client is to be told (sent once the
    // queue is flushed).
    let ending: Arc<Mutex<Option<CloseFrame>>> = Arc::default();
    let reason = ending.clone();
    let writer = tokio::spawn(async move {
        loop {
            let overflow = overflowed.1.notified();
            tokio::pin!(overflow);
            overflow.as_mut().enable();
            if overflowed.0.load(Ordering::SeqCst) {
                break;
            }
            let Some(env) = (tokio::select! {
                next = rx.recv() => next,
                _ = &mut overflow => break,
            }) else {
                // The reader is done and everything queued is sent.
                let frame = reason.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(frame) = frame {
                    let close = sink.send(Message::Close(Some(frame)));
                    let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, close).await;
                }
                return;
            };
            // A client that stops reading blocks this send: the overflow
            // signal abandons it.
            tokio::select! {
                sent = sink.send(frames::encode(codec, &env)) => if sent.is_err() { return },
                _ = &mut overflow => break,
            }
        }
        // Too slow to drain its queue: close and let it resync (bounded: a
        // client that reads nothing will not take the close frame either).
        tracing::info!(conn_id, "outbound queue full: closing with 4008 (resync)");
        let frame = CloseFrame {
            code: CLOSE_RESYNC,
            reason: "outbound queue full: resync".into(),
        };
        let _ =
            tokio::time::timeout(CLOSE_SEND_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
    });
    let mut conn = Conn {
        state: &state,
        user: &user,
        device: &device,
        dev: &dev,
        bucket: TokenBucket {
            tokens: f64::from(limits.send_burst),
            last: Instant::now(),
            rate: f64::from(limits.sends_per_sec),
            burst: f64::from(limits.send_burst),
        },
        queue: VecDeque::new(),
        limits: &limits,
    };
    let end = conn.serve(&mut stream, &writer, conn_id).await;
    *ending.lock().unwrap_or_else(|e| e.into_inner()) = end;
    // Let the writer flush what is queued (or send the resync close), then
    // make sure it is gone: a task blocked on a dead client holds memory.
    state.hub.leave(&user, conn_id);
    drop(dev);
    let abort = writer.abort_handle();
    if tokio::time::timeout(CLOSE_SEND_TIMEOUT, writer)
        .await
        .is_err()
    {
        abort.abort();
    }
}

fn close_frame(code: u16, reason: String) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

/// Whether a read failed on a message or frame over the size limit.
fn is_too_large(e: &axum::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<tungstenite::Error>())
        .is_some_and(|t| matches!(t, tungstenite::Error::Capacity(_)))
}

/// The id a command's answer must carry, so the client can match it.
fn client_msg_id_of(env: &v1::Envelope) -> String {
    match &env.payload {
        Some(Payload::Send(s)) => s.client_msg_id.clone(),
        _ => String::new(),
    }
}

/// The answer to a command that found no outcome within the bound.
pub fn timed_out(bound: Duration, client_msg_id: &str) -> v1::Envelope {
    error_frame(
        v1::ErrorCode::Timeout,
        format!(
            "no outcome within {} ms; it may or may not be stored: retry with the same client_msg_id",
            bound.as_millis()
        ),
        client_msg_id,
    )
}

/// A command read from the connection, waiting for its turn.
struct Queued {
    arrived: Instant,
    env: v1::Envelope,
}

type Running<'a> = Pin<Box<dyn Future<Output = Option<v1::Envelope>> + Send + 'a>>;

/// One connection's reading side. Frames are read as they come, so a client
/// always hears back even when it sends faster than commands complete:
/// commands run one at a time in arrival order (a device's sends keep their
/// order), each answered within `command_timeout_ms` of its arrival, and
/// past `commands_queued_max` waiting ones a command is refused at once.
struct Conn<'a> {
    state: &'a AppState,
    user: &'a str,
    device: &'a str,
    dev: &'a Device,
    bucket: TokenBucket,
    queue: VecDeque<Queued>,
    limits: &'a Limits,
}

impl<'a> Conn<'a> {
    async fn serve(
        &mut self,
        stream: &mut SplitStream<WebSocket>,
        writer: &tokio::task::JoinHandle<()>,
        conn_id: u64,
    ) -> Option<CloseFrame> {
        let window = Duration::from_millis(self.limits.heartbeat_window_ms);
        let mut idle_at = tokio::time::Instant::now() + window;
        let mut running: Option<Running<'a>> = None;
        loop {
            if running.is_none() {
                running = self.queue.pop_front().map(|q| self.start(q));
            }
            let overflow = self.dev.overflowed.1.notified();
            tokio::pin!(overflow);
            overflow.as_mut().enable();
            if self.dev.has_overflowed() || writer.is_finished() {
                break;
            }
            tokio::select! {
                reply = async { running.as_mut().expect("guarded").await }, if running.is_some() => {
                    running = None;
                    if let Some(reply) = reply {
                        if !self.dev.push(Arc::new(reply)) {
                            break;
                        }
                    }
                }
                frame = stream.next() => {
                    idle_at = tokio::time::Instant::now() + window;
                    let envelopes = match frame {
                        Some(Err(e)) if is_too_large(&e) => {
                            return Some(close_frame(
                                CLOSE_TOO_LARGE,
                                format!("a frame is at most {} bytes", self.limits.frame_bytes_max),
                            ));
                        }
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Binary(bytes))) => {
                            frames::decode_binary(&bytes, self.limits.envelopes_per_frame_max)
                        }
                        Some(Ok(Message::Text(text))) => {
                            frames::decode_text(text.as_str()).map(|e| vec![e])
                        }
                    };
                    if !self.admit_all(envelopes) {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(idle_at) => {
                    let idle = error_frame(
                        v1::ErrorCode::BadRequest,
                        "idle past the heartbeat window",
                        "",
                    );
                    self.dev.push(Arc::new(idle));
                    tracing::debug!(user = self.user, conn_id, code = CLOSE_IDLE, "idle connection closed");
                    return Some(close_frame(CLOSE_IDLE, "idle past the heartbeat window".into()));
                }
                _ = &mut overflow => break,
            }
        }
        None
    }

    /// Queues a frame's commands, answering at once what cannot wait;
    /// false when the connection must end (its outbound queue is full).
    fn admit_all(&mut self, envelopes: Result<Vec<v1::Envelope>, String>) -> bool {
        let envelopes = match envelopes {
            Ok(envs) => envs,
            // Malformed input: a clear error, nothing appended, the
            // connection stays.
            Err(reason) => {
                return self
                    .dev
                    .push(Arc::new(error_frame(v1::ErrorCode::BadRequest, reason, "")))
            }
        };
        for env in envelopes {
            if let Some(answer) = self.admit(env) {
                if !self.dev.push(Arc::new(answer)) {
                    return false;
                }
            }
        }
        true
    }

    /// Queues one command, or answers it at once: heartbeats (liveness
    /// never waits behind work), and what the rate or the queue bound
    /// refuses.
    fn admit(&mut self, env: v1::Envelope) -> Option<v1::Envelope> {
        let cmid = client_msg_id_of(&env);
        match &env.payload {
            Some(Payload::Heartbeat(h)) => return Some(cmd::heartbeat::run(*h)),
            Some(Payload::Send(_)) if !self.bucket.take() => {
                return Some(error_frame(
                    v1::ErrorCode::RateLimited,
                    "send rate exceeded",
                    &cmid,
                ))
            }
            _ => {}
        }
        if self.queue.len() >= self.limits.commands_queued_max {
            return Some(error_frame(
                v1::ErrorCode::RateLimited,
                format!(
                    "{} commands already wait on this connection: wait for their answers, then retry with the same client_msg_id",
                    self.limits.commands_queued_max
                ),
                &cmid,
            ));
        }
        self.queue.push_back(Queued {
            arrived: Instant::now(),
            env,
        });
        None
    }

    /// Runs a queued command within what is left of its bound.
    fn start(&self, q: Queued) -> Running<'a> {
        let bound = Duration::from_millis(self.limits.command_timeout_ms);
        let (state, user, device) = (self.state, self.user, self.device);
        let cmid = client_msg_id_of(&q.env);
        Box::pin(async move {
            let left = bound.saturating_sub(q.arrived.elapsed());
            let outcome = if left.is_zero() {
                Err(())
            } else {
                tokio::time::timeout(left, handle(state, user, device, q.env))
                    .await
                    .map_err(|_| ())
            };
            outcome.unwrap_or_else(|()| {
                tracing::warn!(user, client_msg_id = cmid, "command timed out");
                Some(timed_out(bound, &cmid))
            })
        })
    }
}

/// Runs one client envelope; the reply to queue, if any.
async fn handle(
    state: &AppState,
    user: &str,
    device: &str,
    env: v1::Envelope,
) -> Option<v1::Envelope> {
    let trace_id = env
        .header
        .as_ref()
        .map(|h| h.trace_id.clone())
        .unwrap_or_default();
    match env.payload {
        Some(Payload::Send(send)) => Some(cmd::send::run(state, user, send, &trace_id).await),
        Some(Payload::DeliveryAck(a)) => {
            let dev_id = if a.device_id.is_empty() {
                device.to_string()
            } else {
                a.device_id.clone()
            };
            cmd::receipt::run(
                state,
                user,
                &dev_id,
                &a.conversation_id,
                ReceiptKind::Delivered,
                a.up_to_seq,
                &trace_id,
            )
            .await
        }
        Some(Payload::Read(r)) => {
            cmd::receipt::run(
                state,
                user,
                device,
                &r.conversation_id,
                ReceiptKind::Read,
                r.up_to_seq,
                &trace_id,
            )
            .await
        }
        Some(Payload::Typing(t)) => cmd::typing::run(state, user, t).await,
        Some(Payload::Heartbeat(h)) => Some(cmd::heartbeat::run(h)),
        Some(Payload::Sync(req)) => Some(cmd::sync::run(state, user, req).await),
        Some(_) | None => Some(error_frame(
            v1::ErrorCode::BadRequest,
            "not a client command",
            "",
        )),
    }
}
