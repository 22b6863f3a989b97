//! `imctl bench content`: what encrypting message content costs
//! (docs/privacy.md). The same saturated ingest (WebSocket senders into
//! groups: acks per second, the stack's CPU µs per message) on a stack that
//! keeps content clear, on one that encrypts it, and on a clear one again:
//! the two clear runs' mean is the baseline, and their ratio shows the
//! drift between runs. On each: a history page of 50 read through the
//! projector (opened message by message where encrypted), and a rebuild of
//! every projection over what was ingested.

use std::time::Instant;

use im_schema::v1::{self, query_request::Query, query_response::Result as R};

use super::ingest::{measure_senders, senders};
use super::stack::{Stack, StackOptions};
use super::{bench_limits, percentile, Figures, Size};

/// History pages read per stack: enough for a stable p50.
const HISTORY_READS: usize = 200;

/// One stack's figures.
struct Run {
    acks_per_s: f64,
    stack_cpu_us: f64,
    history_p50_us: f64,
    rebuild_secs: f64,
}

/// A history page of `conv` as `user` asks it of the projector, many
/// times: the p50 in µs.
async fn history_p50_us(
    client: &async_nats::Client,
    conv: &str,
    user: &str,
) -> anyhow::Result<f64> {
    let js = async_nats::jetstream::new(client.clone());
    let topology = im_streams::definitions::read_topology(&js).await?;
    let subject = im_projectors::query::partition_subject(topology.partition_of(conv));
    let req = v1::QueryRequest {
        query: Some(Query::History(v1::HistoryQuery {
            conversation_id: conv.into(),
            user_id: user.into(),
            limit: 50,
            direction: v1::Direction::Backward as i32,
            ..Default::default()
        })),
        ..Default::default()
    };
    let payload: bytes::Bytes = im_schema::encode(&req).into();
    let mut took = Vec::with_capacity(HISTORY_READS);
    for _ in 0..HISTORY_READS {
        let started = Instant::now();
        let reply = client.request(subject.clone(), payload.clone()).await?;
        took.push(started.elapsed().as_micros() as u64);
        let resp: v1::QueryResponse = im_schema::decode(&reply.payload)?;
        let Some(R::History(page)) = resp.result else {
            anyhow::bail!("history of {conv}: {resp:?}");
        };
        anyhow::ensure!(page.entries.len() > 1, "history of {conv} is empty");
    }
    Ok(percentile(&mut took, 50.0))
}

async fn one(size: &Size, encrypt: bool) -> anyhow::Result<Run> {
    let stack = Stack::start(StackOptions {
        limits: bench_limits(size.clients),
        fanout_threshold: im_projectors::DEFAULT_FANOUT_THRESHOLD,
        encrypt,
    })
    .await?;
    let client = stack.nats().await?;
    let tag = if encrypt { "enc" } else { "clear" };
    let writers = senders(&stack, size.clients, tag).await?;
    let (ingest, window) = measure_senders(&stack, writers, size, tag, None).await?;
    super::probe::wait_caught_up(&client).await?;
    let history_p50_us = history_p50_us(&client, &format!("{tag}-0-0"), "s0").await?;
    let rebuild_secs =
        super::rebuild::timed_imctl(&stack, &["projections", "rebuild", "--all"]).await?;
    eprintln!(
        "content: {} {:.0} acks/s, stack CPU {:.0} µs/msg, a history page of 50 p50 {:.2} ms, rebuild of every projection {:.2} s",
        if encrypt { "encrypted" } else { "clear" },
        ingest.acks_per_s,
        window.cpu_us.1,
        history_p50_us / 1e3,
        rebuild_secs
    );
    stack.stop().await;
    Ok(Run {
        acks_per_s: ingest.acks_per_s,
        stack_cpu_us: window.cpu_us.1,
        history_p50_us,
        rebuild_secs,
    })
}

pub async fn run(size: &Size) -> anyhow::Result<Figures> {
    let first = one(size, false).await?;
    let enc = one(size, true).await?;
    let again = one(size, false).await?;
    let mean = |f: fn(&Run) -> f64| (f(&first) + f(&again)) / 2.0;
    let clear = Run {
        acks_per_s: mean(|r| r.acks_per_s),
        stack_cpu_us: mean(|r| r.stack_cpu_us),
        history_p50_us: mean(|r| r.history_p50_us),
        rebuild_secs: mean(|r| r.rebuild_secs),
    };
    let mut f = Figures::default();
    f.add("content_clear_acks_per_s", clear.acks_per_s);
    f.add("content_encrypted_acks_per_s", enc.acks_per_s);
    f.add("content_acks_ratio", enc.acks_per_s / clear.acks_per_s);
    // The second clear run over the first: how far apart two runs of the
    // same thing are on this machine.
    f.add(
        "content_clear_runs_ratio",
        again.acks_per_s / first.acks_per_s,
    );
    f.add("content_clear_stack_cpu_us_per_msg", clear.stack_cpu_us);
    f.add("content_encrypted_stack_cpu_us_per_msg", enc.stack_cpu_us);
    f.add("content_cpu_ratio", enc.stack_cpu_us / clear.stack_cpu_us);
    f.add("content_clear_history_p50_ms", clear.history_p50_us / 1e3);
    f.add("content_encrypted_history_p50_ms", enc.history_p50_us / 1e3);
    f.add("content_clear_rebuild_secs", clear.rebuild_secs);
    f.add("content_encrypted_rebuild_secs", enc.rebuild_secs);
    Ok(f)
}
