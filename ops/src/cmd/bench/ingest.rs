//! `ingest`: WebSocket clients, each sending into its own few conversations
//! and waiting for each `SendAck` before the next send (one command in
//! flight per connection, as the gateway runs a connection's commands in
//! order) → STORED acks/s and ack latency.
//!
//! Baseline (`cas.rs`): the same number of concurrent writers publishing to JetStream
//! directly with async-nats, with the same payload bytes and headers
//! (`Nats-Expected-Last-Subject-Sequence`, `Nats-Msg-Id`, the `Im-*` ones),
//! one publish in flight each, into a scratch stream configured like
//! IM_CONV, on the same server.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use im_schema::v1::{self, envelope::Payload};

use super::cas::measure_raw;
use super::stack::{self, Stack, Ws};
use super::{bench_limits, create_group, ms, percentile, probe, Figures, Size, StackOptions};

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
    Ok(measure_senders(stack, senders, size, "hist", None).await?.0)
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
pub(super) async fn gather(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Sent>>>,
) -> anyhow::Result<Sent> {
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

impl Ingest {
    pub fn of(sent: &mut Sent, size: &Size) -> Ingest {
        Ingest {
            acks_per_s: sent.acks as f64 / size.measure.as_secs_f64(),
            p50_us: percentile(&mut sent.ack_us, 50.0),
            p99_us: percentile(&mut sent.ack_us, 99.0),
        }
    }
}

/// What the stack did in a measured window.
pub struct Window {
    /// CPU µs per acknowledged send: nats-server, the stack, this load
    /// generator.
    pub cpu_us: (f64, f64, f64),
    /// Events the projector folded per second in the window.
    pub projected_per_s: f64,
    /// Events in IM_CONV the projector had not folded at the window's end.
    pub backlog: u64,
}

/// Samples CPU and the projector's progress at the window's edges.
async fn sample_window(
    stack: &Stack,
    client: async_nats::Client,
    measure_from: Instant,
    until: Instant,
) -> anyhow::Result<(probe::Cpu, probe::Cpu, u64, u64, u64)> {
    tokio::time::sleep_until(measure_from.into()).await;
    let (cpu0, (folded0, _)) = (probe::Cpu::sample(stack)?, probe::projected(&client).await?);
    tokio::time::sleep_until(until.into()).await;
    let (cpu1, (folded1, checkpoint)) =
        (probe::Cpu::sample(stack)?, probe::projected(&client).await?);
    let last = probe::conv_last_seq(&client).await?;
    Ok((
        cpu0,
        cpu1,
        folded1.saturating_sub(folded0),
        checkpoint,
        last,
    ))
}

/// Our side: `clients` senders as fast as their acks come.
pub async fn measure(
    stack: &Stack,
    size: &Size,
    clients: usize,
    run: &str,
) -> anyhow::Result<Ingest> {
    let senders = senders(stack, clients, run).await?;
    Ok(measure_senders(stack, senders, size, run, None).await?.0)
}

/// Runs the senders (as fast as their acks come, or one send per `pace`
/// each), warm-up first, sampling the stack over the measured window.
pub(super) async fn measure_senders(
    stack: &Stack,
    senders: Vec<(Ws, Vec<String>)>,
    size: &Size,
    tag: &str,
    pace: Option<Duration>,
) -> anyhow::Result<(Ingest, Window)> {
    let client = stack.nats().await?;
    let start = Instant::now();
    let plan = Plan {
        measure_from: start + size.warmup,
        until: start + size.warmup + size.measure,
        pace,
        epoch: start,
    };
    let (sent, window) = tokio::join!(
        drive(senders, tag, plan),
        sample_window(stack, client, plan.measure_from, plan.until)
    );
    let mut sent = sent?;
    let (cpu0, cpu1, folded, checkpoint, last) = window?;
    let window = Window {
        cpu_us: cpu0.per_message(&cpu1, sent.acks),
        projected_per_s: folded as f64 / size.measure.as_secs_f64(),
        backlog: last.saturating_sub(checkpoint),
    };
    Ok((Ingest::of(&mut sent, size), window))
}

/// Senders `d<i>`, each connected, each in a direct conversation with
/// `e<i>` (created by a first message through the append path).
async fn direct_senders(
    stack: &Stack,
    count: usize,
    tag: &str,
) -> anyhow::Result<Vec<(Ws, Vec<String>)>> {
    let appender = super::appender(&stack.nats().await?).await?;
    let mut out = Vec::new();
    for i in 0..count {
        let (sender, peer) = (format!("{tag}-d{i}"), format!("{tag}-e{i}"));
        let conv = im_streams::subjects::direct_conversation_id(&sender, &peer)?;
        let first = im_streams::Command {
            actor: sender.clone(),
            client_msg_id: "hello".into(),
            action: im_streams::Action::Send {
                peer: Some(peer),
                body: im_streams::MessageBody::Text("hello".into()),
                meta: Default::default(),
            },
        };
        appender.execute(&conv, &first, "bench").await?;
        out.push((stack.connect(&sender, "bench").await?, vec![conv]));
    }
    Ok(out)
}

/// Senders of the paced phase: enough that each sends at most 10/s, as a
/// person might.
pub(super) fn paced_senders(rate: u64) -> usize {
    rate.div_ceil(10).max(1) as usize
}

pub async fn run(size: &Size) -> anyhow::Result<Figures> {
    let stack = Stack::start(StackOptions {
        limits: bench_limits(size.clients + paced_senders(size.rate)),
        fanout_threshold: im_projectors::DEFAULT_FANOUT_THRESHOLD,
        encrypt: false,
    })
    .await?;
    let mut f = Figures::default();
    let raw = measure_raw(&stack, size, size.clients).await?;
    eprintln!(
        "ingest: raw {:.0}/s p50 {:.2} ms p99 {:.2} ms ({} writers)",
        raw.acks_per_s,
        ms(raw.p50_us),
        ms(raw.p99_us),
        size.clients
    );
    let pipeline = super::pipeline::measure(&stack, size, size.clients).await?;
    eprintln!("ingest: pipeline baseline {pipeline:.0}/s");
    probe::wait_caught_up(&stack.nats().await?).await?;
    let senders = senders(&stack, size.clients, "ing").await?;
    let (ours, window) = measure_senders(&stack, senders, size, "ing", None).await?;
    eprintln!(
        "ingest: ours {:.0}/s p50 {:.2} ms p99 {:.2} ms ({} websocket clients); projected {:.0}/s, backlog {} at the end; CPU µs/msg nats {:.0} stack {:.0} load {:.0}",
        ours.acks_per_s,
        ms(ours.p50_us),
        ms(ours.p99_us),
        size.clients,
        window.projected_per_s,
        window.backlog,
        window.cpu_us.0,
        window.cpu_us.1,
        window.cpu_us.2,
    );
    f.add("ingest_acks_per_s", ours.acks_per_s);
    f.add("ingest_ack_p50_ms", ms(ours.p50_us));
    f.add("ingest_ack_p99_ms", ms(ours.p99_us));
    f.add("ingest_projected_per_s", window.projected_per_s);
    f.add_count("ingest_backlog_events", window.backlog as f64);
    f.add("ingest_cpu_us_per_msg_nats", window.cpu_us.0);
    f.add("ingest_cpu_us_per_msg_stack", window.cpu_us.1);
    f.add("ingest_cpu_us_per_msg_load", window.cpu_us.2);
    f.add("ingest_raw_per_s", raw.acks_per_s);
    f.add("ingest_raw_p99_ms", ms(raw.p99_us));
    f.add("ingest_ratio", ours.acks_per_s / raw.acks_per_s);
    f.add("pipeline_raw_per_s", pipeline);
    f.add("ingest_pipeline_ratio", ours.acks_per_s / pipeline);
    history_phase(&stack, size, &mut f).await?;
    stack.stop().await;
    // Everyday rates on a stack of their own: what a saturated one still
    // does in the background (its store's flushes after a million writes)
    // is not the cost of a message at 10/s.
    let stack = Stack::start(StackOptions {
        limits: bench_limits(paced_senders(size.rate) + IDLE_CLIENTS),
        fanout_threshold: im_projectors::DEFAULT_FANOUT_THRESHOLD,
        encrypt: false,
    })
    .await?;
    paced_phase(&stack, size, size.rate, &mut f).await?;
    paced_phase(&stack, size, LOW_RATE, &mut f).await?;
    idle_phase(&stack, size, &mut f).await?;
    stack.stop().await;
    Ok(f)
}

/// Ingest into conversations with history past the recent index, and what
/// an index lookup costs.
async fn history_phase(stack: &Stack, size: &Size, f: &mut Figures) -> anyhow::Result<()> {
    probe::wait_caught_up(&stack.nats().await?).await?;
    let history = measure_history(stack, size, size.clients).await?;
    let lookups = stack
        .gateway_counter("im_gateway_index_lookups_total")
        .await?;
    eprintln!(
        "ingest: ours, {HISTORY_EVENTS} events of history per conversation, {:.0}/s p50 {:.2} ms p99 {:.2} ms; the writer asked the dedupe index about {lookups} of the new ids (Bloom false positives)",
        history.acks_per_s,
        ms(history.p50_us),
        ms(history.p99_us),
    );
    let (lookup_p50, lookup_p99) = index_lookup_us(stack).await?;
    eprintln!(
        "ingest: a dedupe index lookup p50 {:.3} ms p99 {:.3} ms",
        ms(lookup_p50),
        ms(lookup_p99)
    );
    f.add("ingest_history_acks_per_s", history.acks_per_s);
    f.add("ingest_history_ack_p50_ms", ms(history.p50_us));
    f.add("ingest_history_ack_p99_ms", ms(history.p99_us));
    f.add("index_lookup_p50_ms", ms(lookup_p50));
    f.add("index_lookup_p99_ms", ms(lookup_p99));
    Ok(())
}

/// The quiet paced phase's rate (messages a second): a small team's.
const LOW_RATE: u64 = 10;

/// Idle connected clients, and how long their cost is measured.
const IDLE_CLIENTS: usize = 64;

/// A fixed, everyday rate into direct chats: what the servers spend per
/// message when they are not saturated (`paced_*` at `--rate`,
/// `paced_low_*` at `LOW_RATE`).
async fn paced_phase(stack: &Stack, size: &Size, rate: u64, f: &mut Figures) -> anyhow::Result<()> {
    probe::wait_caught_up(&stack.nats().await?).await?;
    let count = paced_senders(rate);
    let tag = if rate == LOW_RATE { "quiet" } else { "paced" };
    let senders = direct_senders(stack, count, tag).await?;
    let pace = Duration::from_secs_f64(count as f64 / rate as f64);
    let (paced, window) = measure_senders(stack, senders, size, tag, Some(pace)).await?;
    let server = window.cpu_us.0 + window.cpu_us.1;
    eprintln!(
        "ingest: paced {:.0}/s into direct chats ({count} senders): server CPU {server:.0} µs/msg (nats {:.0}, stack {:.0}), ack p99 {:.2} ms",
        paced.acks_per_s,
        window.cpu_us.0,
        window.cpu_us.1,
        ms(paced.p99_us),
    );
    if rate == LOW_RATE {
        f.add("paced_low_rate_per_s", paced.acks_per_s);
        f.add("paced_low_server_cpu_us_per_msg", server);
        f.add("paced_low_ack_p99_ms", ms(paced.p99_us));
        return Ok(());
    }
    f.add("paced_rate_per_s", paced.acks_per_s);
    f.add("paced_server_cpu_us_per_msg", server);
    f.add("paced_cpu_us_per_msg_nats", window.cpu_us.0);
    f.add("paced_cpu_us_per_msg_stack", window.cpu_us.1);
    f.add("paced_ack_p99_ms", ms(paced.p99_us));
    Ok(())
}

/// What a connected stack burns doing nothing: `IDLE_CLIENTS` connected
/// clients (these send nothing), nats-server and the stack's CPU over 20 s
/// (quick: 5 s), as a percentage of one core.
async fn idle_phase(stack: &Stack, size: &Size, f: &mut Figures) -> anyhow::Result<()> {
    let window = if size.measure < Duration::from_secs(10) {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(20)
    };
    probe::wait_caught_up(&stack.nats().await?).await?;
    let mut conns = Vec::new();
    for i in 0..IDLE_CLIENTS {
        conns.push(stack.connect(&format!("idle{i}"), "bench").await?);
    }
    // Connects settle (presence, subscriptions) before the window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = probe::Cpu::sample(stack)?;
    tokio::time::sleep(window).await;
    let after = probe::Cpu::sample(stack)?;
    let (nats, ours, _) = before.per_message(&after, 1);
    let pct = |us: f64| us / window.as_micros() as f64 * 100.0;
    eprintln!(
        "ingest: idle, {IDLE_CLIENTS} clients connected: nats {:.3}% stack {:.3}% of a core",
        pct(nats),
        pct(ours)
    );
    // Ticks of 10 ms: a quiet enough stack reads 0 over a short window.
    f.add_count("idle_server_cpu_pct", pct(nats + ours));
    f.add_count("idle_cpu_pct_nats", pct(nats));
    f.add_count("idle_cpu_pct_stack", pct(ours));
    drop(conns);
    Ok(())
}
