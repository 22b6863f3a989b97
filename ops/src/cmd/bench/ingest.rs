//! `ingest`: WebSocket clients, each sending into its own few conversations
//! and waiting for each `SendAck` before the next send (one command in
//! flight per connection, as the gateway runs a connection's commands in
//! order) → STORED acks/s and ack latency.
//!
//! Baseline: the same number of concurrent writers publishing to JetStream
//! directly with async-nats, with the same payload bytes and headers
//! (`Nats-Expected-Last-Subject-Sequence`, `Nats-Msg-Id`, the `Im-*` ones),
//! one publish in flight each, into a scratch stream configured like
//! IM_CONV, on the same server.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use im_schema::v1::{self, envelope::Payload};

use super::stack::{self, Stack, Ws};
use super::{bench_limits, create_group, ms, percentile, Figures, Size, StackOptions};

/// Conversations each sender rotates over: many conversations, as the
/// issue asks, so that no single subject's CAS serialises the load.
pub const CONVS_PER_SENDER: usize = 4;

/// Events each conversation of the long-history phase holds before it is
/// measured: past the writers' recent index, so every new id is checked
/// against the Bloom filter of older ones.
pub const HISTORY_EVENTS: usize = im_streams::seen::RECENT_COMMANDS_MAX + 88;

/// Index lookups timed (what a send costs when its id must be asked about).
const LOOKUP_SAMPLES: usize = 2_000;

/// Bytes of each message's text: a typical chat line.
pub const TEXT_BYTES: usize = 64;

/// The scratch stream of the raw baseline.
const RAW_STREAM: &str = "BENCH_RAW";

/// When a sender's phases happen.
#[derive(Clone, Copy)]
pub struct Plan {
    /// Sends before this are warm-up: not counted.
    pub measure_from: Instant,
    pub until: Instant,
    /// Open-loop pacing: one send per `pace` (or as fast as acks come).
    pub pace: Option<Duration>,
    /// Texts carry the send time in µs since this instant, for receivers.
    pub epoch: Instant,
}

#[derive(Default)]
pub struct Sent {
    pub acks: u64,
    pub ack_us: Vec<u64>,
}

/// A text of `TEXT_BYTES` that starts with the send time (µs).
pub fn stamped_text(sent_us: u128) -> String {
    let mut text = format!("{sent_us} ");
    while text.len() < TEXT_BYTES {
        text.push('x');
    }
    text
}

/// The send time a `stamped_text` carries.
pub fn stamp_of(text: &str) -> Option<u64> {
    text.split(' ').next()?.parse().ok()
}

/// The send time a delivered message event carries.
pub fn stamp_of_deliver(d: v1::Deliver) -> Option<u64> {
    match d.event?.kind? {
        v1::conv_event::Kind::MessageSent(v1::MessageSent {
            body: Some(v1::message_sent::Body::Text(t)),
            ..
        }) => stamp_of(&t),
        _ => None,
    }
}

/// One client's send loop: send, wait for its ack, repeat until the plan
/// ends. Anything but STORED is an error: the bench measures successes.
pub async fn send_loop(
    ws: Ws,
    convs: Vec<String>,
    tag: String,
    plan: Plan,
) -> anyhow::Result<Sent> {
    let (mut sink, mut stream) = ws.split();
    let mut sent = Sent::default();
    let mut next_at = Instant::now();
    for n in 0u64.. {
        if let Some(pace) = plan.pace {
            tokio::time::sleep_until(next_at.into()).await;
            next_at += pace;
        }
        let t0 = Instant::now();
        if t0 >= plan.until {
            break;
        }
        let conv = &convs[n as usize % convs.len()];
        let cmid = format!("{tag}-{n}");
        stack::send_on(
            &mut sink,
            stack::send(
                conv,
                cmid.clone(),
                stamped_text(t0.duration_since(plan.epoch).as_micros()),
            ),
        )
        .await?;
        'ack: loop {
            let msg = stream
                .next()
                .await
                .context("connection closed while waiting for an ack")??;
            for env in stack::decode(&msg) {
                match env.payload {
                    Some(Payload::SendAck(ack)) if ack.client_msg_id == cmid => {
                        anyhow::ensure!(
                            ack.status() == v1::AckStatus::Stored,
                            "send {cmid}: {:?} {}",
                            ack.status(),
                            ack.reason
                        );
                        break 'ack;
                    }
                    Some(Payload::Error(e)) => anyhow::bail!("send {cmid}: {}", e.message),
                    _ => {}
                }
            }
        }
        if t0 >= plan.measure_from {
            sent.acks += 1;
            sent.ack_us.push(t0.elapsed().as_micros() as u64);
        }
    }
    Ok(sent)
}

/// Senders `s<i>`, each connected, each a member of its own conversations
/// with one peer `r<i>` (who may or may not be connected).
pub async fn senders(
    stack: &Stack,
    count: usize,
    run: &str,
) -> anyhow::Result<Vec<(Ws, Vec<String>)>> {
    let client = stack.nats().await?;
    let appender = super::appender(&client).await?;
    let mut out = Vec::new();
    for i in 0..count {
        let (sender, peer) = (format!("s{i}"), format!("r{i}"));
        let mut convs = Vec::new();
        for k in 0..CONVS_PER_SENDER {
            let conv = format!("{run}-{i}-{k}");
            create_group(&appender, &conv, &sender, &[sender.clone(), peer.clone()]).await?;
            convs.push(conv);
        }
        out.push((stack.connect(&sender, "bench").await?, convs));
    }
    Ok(out)
}

/// Senders as `senders` makes them, each with one conversation that
/// already holds `HISTORY_EVENTS` events from its peer.
async fn senders_with_history(
    stack: &Stack,
    count: usize,
    run: &str,
) -> anyhow::Result<Vec<(Ws, Vec<String>)>> {
    let client = stack.nats().await?;
    let appender = super::appender(&client).await?;
    let mut seeding = Vec::new();
    for i in 0..count {
        let (sender, peer, conv) = (format!("s{i}"), format!("r{i}"), format!("{run}-{i}"));
        create_group(&appender, &conv, &sender, &[sender.clone(), peer.clone()]).await?;
        let appender = appender.clone();
        seeding.push(tokio::spawn(async move {
            for n in 0..HISTORY_EVENTS {
                let cmd = im_streams::Command {
                    actor: peer.clone(),
                    client_msg_id: format!("seed-{n}"),
                    action: im_streams::Action::Send {
                        peer: None,
                        body: im_streams::MessageBody::Text(stamped_text(0)),
                        meta: Default::default(),
                    },
                };
                appender.execute(&conv, &cmd, "").await?;
            }
            anyhow::Ok(conv)
        }));
    }
    let mut out = Vec::new();
    for (i, seeded) in seeding.into_iter().enumerate() {
        let conv = seeded.await??;
        out.push((stack.connect(&format!("s{i}"), "bench").await?, vec![conv]));
    }
    Ok(out)
}

/// Ingest into conversations with a history past the recent index.
async fn measure_history(stack: &Stack, size: &Size, clients: usize) -> anyhow::Result<Ingest> {
    let senders = senders_with_history(stack, clients, "hist").await?;
    measure_senders(senders, size, "hist").await
}

/// (p50, p99) µs of asking the `dedupe` projection about an id: what a send
/// whose id the writer cannot rule out pays on top.
async fn index_lookup_us(stack: &Stack) -> anyhow::Result<(f64, f64)> {
    let client = stack.nats().await?;
    let js = async_nats::jetstream::new(client.clone());
    let topology = im_streams::definitions::read_topology(&js).await?;
    let mut us = Vec::with_capacity(LOOKUP_SAMPLES);
    for i in 0..LOOKUP_SAMPLES {
        let t0 = Instant::now();
        im_streams::dedupe_index::lookup(
            &client,
            topology,
            "hist-0",
            "nobody",
            &format!("x{i}"),
            1,
        )
        .await?;
        us.push(t0.elapsed().as_micros() as u64);
    }
    Ok((percentile(&mut us, 50.0), percentile(&mut us, 99.0)))
}

/// Runs every sender with the plan; the total acks and all latencies.
pub async fn drive(senders: Vec<(Ws, Vec<String>)>, tag: &str, plan: Plan) -> anyhow::Result<Sent> {
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, (ws, convs))| tokio::spawn(send_loop(ws, convs, format!("{tag}{i}"), plan)))
        .collect();
    gather(tasks).await
}

/// The senders' results, added up.
async fn gather(tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Sent>>>) -> anyhow::Result<Sent> {
    let mut all = Sent::default();
    for t in tasks {
        let s = t.await??;
        all.acks += s.acks;
        all.ack_us.extend(s.ack_us);
    }
    Ok(all)
}

/// What the ingest measurement found.
pub struct Ingest {
    pub acks_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Our side: `clients` senders as fast as their acks come.
pub async fn measure(
    stack: &Stack,
    size: &Size,
    clients: usize,
    run: &str,
) -> anyhow::Result<Ingest> {
    let senders = senders(stack, clients, run).await?;
    measure_senders(senders, size, run).await
}

/// Runs the senders as fast as their acks come, warm-up first.
async fn measure_senders(
    senders: Vec<(Ws, Vec<String>)>,
    size: &Size,
    tag: &str,
) -> anyhow::Result<Ingest> {
    let start = Instant::now();
    let plan = Plan {
        measure_from: start + size.warmup,
        until: start + size.warmup + size.measure,
        pace: None,
        epoch: start,
    };
    let mut sent = drive(senders, tag, plan).await?;
    Ok(Ingest {
        acks_per_s: sent.acks as f64 / size.measure.as_secs_f64(),
        p50_us: percentile(&mut sent.ack_us, 50.0),
        p99_us: percentile(&mut sent.ack_us, 99.0),
    })
}

/// The raw baseline: `writers` tasks on one connection (as the gateway has
/// one), each publishing into its own subjects with CAS and a msg id.
pub async fn measure_raw(stack: &Stack, size: &Size, writers: usize) -> anyhow::Result<Ingest> {
    let client = stack.nats().await?;
    let js = async_nats::jetstream::new(client);
    let mut conv_config = js
        .get_stream(im_streams::definitions::CONV_STREAM)
        .await?
        .info()
        .await?
        .config
        .clone();
    conv_config.name = RAW_STREAM.into();
    conv_config.subjects = vec!["bench.raw.>".into()];
    conv_config.deny_delete = false;
    conv_config.deny_purge = false;
    conv_config.metadata = Default::default();
    js.create_stream(conv_config)
        .await
        .context("creating the raw stream")?;
    // A stored event as the append path makes it: the same bytes and headers.
    let event = v1::ConvEvent {
        conversation_id: "raw-0-0".into(),
        conv_seq: 1,
        actor: "s0".into(),
        at_ms: 1_700_000_000_000,
        prev_hash: vec![7; 32],
        client_msg_id: "raw0-0".into(),
        schema_version: im_schema::SCHEMA_VERSION,
        kind: Some(v1::conv_event::Kind::MessageSent(v1::MessageSent {
            body: Some(v1::message_sent::Body::Text(stamped_text(0))),
            meta: Default::default(),
        })),
    };
    let payload = Bytes::from(im_schema::encode(&event));
    let headers = im_streams::codec::conv_headers(&event, "bench", "raw-writer");
    let start = Instant::now();
    let (measure_from, until) = (start + size.warmup, start + size.warmup + size.measure);
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (js, payload, headers) = (js.clone(), payload.clone(), headers.clone());
            tokio::spawn(async move {
                let subjects: Vec<String> = (0..CONVS_PER_SENDER)
                    .map(|k| format!("bench.raw.{w}.{k}"))
                    .collect();
                let mut last = vec![0u64; subjects.len()];
                let mut sent = Sent::default();
                for n in 0u64.. {
                    let t0 = Instant::now();
                    if t0 >= until {
                        break;
                    }
                    let k = n as usize % subjects.len();
                    let publish = async_nats::jetstream::message::PublishMessage::build()
                        .payload(payload.clone())
                        .headers(headers.clone())
                        .message_id(format!("s{w}:raw{w}-{n}"))
                        .expected_last_subject_sequence(last[k]);
                    let ack = js.send_publish(subjects[k].clone(), publish).await?.await?;
                    last[k] = ack.sequence;
                    if t0 >= measure_from {
                        sent.acks += 1;
                        sent.ack_us.push(t0.elapsed().as_micros() as u64);
                    }
                }
                anyhow::Ok(sent)
            })
        })
        .collect();
    let mut all = gather(tasks).await?;
    js.delete_stream(RAW_STREAM).await?;
    Ok(Ingest {
        acks_per_s: all.acks as f64 / size.measure.as_secs_f64(),
        p50_us: percentile(&mut all.ack_us, 50.0),
        p99_us: percentile(&mut all.ack_us, 99.0),
    })
}

pub async fn run(size: &Size) -> anyhow::Result<Figures> {
    let stack = Stack::start(StackOptions {
        limits: bench_limits(size.clients),
        fanout_threshold: im_projectors::DEFAULT_FANOUT_THRESHOLD,
    })
    .await?;
    let raw = measure_raw(&stack, size, size.clients).await?;
    eprintln!(
        "ingest: raw {:.0}/s p50 {:.2} ms p99 {:.2} ms ({} writers)",
        raw.acks_per_s,
        ms(raw.p50_us),
        ms(raw.p99_us),
        size.clients
    );
    let ours = measure(&stack, size, size.clients, "ing").await?;
    eprintln!(
        "ingest: ours {:.0}/s p50 {:.2} ms p99 {:.2} ms ({} websocket clients)",
        ours.acks_per_s,
        ms(ours.p50_us),
        ms(ours.p99_us),
        size.clients
    );
    let history = measure_history(&stack, size, size.clients).await?;
    let lookups = stack
        .gateway_counter("im_gateway_index_lookups_total")
        .await?;
    eprintln!(
        "ingest: ours, {HISTORY_EVENTS} events of history per conversation, {:.0}/s p50 {:.2} ms p99 {:.2} ms; the writer asked the dedupe index about {lookups} of the new ids (Bloom false positives)",
        history.acks_per_s,
        ms(history.p50_us),
        ms(history.p99_us),
    );
    let (lookup_p50, lookup_p99) = index_lookup_us(&stack).await?;
    eprintln!(
        "ingest: a dedupe index lookup p50 {:.3} ms p99 {:.3} ms",
        ms(lookup_p50),
        ms(lookup_p99)
    );
    stack.stop().await;
    let mut f = Figures::default();
    f.add("ingest_acks_per_s", ours.acks_per_s);
    f.add("ingest_history_acks_per_s", history.acks_per_s);
    f.add("ingest_history_ack_p50_ms", ms(history.p50_us));
    f.add("ingest_history_ack_p99_ms", ms(history.p99_us));
    f.add("index_lookup_p50_ms", ms(lookup_p50));
    f.add("index_lookup_p99_ms", ms(lookup_p99));
    f.add("ingest_ack_p50_ms", ms(ours.p50_us));
    f.add("ingest_ack_p99_ms", ms(ours.p99_us));
    f.add("ingest_raw_per_s", raw.acks_per_s);
    f.add("ingest_raw_p99_ms", ms(raw.p99_us));
    f.add("ingest_ratio", ours.acks_per_s / raw.acks_per_s);
    Ok(f)
}
