//! `rebuild`: fills IM_CONV with `events` valid events (chained, made by the
//! rules' own `decide`), waits for the live projector to fold them, then
//! times `imctl projections rebuild --all` (a child process, as an operator
//! runs it) → events of the stream per second of wall time.
//!
//! Baseline: one raw ordered-consumer read of the same stream, start to end,
//! on the same server.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use futures::StreamExt;
use im_streams::codec::conv_headers;
use im_streams::conversation::decide;
use im_streams::definitions::CONV_STREAM;
use im_streams::seal::seal;
use im_streams::{Action, Command, ConvState, MessageBody, Role};

use super::ingest::stamped_text;
use super::{Figures, Size, StackOptions};
use crate::cmd::bench::stack::Stack;

/// Events per conversation: long histories, as a busy team's.
const EVENTS_PER_CONV: u64 = 1_000;

/// Members per conversation (each message touches every member's
/// conversation list and unread count).
const MEMBERS_PER_CONV: usize = 3;

/// Publishes awaiting their ack while seeding: enough to keep the server
/// busy, bounded so that a stall cannot queue the whole log in memory.
const SEED_INFLIGHT_MAX: usize = 4_096;

/// How long the live projector may go without folding anything before a
/// bench gives up on it (a bound on a stall, not on a large log's fold).
const CATCH_UP_STALL_MAX: Duration = Duration::from_secs(300);

/// Writes `events` events round-robin over conversations, as the append
/// path would (sealed by the rules, with its headers), pipelined.
pub async fn seed(js: &jetstream::Context, events: u64) -> anyhow::Result<()> {
    seed_with(js, events, EVENTS_PER_CONV).await
}

/// `seed`, `per_conv` events in each conversation (`rb0`, `rb1`, ...).
pub async fn seed_with(js: &jetstream::Context, events: u64, per_conv: u64) -> anyhow::Result<()> {
    let members = |c: u64| (0..MEMBERS_PER_CONV).map(|m| format!("u{c}x{m}")).collect();
    let plan = Seeding {
        prefix: "rb",
        per_conv,
        members: &members,
        text: &|n| stamped_text(n as u128),
    };
    seed_plan(js, events, &plan).await
}

/// What a seeded log holds.
pub struct Seeding<'a> {
    /// Conversation ids: this and a number (`rb0`, `rb1`, ...).
    pub prefix: &'a str,
    pub per_conv: u64,
    /// A conversation's members by its number; the first creates it, and
    /// each sends in turn.
    pub members: &'a (dyn Fn(u64) -> Vec<String> + Sync),
    /// The text of the log's `n`th event.
    pub text: &'a (dyn Fn(u64) -> String + Sync),
}

/// Writes `events` events round-robin over the plan's conversations, as
/// the append path would (sealed by the rules, with its headers),
/// pipelined.
pub async fn seed_plan(
    js: &jetstream::Context,
    events: u64,
    plan: &Seeding<'_>,
) -> anyhow::Result<()> {
    let topology = im_streams::definitions::read_topology(js).await?;
    // Signed with a key of its own, registered first, as a writer's: an
    // unsigned event is dead-lettered once any key is registered (I30).
    let signer = im_streams::signing::EventSigner::from_seed(rand::random());
    im_streams::signing::register(js, &signer.public()).await?;
    let conversations = events.div_ceil(plan.per_conv.max(1)).max(1);
    let mut states: BTreeMap<u64, ConvState> = BTreeMap::new();
    let mut acks = futures::stream::FuturesUnordered::new();
    let now_ms = 1_700_000_000_000;
    for n in 0..events {
        let c = n % conversations;
        let conv = format!("{}{c}", plan.prefix);
        let members = (plan.members)(c);
        let state = states.entry(c).or_insert_with(|| ConvState::empty(&conv));
        let cmd = if state.exists() {
            Command {
                actor: members[(n / conversations) as usize % members.len()].clone(),
                client_msg_id: format!("e{n}"),
                action: Action::Send {
                    peer: None,
                    body: MessageBody::Text((plan.text)(n)),
                    meta: Default::default(),
                },
            }
        } else {
            Command {
                actor: members[0].clone(),
                client_msg_id: format!("create-{conv}"),
                action: Action::CreateGroup {
                    title: conv.clone(),
                    members: members[1..]
                        .iter()
                        .map(|m| (m.clone(), Role::Member))
                        .collect(),
                },
            }
        };
        // Times advance as a real log's do (a second per 100 events).
        let at_ms = now_ms + (n as i64) * 10;
        let decided = decide(state, &cmd, at_ms).map_err(|r| anyhow::anyhow!("{conv}: {r}"))?;
        let subject = topology.conv_subject(&conv)?;
        for sealed in seal(state, decided) {
            let mut headers = conv_headers(&sealed.event, "bench", "bench-seed");
            let signature = signer.sign(&sealed.payload);
            headers.insert(im_streams::signing::HDR_SIGNATURE, signature.as_str());
            let publish = jetstream::message::PublishMessage::build()
                .payload(sealed.payload.clone())
                .headers(headers);
            // Sent in order on one connection: each subject's events are
            // stored in the order they were made.
            let ack = js.send_publish(subject.clone(), publish).await?;
            acks.push(async move { ack.await });
            state.extend(&sealed, 0);
        }
        while acks.len() >= SEED_INFLIGHT_MAX {
            acks.next().await.expect("not empty")?;
        }
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    Ok(())
}

/// Waits until every durable consumer of the live projector has nothing
/// pending and nothing unacknowledged (acks follow the sled commit).
pub async fn caught_up(js: &jetstream::Context) -> anyhow::Result<()> {
    let (mut least_behind, mut moved) = (u64::MAX, Instant::now());
    loop {
        let mut stream = js.get_stream(CONV_STREAM).await?;
        let mut consumers = stream.consumers();
        let (mut seen, mut behind) = (0, 0u64);
        while let Some(info) = consumers.next().await {
            let info = info?;
            if info.config.durable_name.is_some() {
                seen += 1;
                behind += info.num_pending + info.num_ack_pending as u64;
            }
        }
        let _ = stream.info().await?;
        if seen > 0 && behind == 0 {
            return Ok(());
        }
        if behind < least_behind {
            (least_behind, moved) = (behind, Instant::now());
        }
        anyhow::ensure!(
            moved.elapsed() < CATCH_UP_STALL_MAX,
            "the projector folded nothing for {CATCH_UP_STALL_MAX:?} ({behind} events behind)"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs `imctl <args>` against the stack as its operator would; its
/// seconds.
pub(crate) async fn timed_imctl(stack: &Stack, args: &[&str]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .args(args)
        .arg("--nats-url")
        .arg(&stack.nats_url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .await
        .with_context(|| format!("running imctl {}", args.join(" ")))?;
    // Its last words when it failed: what it could not do.
    let said = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = said.lines().rev().take(20).collect();
    anyhow::ensure!(
        out.status.success(),
        "imctl {}: {}\n{}",
        args.join(" "),
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    Ok(started.elapsed().as_secs_f64())
}

/// Reads the whole stream with an ordered consumer; the messages read.
pub(crate) async fn raw_read(js: &jetstream::Context, last: u64) -> anyhow::Result<u64> {
    let stream = js.get_stream(CONV_STREAM).await?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut read = 0u64;
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        read += 1;
        if msg
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence
            >= last
        {
            break;
        }
    }
    Ok(read)
}

/// Events whose check is timed in-process (the log's first ones).
const VALIDITY_SAMPLE_MAX: u64 = 100_000;

/// What judging an event costs, per event, in microseconds: (decoding
/// alone, the baseline; decoding and `validity::fold`: the signature for
/// its position and the rules), over the log's first events, in order, on
/// one thread, as the projector's judge runs it.
async fn validity_cost(js: &jetstream::Context, upto: u64) -> anyhow::Result<(f64, f64)> {
    let stream = js.get_stream(CONV_STREAM).await?;
    let consumer = stream.create_consumer(OrderedConfig::default()).await?;
    let mut messages = consumer.messages().await?;
    let mut held = Vec::new();
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        let seq = msg
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence;
        held.push((
            seq,
            msg.subject.to_string(),
            msg.headers.clone(),
            msg.payload.clone(),
        ));
        if seq >= upto {
            break;
        }
    }
    let mut keys = im_streams::signing::registered(js).await?;
    let kv = js
        .get_key_value(im_streams::signing::WRITER_KEYS_BUCKET)
        .await?;
    let decode = |(seq, subject, headers, payload): &(
        u64,
        String,
        Option<async_nats::HeaderMap>,
        bytes::Bytes,
    )| {
        im_streams::codec::decode_conv_parts(*seq, subject, headers.as_ref(), payload)
    };
    for e in held.iter().filter_map(|m| decode(m).ok()) {
        if let Some(id) = e
            .signature
            .as_deref()
            .and_then(im_streams::signing::signer_of)
        {
            keys.learn(&kv, id, e.stream_seq).await?;
        }
    }
    let n = held.len().max(1) as f64;
    let started = Instant::now();
    let decoded: Vec<_> = held.iter().filter_map(|m| decode(m).ok()).collect();
    let decode_us = started.elapsed().as_secs_f64() * 1e6 / n;
    let started = Instant::now();
    let mut states: BTreeMap<String, ConvState> = BTreeMap::new();
    let mut invalid = 0;
    for m in &held {
        let Ok(e) = decode(m) else { continue };
        let conv = e.event.conversation_id.clone();
        let state = states
            .entry(conv.clone())
            .or_insert_with(|| ConvState::empty(conv));
        invalid += usize::from(im_streams::validity::fold(state, &keys, &e).is_err());
    }
    let judged_us = started.elapsed().as_secs_f64() * 1e6 / n;
    anyhow::ensure!(
        invalid == 0,
        "{invalid} of {} seeded events judged invalid",
        decoded.len()
    );
    Ok((decode_us, judged_us))
}

pub async fn run(size: &Size) -> anyhow::Result<Figures> {
    let stack = Stack::start(StackOptions::plain()).await?;
    let js = jetstream::new(stack.nats().await?);
    let started = Instant::now();
    seed(&js, size.events).await?;
    let seed_secs = started.elapsed().as_secs_f64();
    let last = js
        .get_stream(CONV_STREAM)
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    eprintln!(
        "rebuild: seeded {last} events in {seed_secs:.1} s ({:.0}/s); waiting for the live projector",
        last as f64 / seed_secs
    );
    let started = Instant::now();
    caught_up(&js).await?;
    let live_secs = started.elapsed().as_secs_f64();
    eprintln!("rebuild: live projector caught up in {live_secs:.1} s");

    let (decode_us, judged_us) = validity_cost(&js, last.min(VALIDITY_SAMPLE_MAX)).await?;
    eprintln!(
        "rebuild: judging an event (signature and rules) {judged_us:.1} µs, decoding alone {decode_us:.1} µs"
    );
    let status_secs = timed_imctl(
        &stack,
        // Without the apply-rate sample (a 1 s wait by default, not work).
        &["projections", "status", "--interval-ms", "0"],
    )
    .await?;
    let streams_secs = timed_imctl(&stack, &["streams", "status"]).await?;
    eprintln!(
        "rebuild: imctl projections status on {last} events in {:.0} ms (imctl streams status: {:.0} ms)",
        status_secs * 1e3,
        streams_secs * 1e3
    );

    let started = Instant::now();
    let read = raw_read(&js, last).await?;
    let raw_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(read == last, "the raw read saw {read} of {last} events");
    eprintln!("rebuild: raw ordered read {read} in {raw_secs:.2} s");

    let rebuild_secs = timed_imctl(
        &stack,
        &[
            "projections",
            "rebuild",
            "--all",
            "--instance",
            im_projectors::DEFAULT_INSTANCE,
        ],
    )
    .await?;
    eprintln!("rebuild: imctl projections rebuild --all over {last} events in {rebuild_secs:.2} s");
    stack.stop().await;
    let mut f = Figures::default();
    let (ours, raw) = (last as f64 / rebuild_secs, last as f64 / raw_secs);
    f.add("rebuild_events", last as f64);
    f.add("rebuild_secs", rebuild_secs);
    f.add("rebuild_events_per_s", ours);
    f.add("rebuild_raw_per_s", raw);
    f.add("rebuild_ratio", ours / raw);
    f.add("live_fold_events_per_s", last as f64 / live_secs);
    f.add("validity_us_per_event", judged_us);
    f.add("validity_baseline_decode_us_per_event", decode_us);
    f.add("status_ms", status_secs * 1e3);
    f.add("status_baseline_streams_status_ms", streams_secs * 1e3);
    Ok(f)
}
