//! `fanout`: the capacity of delivery into one group of `members`
//! connected members. A sender sends `fanout_messages` messages as fast as
//! the members drain them (at most `WINDOW` messages ahead of what all of
//! them received, so no member's queue overflows) → deliveries/s at the
//! members' WebSockets, and the p99 of send→deliver under that load. The
//! stack runs with the default fan-out threshold (500), so the group is a
//! large one: each event is published once on its group subject and the
//! gateway hands the same bytes to every member connected there.
//!
//! Baseline, same run, same clients: a bare WebSocket broadcast — a
//! minimal tokio-tungstenite server in this process pushing the same bytes
//! (the projector's `Deliver` envelope, one per binary frame, several
//! frames per write) to as many connections, with the same window.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use im_schema::v1::{self, conv_event::Kind, envelope::Payload, message_sent::Body};
use prost::Message as _;
use tokio_tungstenite::tungstenite::{protocol::WebSocketConfig, Message};

use super::ingest::{stamp_of_deliver, stamped_text};
use super::stack::{self, Stack, Ws};
use super::{bench_limits, bounded, create_group, ms, percentile, Figures, Size, StackOptions};

/// A receiver that hears nothing for this long has all it will get.
const IDLE: Duration = Duration::from_secs(10);

/// Handshakes in flight while connecting the members.
const CONNECTS_INFLIGHT_MAX: usize = 64;

/// Messages the sender may be ahead of what every member received: enough
/// to keep the pipe full, far below the gateway's outbound queue (256).
const WINDOW: u64 = 32;

/// What the members heard: each one's count (the window follows the
/// slowest), and how many were closed.
struct Heard {
    each: Vec<AtomicU64>,
    closed: AtomicU64,
}

impl Heard {
    fn new(members: usize) -> Arc<Self> {
        Arc::new(Heard {
            each: (0..members).map(|_| AtomicU64::new(0)).collect(),
            closed: AtomicU64::new(0),
        })
    }

    fn slowest(&self) -> u64 {
        self.each.iter().map(|c| c.load(Relaxed)).min().unwrap_or(0)
    }

    fn delivered(&self) -> u64 {
        self.each.iter().map(|c| c.load(Relaxed)).sum()
    }
}

/// What one member saw.
#[derive(Default)]
struct Seen {
    latency_us: Vec<u64>,
    last: Option<Instant>,
}

async fn member(ws: Ws, epoch: Instant, expected: u64, heard: Arc<Heard>, me: usize) -> Seen {
    let (_sink, mut stream) = ws.split();
    let mut seen = Seen::default();
    let mut count = 0;
    while count < expected {
        match tokio::time::timeout(IDLE, stream.next()).await {
            Ok(Some(Ok(msg))) => {
                for env in stack::decode(&msg) {
                    let Some(Payload::Deliver(d)) = env.payload else {
                        continue;
                    };
                    let Some(sent_us) = stamp_of_deliver(d) else {
                        continue;
                    };
                    let now = Instant::now();
                    let at = now.duration_since(epoch).as_micros() as u64;
                    seen.latency_us.push(at.saturating_sub(sent_us));
                    seen.last = Some(now);
                    count += 1;
                    heard.each[me].fetch_add(1, Relaxed);
                }
            }
            Ok(Some(Err(_)) | None) => {
                heard.closed.fetch_add(1, Relaxed);
                break;
            }
            Err(_) => break,
        }
    }
    seen
}

/// The figures of one side.
struct Side {
    deliveries_per_s: f64,
    p99_us: f64,
    delivered: u64,
    closed: u64,
}

/// Starts the members' readers; returns what they will report.
fn listen(
    conns: Vec<Ws>,
    epoch: Instant,
    messages: u64,
    heard: &Arc<Heard>,
) -> Vec<tokio::task::JoinHandle<Seen>> {
    conns
        .into_iter()
        .enumerate()
        .map(|(me, ws)| tokio::spawn(member(ws, epoch, messages, heard.clone(), me)))
        .collect()
}

/// Waits until sending message `n` keeps the sender within `WINDOW` of
/// what the slowest member received.
async fn within_window(heard: &Heard, n: u64) {
    let needed = n.saturating_sub(WINDOW);
    while heard.slowest() < needed && heard.closed.load(Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn collect(
    listening: Vec<tokio::task::JoinHandle<Seen>>,
    heard: &Heard,
    start: Instant,
) -> anyhow::Result<Side> {
    let mut latency = Vec::new();
    let mut last = None;
    for l in listening {
        let seen = l.await?;
        latency.extend(seen.latency_us);
        last = last.max(seen.last);
    }
    let secs = last.map_or(0.0, |l: Instant| l.duration_since(start).as_secs_f64());
    let delivered = heard.delivered();
    Ok(Side {
        deliveries_per_s: if secs > 0.0 {
            delivered as f64 / secs
        } else {
            0.0
        },
        p99_us: percentile(&mut latency, 99.0),
        delivered,
        closed: heard.closed.load(Relaxed),
    })
}

async fn ours(stack: &Stack, size: &Size) -> anyhow::Result<Side> {
    let messages = size.fanout_messages;
    let client = stack.nats().await?;
    let appender = super::appender(&client).await?;
    let members: Vec<String> = (0..size.members).map(|i| format!("f{i}")).collect();
    create_group(&appender, "fan", &members[0], &members).await?;
    // Projected before the members connect: each joins the group's
    // subject at its connect (none waits for a notification).
    super::probe::wait_caught_up(&client).await?;
    let connects = members.iter().map(|m| stack.connect(m, "bench")).collect();
    let conns: Vec<Ws> = bounded(connects, CONNECTS_INFLIGHT_MAX)
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let sender = stack.connect(&members[0], "sender").await?;
    let epoch = Instant::now();
    let heard = Heard::new(conns.len());
    let listening = listen(conns, epoch, messages, &heard);
    let (mut sink, mut acks) = sender.split();
    let draining = tokio::spawn(async move {
        let mut stored = 0u64;
        while stored < messages {
            let Ok(Some(Ok(msg))) = tokio::time::timeout(IDLE, acks.next()).await else {
                break;
            };
            for env in stack::decode(&msg) {
                if let Some(Payload::SendAck(a)) = env.payload {
                    stored += u64::from(a.status() == v1::AckStatus::Stored);
                }
            }
        }
        stored
    });
    let start = Instant::now();
    for n in 0..messages {
        within_window(&heard, n).await;
        let stamp = stamped_text(epoch.elapsed().as_micros());
        stack::send_on(&mut sink, stack::send("fan", format!("m{n}"), stamp)).await?;
    }
    let stored = draining.await?;
    anyhow::ensure!(stored == messages, "{stored} of {messages} sends stored");
    collect(listening, &heard, start).await
}

/// The projector's envelope for message `n` (the bytes our members get).
fn deliver_bytes(n: u64, stamp: String) -> Bytes {
    let env = v1::Envelope {
        header: None,
        payload: Some(Payload::Deliver(v1::Deliver {
            conversation_id: "fan".into(),
            conv_seq: n + 2,
            stream_seq: n + 2,
            event_type: "message_sent".into(),
            event: Some(v1::ConvEvent {
                conversation_id: "fan".into(),
                conv_seq: n + 2,
                actor: "f0".into(),
                at_ms: 1_700_000_000_000,
                prev_hash: vec![7; 32],
                client_msg_id: format!("m{n}"),
                schema_version: im_schema::SCHEMA_VERSION,
                kind: Some(Kind::MessageSent(v1::MessageSent {
                    sealed: None,
                    body: Some(Body::Text(stamp)),
                    meta: Default::default(),
                })),
            }),
            ..Default::default()
        })),
    };
    env.encode_length_delimited_to_vec().into()
}

/// One connection of the bare broadcast: every message as a frame, what is
/// queued written together.
async fn bare_conn(tcp: tokio::net::TcpStream, mut rx: tokio::sync::broadcast::Receiver<Bytes>) {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await else {
        return;
    };
    // The sender's window keeps every connection within the channel's
    // capacity: a lag would be a bug of the bench, and ends the connection.
    while let Ok(bytes) = rx.recv().await {
        if ws.feed(Message::Binary(bytes)).await.is_err() {
            return;
        }
        while let Ok(more) = rx.try_recv() {
            if ws.feed(Message::Binary(more)).await.is_err() {
                return;
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

async fn bare(size: &Size) -> anyhow::Result<Side> {
    let messages = size.fanout_messages;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, _) = tokio::sync::broadcast::channel::<Bytes>(2 * WINDOW as usize);
    let subscribe = tx.clone();
    let members = size.members;
    let server = tokio::spawn(async move {
        for _ in 0..members {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(bare_conn(tcp, subscribe.subscribe()));
        }
    });
    let connects = (0..members)
        .map(|_| async move {
            let config = WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(4096);
            let url = format!("ws://{addr}/");
            let (ws, _) =
                tokio_tungstenite::connect_async_with_config(url, Some(config), true).await?;
            anyhow::Ok(ws)
        })
        .collect();
    let conns: Vec<Ws> = bounded(connects, CONNECTS_INFLIGHT_MAX)
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    server.await?;
    while tx.receiver_count() < members {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let epoch = Instant::now();
    let heard = Heard::new(conns.len());
    let listening = listen(conns, epoch, messages, &heard);
    let start = Instant::now();
    for n in 0..messages {
        within_window(&heard, n).await;
        let _ = tx.send(deliver_bytes(n, stamped_text(epoch.elapsed().as_micros())));
    }
    collect(listening, &heard, start).await
}

pub async fn run(size: &Size) -> anyhow::Result<Figures> {
    let fit = super::raise_fd_limit(2 * size.members + 1)?;
    anyhow::ensure!(
        fit > 2 * size.members,
        "the open-file limit leaves room for {fit} connections"
    );
    let expected = size.fanout_messages * size.members as u64;
    let bare = bare(size).await?;
    eprintln!(
        "fanout: bare broadcast {:.0} deliveries/s, p99 {:.2} ms, {} of {expected} delivered",
        bare.deliveries_per_s,
        ms(bare.p99_us),
        bare.delivered
    );
    let stack = Stack::start(StackOptions {
        limits: bench_limits(size.members + 1),
        fanout_threshold: im_projectors::DEFAULT_FANOUT_THRESHOLD,
        encrypt: false,
    })
    .await?;
    let ours = ours(&stack, size).await?;
    eprintln!(
        "fanout: ours {:.0} deliveries/s, p99 {:.2} ms, {} of {expected} delivered, {} members closed as too slow",
        ours.deliveries_per_s,
        ms(ours.p99_us),
        ours.delivered,
        ours.closed
    );
    stack.stop().await;
    anyhow::ensure!(
        ours.delivered == expected && bare.delivered == expected,
        "delivered {} (ours) and {} (bare) of {expected}",
        ours.delivered,
        bare.delivered
    );
    let mut f = Figures::default();
    f.add("deliveries_per_s", ours.deliveries_per_s);
    f.add("fanout_p99_ms", ms(ours.p99_us));
    f.add("fanout_bare_per_s", bare.deliveries_per_s);
    f.add("fanout_bare_p99_ms", ms(bare.p99_us));
    f.add(
        "fanout_ratio",
        ours.deliveries_per_s / bare.deliveries_per_s,
    );
    Ok(f)
}
