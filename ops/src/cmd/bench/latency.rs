//! `latency`: measures the maximum ingest first (as `ingest` does), then
//! drives half of it, paced, into conversations whose other member is
//! connected, and times each message from the send to its delivery at that
//! member → `deliver_p99_ms`, and the ack latency at that load; then the
//! same at a tenth of it → `deliver_p99_low_ms` (an everyday load, where
//! per-batch costs are not shared by many messages).

use std::time::{Duration, Instant};

use futures::StreamExt;
use im_schema::v1::envelope::Payload;

use super::ingest::{self, Plan};
use super::stack::{self, Stack, Ws};
use super::{bench_limits, ms, percentile, Figures, Size, StackOptions};

/// How long receivers keep reading after the last send.
const DRAIN: Duration = Duration::from_secs(2);

/// Reads deliveries until `until`; the send→deliver latency (µs) of each
/// message sent in the measured window.
async fn receive(ws: Ws, epoch: Instant, measure_from_us: u64, until: Instant) -> Vec<u64> {
    let (_sink, mut stream) = ws.split();
    let mut out = Vec::new();
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until.into(), stream.next()).await {
        let now_us = epoch.elapsed().as_micros() as u64;
        for env in stack::decode(&msg) {
            let Some(Payload::Deliver(d)) = env.payload else {
                continue;
            };
            if let Some(sent_us) = ingest::stamp_of_deliver(d) {
                if sent_us >= measure_from_us {
                    out.push(now_us.saturating_sub(sent_us));
                }
            }
        }
    }
    out
}

/// Send→deliver latencies (µs) and ack latencies (µs) at `rate`, with
/// fresh senders and receivers (`tag`).
async fn at_rate(
    stack: &Stack,
    size: &Size,
    rate: f64,
    tag: &str,
) -> anyhow::Result<(Vec<u64>, Vec<u64>, u64)> {
    let senders = ingest::senders(stack, size.clients, tag).await?;
    // What came before would otherwise be in the measured window.
    super::probe::wait_caught_up(&stack.nats().await?).await?;
    let mut receivers = Vec::new();
    for i in 0..size.clients {
        // The senders' peers (`ingest::senders`).
        receivers.push(stack.connect(&format!("r{i}"), "bench").await?);
    }
    let start = Instant::now();
    let plan = Plan {
        measure_from: start + size.warmup,
        until: start + size.warmup + size.measure,
        pace: Some(Duration::from_secs_f64(size.clients as f64 / rate)),
        epoch: start,
    };
    let measure_from_us = size.warmup.as_micros() as u64;
    let reading: Vec<_> = receivers
        .into_iter()
        .map(|ws| tokio::spawn(receive(ws, start, measure_from_us, plan.until + DRAIN)))
        .collect();
    let sent = ingest::drive(senders, tag, plan).await?;
    let mut deliver_us = Vec::new();
    for r in reading {
        deliver_us.extend(r.await?);
    }
    let delivered = deliver_us.len() as u64;
    eprintln!(
        "latency: {tag}: {} sends at {rate:.0}/s, {delivered} delivered in the window",
        sent.acks
    );
    if delivered != sent.acks {
        // Deliveries are at most once by design (clients recover from
        // history); a shortfall is worth seeing, not a failed run.
        eprintln!(
            "latency: {tag}: {} stored but {delivered} delivered",
            sent.acks
        );
    }
    Ok((deliver_us, sent.ack_us, sent.acks))
}

pub async fn run(size: &Size) -> anyhow::Result<Figures> {
    let stack = Stack::start(StackOptions {
        limits: bench_limits(4 * size.clients),
        fanout_threshold: im_projectors::DEFAULT_FANOUT_THRESHOLD,
    })
    .await?;
    let max = ingest::measure(&stack, size, size.clients, "probe").await?;
    let rate = max.acks_per_s / 2.0;
    eprintln!(
        "latency: max ingest {:.0}/s; driving {rate:.0}/s, then {:.0}/s",
        max.acks_per_s,
        rate / 5.0
    );
    let (mut deliver_us, mut ack_us, acks) = at_rate(&stack, size, rate, "lat").await?;
    let (mut low_us, mut low_ack_us, _) = at_rate(&stack, size, rate / 5.0, "low").await?;
    stack.stop().await;
    let mut f = Figures::default();
    f.add(
        "latency_rate_per_s",
        acks as f64 / size.measure.as_secs_f64(),
    );
    f.add("deliver_p50_ms", ms(percentile(&mut deliver_us, 50.0)));
    f.add("deliver_p99_ms", ms(percentile(&mut deliver_us, 99.0)));
    f.add("ack_p99_half_load_ms", ms(percentile(&mut ack_us, 99.0)));
    f.add("deliver_p50_low_ms", ms(percentile(&mut low_us, 50.0)));
    f.add("deliver_p99_low_ms", ms(percentile(&mut low_us, 99.0)));
    f.add("ack_p99_low_ms", ms(percentile(&mut low_ack_us, 99.0)));
    Ok(f)
}
