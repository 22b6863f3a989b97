//! The reading half of a connection's one loop: frames in, commands run
//! one at a time in arrival order, replies into the outbox; the loop also
//! drives the writer and the heartbeat window.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::StreamExt;
use im_schema::v1::{self, envelope::Payload};
use im_streams::ReceiptKind;

use super::close_frame;
use super::writer::{Stop, Writer};
use crate::cmd;
use crate::error::error_frame;
use crate::frames::{self, CLOSE_IDLE, CLOSE_TOO_LARGE};
use crate::outbox::{Outbound, Outbox};
use crate::rate::TokenBucket;
use crate::{AppState, Limits};

/// How a connection's loop ended.
pub enum End {
    /// The client fell behind (4008).
    Overflowed,
    /// The socket failed: nothing more can be sent.
    Gone,
    /// The client left, or is told why it must (the frame, sent after what
    /// is queued).
    Closed(Option<CloseFrame>),
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

/// RFC 6455's "going away": the server is shutting down.
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// The answer to a command still waiting when the gateway shuts down.
fn shutting_down(client_msg_id: &str) -> v1::Envelope {
    error_frame(
        v1::ErrorCode::Unavailable,
        "the gateway is shutting down: retry with the same client_msg_id",
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
pub struct Conn<'a> {
    state: &'a AppState,
    user: &'a str,
    device: &'a str,
    outbox: &'a Outbox,
    bucket: TokenBucket,
    queue: VecDeque<Queued>,
    limits: &'a Limits,
}

impl<'a> Conn<'a> {
    pub fn new(
        state: &'a AppState,
        user: &'a str,
        device: &'a str,
        outbox: &'a Arc<Outbox>,
    ) -> Self {
        let limits = &state.config.limits;
        Conn {
            state,
            user,
            device,
            outbox,
            bucket: TokenBucket::new(limits.sends_per_sec, limits.send_burst),
            queue: VecDeque::new(),
            limits,
        }
    }

    /// The connection's loop: reads frames, runs commands, writes what is
    /// queued, until the client leaves, falls behind or goes idle.
    pub async fn serve(
        &mut self,
        stream: &mut SplitStream<WebSocket>,
        sink: &mut SplitSink<WebSocket, Message>,
        writer: &mut Writer,
        conn_id: u64,
    ) -> End {
        let window = Duration::from_millis(self.limits.heartbeat_window_ms);
        let mut idle_at = tokio::time::Instant::now() + window;
        let mut running: Option<Running<'a>> = None;
        let mut shutdown = self.state.shutdown.subscribe();
        let mut closing = false;
        loop {
            if running.is_none() {
                running = self.queue.pop_front().map(|q| self.start(q));
            }
            if closing && running.is_none() {
                return End::Closed(Some(close_frame(
                    CLOSE_GOING_AWAY,
                    "the gateway is shutting down: reconnect".into(),
                )));
            }
            let outbox = self.outbox;
            tokio::select! {
                _ = shutdown.wait_for(|s| *s), if !closing => {
                    // The running command finishes and is answered; those
                    // still waiting are told to retry (with their ids).
                    closing = true;
                    for q in self.queue.drain(..) {
                        let id = client_msg_id_of(&q.env);
                        self.outbox.push(Outbound::reply(shutting_down(&id)));
                    }
                }
                stop = std::future::poll_fn(|cx| writer.poll(cx, sink, outbox, false)) => {
                    return match stop {
                        Stop::Overflowed => End::Overflowed,
                        Stop::Gone | Stop::Drained => End::Gone,
                    };
                }
                reply = async { running.as_mut().expect("guarded").await }, if running.is_some() => {
                    running = None;
                    if let Some(reply) = reply {
                        // An overflow is the writer's to report.
                        self.outbox.push(Outbound::reply(reply));
                    }
                }
                frame = stream.next(), if !closing => {
                    idle_at = tokio::time::Instant::now() + window;
                    let envelopes = match frame {
                        Some(Err(e)) if is_too_large(&e) => {
                            return End::Closed(Some(close_frame(
                                CLOSE_TOO_LARGE,
                                format!("a frame is at most {} bytes", self.limits.frame_bytes_max),
                            )));
                        }
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return End::Closed(None),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Binary(bytes))) => {
                            frames::decode_binary(&bytes, self.limits.envelopes_per_frame_max)
                        }
                        Some(Ok(Message::Text(text))) => {
                            frames::decode_text(text.as_str()).map(|e| vec![e])
                        }
                    };
                    self.admit_all(envelopes);
                }
                _ = tokio::time::sleep_until(idle_at) => {
                    let idle = error_frame(
                        v1::ErrorCode::BadRequest,
                        "idle past the heartbeat window",
                        "",
                    );
                    self.outbox.push(Outbound::reply(idle));
                    tracing::debug!(user = self.user, conn_id, code = CLOSE_IDLE, "idle connection closed");
                    return End::Closed(Some(close_frame(CLOSE_IDLE, "idle past the heartbeat window".into())));
                }
            }
        }
    }

    /// Queues a frame's commands, answering at once what cannot wait (an
    /// overflow of the outbox is the writer's to report).
    fn admit_all(&mut self, envelopes: Result<Vec<v1::Envelope>, String>) {
        let envelopes = match envelopes {
            Ok(envs) => envs,
            // Malformed input: a clear error, nothing appended, the
            // connection stays.
            Err(reason) => {
                let bad = error_frame(v1::ErrorCode::BadRequest, reason, "");
                self.outbox.push(Outbound::reply(bad));
                return;
            }
        };
        for env in envelopes {
            if let Some(answer) = self.admit(env) {
                self.outbox.push(Outbound::reply(answer));
            }
        }
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
            Some(Payload::Send(_)) if !self.state.user_rates.take(self.user) => {
                return Some(error_frame(
                    v1::ErrorCode::RateLimited,
                    "send rate exceeded for this user (all devices)",
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
            let reply = outcome.unwrap_or_else(|()| {
                tracing::warn!(user, client_msg_id = cmid, "command timed out");
                Some(timed_out(bound, &cmid))
            });
            if let Some(code) = reply.as_ref().and_then(refusal_code) {
                state.metrics.rejected(code);
            }
            reply
        })
    }
}

/// A reply's refusal, as counted: an Error frame's code, a refused send's
/// rule (the reason's stable name, before its colon).
fn refusal_code(reply: &v1::Envelope) -> Option<&str> {
    match reply.payload.as_ref()? {
        Payload::Error(e) => Some(
            v1::ErrorCode::try_from(e.code).map_or("ERROR_CODE_UNSPECIFIED", |c| c.as_str_name()),
        ),
        Payload::SendAck(a) if a.status == v1::AckStatus::Rejected as i32 => {
            Some(a.reason.split(':').next().unwrap_or(""))
        }
        _ => None,
    }
}

/// Runs one client envelope; the reply to queue, if any.
async fn handle(
    state: &AppState,
    user: &str,
    device: &str,
    env: v1::Envelope,
) -> Option<v1::Envelope> {
    let trace_id = crate::cmd::trace_id(env.header.as_ref().map(|h| h.trace_id.as_str()));
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
