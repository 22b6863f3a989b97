//! The raw baseline of `ingest` and `pipeline`: writers publishing to
//! JetStream directly with async-nats, with the same payload bytes and
//! headers (`Nats-Expected-Last-Subject-Sequence`, `Nats-Msg-Id`, the
//! `Im-*` ones), one publish in flight each, into a scratch stream
//! configured like IM_CONV, on the same server.

use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use im_schema::v1;

use super::ingest::{gather, stamped_text, Ingest, Sent, CONVS_PER_SENDER};
use super::stack::Stack;
use super::Size;

/// The scratch stream of the raw baseline.
const RAW_STREAM: &str = "BENCH_RAW";

/// A scratch stream configured like IM_CONV on other subjects, for the
/// baselines (deleted after).
pub async fn scratch_stream(
    js: &async_nats::jetstream::Context,
    name: &str,
    subjects: &str,
) -> anyhow::Result<()> {
    let mut config = js
        .get_stream(im_streams::definitions::CONV_STREAM)
        .await?
        .info()
        .await?
        .config
        .clone();
    config.name = name.into();
    config.subjects = vec![subjects.into()];
    config.deny_delete = false;
    config.deny_purge = false;
    config.metadata = Default::default();
    js.create_stream(config)
        .await
        .with_context(|| format!("creating the scratch stream {name}"))?;
    Ok(())
}

/// A stored event as the append path makes it: the same bytes and headers.
pub fn raw_event() -> (Bytes, async_nats::HeaderMap) {
    let event = v1::ConvEvent {
        conversation_id: "raw-0-0".into(),
        conv_seq: 1,
        actor: "s0".into(),
        at_ms: 1_700_000_000_000,
        prev_hash: vec![7; 32],
        client_msg_id: "raw0-0".into(),
        schema_version: im_schema::SCHEMA_VERSION,
        kind: Some(v1::conv_event::Kind::MessageSent(v1::MessageSent {
            sealed: None,
            body: Some(v1::message_sent::Body::Text(stamped_text(0))),
            meta: Default::default(),
        })),
    };
    let payload = Bytes::from(im_schema::encode(&event));
    let headers = im_streams::codec::conv_headers(&event, "bench", "raw-writer");
    (payload, headers)
}

/// `writers` tasks on one connection (as the gateway has one), each
/// publishing into its own `prefix.<w>.<k>` subjects with CAS and a msg id,
/// one publish in flight each, until `until`; acks after `measure_from`.
pub async fn cas_writers(
    js: &async_nats::jetstream::Context,
    prefix: &str,
    writers: usize,
    measure_from: Instant,
    until: Instant,
) -> anyhow::Result<Sent> {
    let (payload, headers) = raw_event();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (js, payload, headers) = (js.clone(), payload.clone(), headers.clone());
            let subjects: Vec<String> = (0..CONVS_PER_SENDER)
                .map(|k| format!("{prefix}.{w}.{k}"))
                .collect();
            tokio::spawn(async move {
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
    gather(tasks).await
}

/// The raw baseline: CAS publishes only, into a scratch stream.
pub async fn measure_raw(stack: &Stack, size: &Size, writers: usize) -> anyhow::Result<Ingest> {
    let js = async_nats::jetstream::new(stack.nats().await?);
    scratch_stream(&js, RAW_STREAM, "bench.raw.>").await?;
    let start = Instant::now();
    let (measure_from, until) = (start + size.warmup, start + size.warmup + size.measure);
    let mut all = cas_writers(&js, "bench.raw", writers, measure_from, until).await?;
    js.delete_stream(RAW_STREAM).await?;
    Ok(Ingest::of(&mut all, size))
}
