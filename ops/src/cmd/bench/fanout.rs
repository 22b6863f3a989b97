//! `fanout`: one group of `members` connected members, a sender sending at a
//! steady rate → deliveries/s at the members' WebSockets and the p99 of
//! send→deliver. The stack runs with the fan-out threshold at the group's
//! size, so that every member gets the whole event, not a notification.
//!
//! Baseline: core NATS fan-out of the same payloads (the projector's
//! `Deliver` envelope, same size) at the same rate from one publisher to
//! `members` plain subscriptions of one subject on one connection (as the
//! gateway holds one NATS connection), on the same server.

use std::time::{Duration, Instant};

use futures::StreamExt;
use im_schema::v1::{self, conv_event::Kind, envelope::Payload, message_sent::Body};

use super::ingest::{stamp_of_deliver, stamped_text};
use super::stack::{self, Stack, Ws};
use super::{bench_limits, bounded, create_group, ms, percentile, Figures, Size, StackOptions};

/// A receiver that hears nothing for this long has all it will get.
const IDLE: Duration = Duration::from_secs(5);

/// Handshakes in flight while connecting the members.
const CONNECTS_INFLIGHT_MAX: usize = 64;

const RAW_SUBJECT: &str = "bench.fanout";

/// What one member saw.
#[derive(Default)]
struct Heard {
    count: u64,
    latency_us: Vec<u64>,
    last: Option<Instant>,
    closed: bool,
}

#[derive(Default)]
struct Totals {
    count: u64,
    latency_us: Vec<u64>,
    last: Option<Instant>,
    closed: u64,
}

impl Totals {
    fn add(&mut self, h: Heard) {
        self.count += h.count;
        self.latency_us.extend(h.latency_us);
        self.last = self.last.max(h.last);
        self.closed += u64::from(h.closed);
    }
}

fn heard(h: &mut Heard, epoch: Instant, sent_us: Option<u64>) {
    if let Some(sent_us) = sent_us {
        let now = Instant::now();
        h.count += 1;
        h.latency_us
            .push((now.duration_since(epoch).as_micros() as u64).saturating_sub(sent_us));
        h.last = Some(now);
    }
}

async fn member(ws: Ws, epoch: Instant, expected: u64) -> Heard {
    let (_sink, mut stream) = ws.split();
    let mut h = Heard::default();
    while h.count < expected {
        match tokio::time::timeout(IDLE, stream.next()).await {
            Ok(Some(Ok(msg))) => {
                for env in stack::decode(&msg) {
                    if let Some(Payload::Deliver(d)) = env.payload {
                        heard(&mut h, epoch, stamp_of_deliver(d));
                    }
                }
            }
            Ok(Some(Err(_)) | None) => {
                h.closed = true;
                break;
            }
            Err(_) => break,
        }
    }
    h
}

/// The figures of one side.
struct Side {
    deliveries_per_s: f64,
    p99_us: f64,
    delivered: u64,
    closed: u64,
}

fn side(mut t: Totals, start: Instant) -> Side {
    let secs = t
        .last
        .map_or(0.0, |l| l.duration_since(start).as_secs_f64());
    Side {
        deliveries_per_s: if secs > 0.0 {
            t.count as f64 / secs
        } else {
            0.0
        },
        p99_us: percentile(&mut t.latency_us, 99.0),
        delivered: t.count,
        closed: t.closed,
    }
}

async fn ours(stack: &Stack, size: &Size, messages: u64) -> anyhow::Result<Side> {
    let client = stack.nats().await?;
    let appender = super::appender(&client).await?;
    let members: Vec<String> = (0..size.members).map(|i| format!("f{i}")).collect();
    create_group(&appender, "fan", &members[0], &members).await?;
    let connects = members.iter().map(|m| stack.connect(m, "bench")).collect();
    let conns: Vec<Ws> = bounded(connects, CONNECTS_INFLIGHT_MAX)
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let sender = stack.connect(&members[0], "sender").await?;
    let epoch = Instant::now();
    let listening: Vec<_> = conns
        .into_iter()
        .map(|ws| tokio::spawn(member(ws, epoch, messages)))
        .collect();
    let (mut sink, mut acks) = sender.split();
    // Acks are drained, not waited for: the rate is the sender's schedule.
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
    let pace = Duration::from_secs_f64(1.0 / size.fanout_rate as f64);
    let start = Instant::now();
    for n in 0..messages {
        tokio::time::sleep_until((start + pace * n as u32).into()).await;
        let stamp = stamped_text(epoch.elapsed().as_micros());
        stack::send_on(&mut sink, stack::send("fan", format!("m{n}"), stamp)).await?;
    }
    let stored = draining.await?;
    anyhow::ensure!(stored == messages, "{stored} of {messages} sends stored");
    let mut totals = Totals::default();
    for l in listening {
        totals.add(l.await?);
    }
    Ok(side(totals, start))
}

async fn raw(stack: &Stack, size: &Size, messages: u64) -> anyhow::Result<Side> {
    let subscriber = stack.nats().await?;
    let publisher = stack.nats().await?;
    let epoch = Instant::now();
    let mut listening = Vec::new();
    for _ in 0..size.members {
        let mut sub = subscriber.subscribe(RAW_SUBJECT).await?;
        listening.push(tokio::spawn(async move {
            let mut h = Heard::default();
            while h.count < messages {
                match tokio::time::timeout(IDLE, sub.next()).await {
                    Ok(Some(msg)) => {
                        let sent = im_schema::decode::<v1::Envelope>(&msg.payload)
                            .ok()
                            .and_then(|e| match e.payload {
                                Some(Payload::Deliver(d)) => stamp_of_deliver(d),
                                _ => None,
                            });
                        heard(&mut h, epoch, sent);
                    }
                    Ok(None) => {
                        h.closed = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            h
        }));
    }
    subscriber.flush().await?;
    let pace = Duration::from_secs_f64(1.0 / size.fanout_rate as f64);
    let start = Instant::now();
    for n in 0..messages {
        tokio::time::sleep_until((start + pace * n as u32).into()).await;
        // What the projector publishes for a stored message.
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
                        body: Some(Body::Text(stamped_text(epoch.elapsed().as_micros()))),
                        meta: Default::default(),
                    })),
                }),
            })),
        };
        publisher
            .publish(RAW_SUBJECT, im_schema::encode(&env).into())
            .await?;
    }
    publisher.flush().await?;
    let mut totals = Totals::default();
    for l in listening {
        totals.add(l.await?);
    }
    Ok(side(totals, start))
}

pub async fn run(size: &Size) -> anyhow::Result<Figures> {
    let fit = super::raise_fd_limit(size.members + 1)?;
    anyhow::ensure!(
        fit > size.members,
        "the open-file limit leaves room for {fit} members"
    );
    let stack = Stack::start(StackOptions {
        limits: bench_limits(size.members + 1),
        fanout_threshold: size.members,
    })
    .await?;
    let messages = size.fanout_rate * size.measure.as_secs();
    let expected = messages * size.members as u64;
    let raw = raw(&stack, size, messages).await?;
    eprintln!(
        "fanout: raw {:.0} deliveries/s, p99 {:.2} ms, {} of {expected} delivered",
        raw.deliveries_per_s,
        ms(raw.p99_us),
        raw.delivered
    );
    let ours = ours(&stack, size, messages).await?;
    eprintln!(
        "fanout: ours {:.0} deliveries/s, p99 {:.2} ms, {} of {expected} delivered, {} members closed as too slow",
        ours.deliveries_per_s,
        ms(ours.p99_us),
        ours.delivered,
        ours.closed
    );
    stack.stop().await;
    let mut f = Figures::default();
    f.add(
        "fanout_offered_per_s",
        (size.fanout_rate * size.members as u64) as f64,
    );
    f.add("deliveries_per_s", ours.deliveries_per_s);
    f.add("fanout_p99_ms", ms(ours.p99_us));
    f.add("fanout_raw_per_s", raw.deliveries_per_s);
    f.add("fanout_raw_p99_ms", ms(raw.p99_us));
    f.add("fanout_ratio", ours.deliveries_per_s / raw.deliveries_per_s);
    Ok(f)
}
