//! `latency`: measures the maximum ingest first (as `ingest` does), then
//! drives half of it, paced, into conversations whose other member is
//! connected, and times each message from the send to its delivery at that
//! member → `deliver_p99_ms`, and the ack latency at that load; then the
//! same at a tenth of it → `deliver_p99_low_ms` (an everyday load, where
//! per-batch costs are not shared by many messages); then that low rate
//! again with an observer on the wire (`trace.rs`), cutting each message's
//! time into stages → `trace_low_*` (a separate run, so the observer's
//! work does not touch the figures above).

use std::time::{Duration, Instant};

use futures::StreamExt;
use im_schema::v1::envelope::Payload;

use super::ingest::{self, Plan};
use super::stack::{self, Stack, Ws};
use super::trace::{self, Arrival, Sightings};
use super::{bench_limits, ms, percentile, Figures, Size, StackOptions};

/// How long receivers keep reading after the last send.
const DRAIN: Duration = Duration::from_secs(2);

/// Reads deliveries until `until`; the arrival of each message sent in the
/// measured window.
async fn receive(ws: Ws, epoch: Instant, measure_from_us: u64, until: Instant) -> Vec<Arrival> {
    let (_sink, mut stream) = ws.split();
    let mut out = Vec::new();
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until.into(), stream.next()).await {
        let now_us = epoch.elapsed().as_micros() as u64;
        for env in stack::decode(&msg) {
            let Some(Payload::Deliver(d)) = env.payload else {
                continue;
            };
            if let Some(a) = trace::arrival_of(d, now_us) {
                if a.sent_us >= measure_from_us {
                    out.push(a);
                }
            }
        }
    }
    out
}

/// What a run at one rate measured.
struct AtRate {
    arrivals: Vec<Arrival>,
    ack_us: Vec<u64>,
    acks: u64,
    /// With `traced`: what the observer saw.
    seen: Option<Sightings>,
}

impl AtRate {
    /// Send→deliver latencies (µs).
    fn deliver_us(&self) -> Vec<u64> {
        self.arrivals
            .iter()
            .map(|a| a.at_us.saturating_sub(a.sent_us))
            .collect()
    }
}

/// Arrivals and ack latencies (µs) at `rate`, with fresh senders and
/// receivers (`tag`); with `traced`, an observer on the wire too.
async fn at_rate(
    stack: &Stack,
    size: &Size,
    rate: f64,
    tag: &str,
    traced: bool,
) -> anyhow::Result<AtRate> {
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
    let observer = match traced {
        true => Some(trace::observe(stack.nats().await?, start, plan.until + DRAIN).await?),
        false => None,
    };
    let reading: Vec<_> = receivers
        .into_iter()
        .map(|ws| tokio::spawn(receive(ws, start, measure_from_us, plan.until + DRAIN)))
        .collect();
    let sent = ingest::drive(senders, tag, plan).await?;
    let mut arrivals = Vec::new();
    for r in reading {
        arrivals.extend(r.await?);
    }
    let seen = match observer {
        Some(o) => Some(o.await?),
        None => None,
    };
    let delivered = arrivals.len() as u64;
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
    Ok(AtRate {
        arrivals,
        ack_us: sent.ack_us,
        acks: sent.acks,
        seen,
    })
}

pub async fn run(size: &Size) -> anyhow::Result<Figures> {
    let stack = Stack::start(StackOptions {
        limits: bench_limits(4 * size.clients),
        fanout_threshold: im_projectors::DEFAULT_FANOUT_THRESHOLD,
        encrypt: false,
    })
    .await?;
    let max = ingest::measure(&stack, size, size.clients, "probe").await?;
    let rate = max.acks_per_s / 2.0;
    eprintln!(
        "latency: max ingest {:.0}/s; driving {rate:.0}/s, then {:.0}/s",
        max.acks_per_s,
        rate / 5.0
    );
    let mut half = at_rate(&stack, size, rate, "lat", false).await?;
    let mut low = at_rate(&stack, size, rate / 5.0, "low", false).await?;
    let ages_before = stack.projector_metrics().await?;
    let appends_before = stack.gateway_metrics().await?;
    let traced = at_rate(&stack, size, rate / 5.0, "trace", true).await?;
    let ages_after = stack.projector_metrics().await?;
    let appends_after = stack.gateway_metrics().await?;
    stack.stop().await;
    let mut f = Figures::default();
    f.add(
        "latency_rate_per_s",
        half.acks as f64 / size.measure.as_secs_f64(),
    );
    let (mut deliver_us, mut low_us) = (half.deliver_us(), low.deliver_us());
    f.add("deliver_p50_ms", ms(percentile(&mut deliver_us, 50.0)));
    f.add("deliver_p99_ms", ms(percentile(&mut deliver_us, 99.0)));
    f.add(
        "ack_p99_half_load_ms",
        ms(percentile(&mut half.ack_us, 99.0)),
    );
    f.add("deliver_p50_low_ms", ms(percentile(&mut low_us, 50.0)));
    f.add("deliver_p99_low_ms", ms(percentile(&mut low_us, 99.0)));
    f.add("ack_p99_low_ms", ms(percentile(&mut low.ack_us, 99.0)));
    let seen = traced.seen.unwrap_or_default();
    let n = trace::add_stages(&mut f, &traced.arrivals, &seen);
    trace::add_ages(&mut f, &ages_before, &ages_after);
    trace::add_append(&mut f, &appends_before, &appends_after);
    eprintln!(
        "latency: trace: {n} of {} arrivals seen at both wire points",
        traced.arrivals.len()
    );
    Ok(f)
}
