//! The dispatcher's own NATS connection: connects to any server of the
//! list, subscribes what the routes hold, routes what arrives, and starts
//! over (every subscription again) when the connection is lost.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::ServerAddr;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::handshake::{handshake, Credentials};
use super::wire::{self, ServerOp};
use super::{Command, Routed, Routes};

/// How long connecting plus the CONNECT/PING/PONG handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between two rounds of the server list, doubled up to the max: a
/// gateway whose NATS is gone retries for as long as it runs (it can
/// deliver nothing else), without hammering.
const RECONNECT_PAUSE_MIN: Duration = Duration::from_millis(100);
const RECONNECT_PAUSE_MAX: Duration = Duration::from_secs(2);

/// A PING every this long; two unanswered ones mean the connection is dead
/// (a half-open TCP connection would otherwise go unnoticed).
const KEEPALIVE: Duration = Duration::from_secs(10);
const KEEPALIVE_UNANSWERED_MAX: u32 = 2;

/// Largest delivery taken (nats-server's default `max_payload` is 1 MiB;
/// a delivery is at most one event, far below).
pub const PAYLOAD_MAX: usize = 1024 * 1024;

/// Read chunk: one read takes many deliveries at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Commands written in one go (one write for a burst of joins).
const COMMANDS_PER_WRITE: usize = 1024;

/// How long one write may take: a server that reads nothing for this long
/// (a half-open connection, a full buffer) is given up on.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes the write buffer keeps between writes (a burst's worth).
const WRITE_BUFFER_KEPT: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    #[error("server error: {0}")]
    Server(String),
    #[error("handshake: {what}")]
    Handshake {
        what: &'static str,
        #[source]
        source: Option<im_streams::error::BoxError>,
    },
    #[error("no PONG to {KEEPALIVE_UNANSWERED_MAX} PINGs")]
    Stale,
    #[error("the handshake took over {HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout,
    #[error("a write took over {WRITE_TIMEOUT:?}")]
    WriteTimeout,
}

/// Who waits for the answer to a PING.
enum Pong {
    /// A connect, for its user's subscription to be live.
    Join(oneshot::Sender<()>),
    /// The connection's keepalive.
    Keepalive,
    /// Every subscription made again after a reconnect: the devices are
    /// told that deliveries may have been missed meanwhile.
    Resubscribed,
}

/// PINGs sent and not yet answered, in order.
type Pongs = VecDeque<Pong>;

pub(super) async fn run(
    servers: Vec<ServerAddr>,
    credentials: Credentials,
    routes: Arc<Routes>,
    mut commands: mpsc::Receiver<Command>,
) {
    let mut pongs = Pongs::new();
    let mut pause = RECONNECT_PAUSE_MIN;
    let mut first = true;
    loop {
        for server in &servers {
            let session = Session {
                routes: &routes,
                commands: &mut commands,
                pongs: &mut pongs,
                // Devices to tell to sync: none before the first connection.
                again: !std::mem::take(&mut first),
            };
            let outcome = session.run(server, &credentials).await;
            if routes.set_connected(false) {
                // It was up: the next round starts with the shortest pause.
                pause = RECONNECT_PAUSE_MIN;
            }
            match outcome {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(server = %server.host(), port = server.port(), error = %e, "delivery connection lost: reconnecting");
                }
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RECONNECT_PAUSE_MAX);
    }
}

struct Session<'a> {
    routes: &'a Routes,
    commands: &'a mut mpsc::Receiver<Command>,
    pongs: &'a mut Pongs,
    /// Not the first connection: deliveries may have been missed.
    again: bool,
}

impl Session<'_> {
    /// One connection's life; Ok when the dispatcher is gone.
    async fn run(
        mut self,
        server: &ServerAddr,
        credentials: &Credentials,
    ) -> Result<(), SessionError> {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut stream =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(server, credentials, &mut buf))
                .await
                .map_err(|_| SessionError::HandshakeTimeout)??;
        tracing::info!(server = %server.host(), port = server.port(), "delivery connection up");
        // Every subscription again, then a PING again for each join still
        // waiting (its PING went to the old connection), then one whose
        // PONG tells the devices to sync.
        let mut out = self.routes.subscriptions();
        // Only joins still waiting: one that gave up (its bound passed) has
        // closed its end, and keeping it would grow the queue with every
        // reconnect to a server that never answers.
        self.pongs
            .retain(|p| matches!(p, Pong::Join(waiter) if !waiter.is_closed()));
        for _ in 0..self.pongs.len() {
            out.extend_from_slice(wire::PING);
        }
        if self.again {
            self.pongs.push_back(Pong::Resubscribed);
            out.extend_from_slice(wire::PING);
        }
        self.routes.set_connected(true);
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        // A late tick (a slow write, a busy box) is not two missed PONGs.
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.reset();
        let mut unanswered = 0;
        loop {
            if !out.is_empty() {
                tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&out))
                    .await
                    .map_err(|_| SessionError::WriteTimeout)??;
                out.clear();
                // After a reconnect's every-SUB burst: back to a small buffer.
                out.shrink_to(WRITE_BUFFER_KEPT);
            }
            tokio::select! {
                read = stream.read_buf(&mut buf) => {
                    if read? == 0 {
                        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                    }
                    while let Some(op) = wire::parse(&mut buf, PAYLOAD_MAX)? {
                        self.on_op(op, &mut out, &mut unanswered)?;
                    }
                    buf.reserve(READ_CHUNK.saturating_sub(buf.capacity() - buf.len()));
                }
                command = self.commands.recv() => {
                    let Some(command) = command else { return Ok(()) };
                    self.write(command, &mut out);
                    while out.len() < COMMANDS_PER_WRITE * 32 {
                        let Ok(command) = self.commands.try_recv() else { break };
                        self.write(command, &mut out);
                    }
                }
                _ = keepalive.tick() => {
                    if unanswered >= KEEPALIVE_UNANSWERED_MAX {
                        return Err(SessionError::Stale);
                    }
                    unanswered += 1;
                    self.pongs.push_back(Pong::Keepalive);
                    out.extend_from_slice(wire::PING);
                }
            }
        }
    }

    /// One operation from the server; an error ends the session.
    fn on_op(
        &mut self,
        op: ServerOp,
        out: &mut Vec<u8>,
        unanswered: &mut u32,
    ) -> Result<(), SessionError> {
        match op {
            ServerOp::Msg {
                subject,
                sid,
                payload,
            } => {
                if self.routes.route(&subject, sid, payload, out) == Routed::Stale {
                    // A subscription no route owns (its UNSUB was lost in a
                    // full queue, or overtaken): ended on first sight, so a
                    // device never gets a delivery twice.
                    wire::unsub_line(out, sid);
                }
            }
            ServerOp::Ping => out.extend_from_slice(wire::PONG),
            ServerOp::Pong => {
                *unanswered = 0;
                match self.pongs.pop_front() {
                    Some(Pong::Join(waiter)) => drop(waiter.send(())),
                    Some(Pong::Resubscribed) => self.routes.resubscribed(),
                    Some(Pong::Keepalive) | None => {}
                }
            }
            ServerOp::Err(e) if wire::closes_connection(&e) => return Err(SessionError::Server(e)),
            ServerOp::Err(e) => {
                tracing::warn!(error = %e, "the delivery connection's server refused something")
            }
            ServerOp::Info(_) | ServerOp::Ok => {}
        }
        Ok(())
    }

    fn write(&mut self, command: Command, out: &mut Vec<u8>) {
        match command {
            Command::Sub { subject, sid } => wire::sub_line(out, &subject, sid),
            Command::Unsub(sid) => wire::unsub_line(out, sid),
            Command::Ping(waiter) => {
                self.pongs.push_back(Pong::Join(waiter));
                out.extend_from_slice(wire::PING);
            }
        }
    }
}
