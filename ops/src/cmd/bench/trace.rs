//! Where a delivery's time goes: an observer on the stack's nats-server
//! (the bench's server runs without authorization) sees each message twice
//! on the wire, so with the client's send and receive times every message
//! is cut into three stages:
//! - `gateway_in`: the client's send → the gateway's publish of the event
//!   to JetStream seen on `im.conv.>` (frame, validation, `decide`);
//! - `projector`: that publish → the projector's delivery seen on
//!   `im.deliver.*.e` (JetStream's store and ack, the pull consumer, the
//!   fold, the publish);
//! - `gateway_out`: that delivery → the member's WebSocket (the gateway's
//!   subscription, routing, the writer and the socket).
//!
//! The observer's own hop adds the same to both wire sightings, so it
//! shifts time from `gateway_in` to `gateway_out` by its latency (tens of
//! µs on one host) and leaves `projector` as measured.

use std::collections::HashMap;
use std::time::Instant;

use futures::StreamExt;
use im_schema::v1::{self, envelope::Payload};

use super::ingest;
use super::{ms, percentile, Figures};

/// A message, by its place in its conversation.
pub type Key = (String, u64);

/// Messages the observer remembers per sighting: a measured phase sends a
/// few thousand; past this it stops recording rather than grow (the bench
/// process must not skew the stack it shares two cores with).
const SIGHTINGS_MAX: usize = 200_000;

/// When (µs since the bench's epoch) each message was seen on the wire.
#[derive(Default)]
pub struct Sightings {
    pub appended: HashMap<Key, u64>,
    pub delivered: HashMap<Key, u64>,
}

/// A message received by its member: its key, its send and receive times
/// (µs since the epoch).
pub struct Arrival {
    pub key: Key,
    pub sent_us: u64,
    pub at_us: u64,
}

/// The key and send time of a delivered message event.
pub fn arrival_of(d: v1::Deliver, at_us: u64) -> Option<Arrival> {
    let key = (d.conversation_id.clone(), d.conv_seq);
    let sent_us = ingest::stamp_of_deliver(d)?;
    Some(Arrival {
        key,
        sent_us,
        at_us,
    })
}

/// Records what crosses `im.conv.>` and `im.deliver.*.e` until `until`.
pub async fn observe(
    nats: async_nats::Client,
    epoch: Instant,
    until: Instant,
) -> anyhow::Result<tokio::task::JoinHandle<Sightings>> {
    let mut logged = nats.subscribe("im.conv.>").await?;
    let mut delivered = nats.subscribe("im.deliver.*.e").await?;
    nats.flush().await?;
    Ok(tokio::spawn(async move {
        let mut s = Sightings::default();
        let deadline = tokio::time::sleep_until(until.into());
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                Some(m) = logged.next() => {
                    let at = epoch.elapsed().as_micros() as u64;
                    if let Ok(e) = im_schema::decode::<v1::ConvEvent>(&m.payload) {
                        remember(&mut s.appended, (e.conversation_id, e.conv_seq), at);
                    }
                }
                Some(m) = delivered.next() => {
                    let at = epoch.elapsed().as_micros() as u64;
                    if let Ok(v1::Envelope { payload: Some(Payload::Deliver(d)), .. }) =
                        im_schema::decode::<v1::Envelope>(&m.payload)
                    {
                        remember(&mut s.delivered, (d.conversation_id, d.conv_seq), at);
                    }
                }
                _ = &mut deadline => return s,
            }
        }
    }))
}

/// The first sighting counts (a retried append is the same message).
fn remember(map: &mut HashMap<Key, u64>, key: Key, at: u64) {
    if map.len() < SIGHTINGS_MAX {
        map.entry(key).or_insert(at);
    }
}

/// The figures of each stage, in order: p50 and p99.
const STAGES: [[&str; 2]; 3] = [
    ["trace_low_gateway_in_p50_ms", "trace_low_gateway_in_p99_ms"],
    ["trace_low_projector_p50_ms", "trace_low_projector_p99_ms"],
    [
        "trace_low_gateway_out_p50_ms",
        "trace_low_gateway_out_p99_ms",
    ],
];

/// Adds `trace_low_<stage>_p50_ms` and `_p99_ms` for the arrivals seen at
/// both wire points; returns how many were.
pub fn add_stages(f: &mut Figures, arrivals: &[Arrival], seen: &Sightings) -> usize {
    let mut samples: [Vec<u64>; 3] = Default::default();
    for a in arrivals {
        let (Some(&logged), Some(&delivered)) =
            (seen.appended.get(&a.key), seen.delivered.get(&a.key))
        else {
            continue;
        };
        samples[0].push(logged.saturating_sub(a.sent_us));
        samples[1].push(delivered.saturating_sub(logged));
        samples[2].push(a.at_us.saturating_sub(delivered));
    }
    let traced = samples[0].len();
    for (names, stage) in STAGES.iter().zip(samples.iter_mut()) {
        f.add(names[0], ms(percentile(stage, 50.0)));
        f.add(names[1], ms(percentile(stage, 99.0)));
    }
    traced
}

/// The buckets of one histogram of `family` whose labels hold `label`
/// (`stage="taken"`): (upper bound in seconds, cumulative count), in order.
pub fn buckets(metrics: &str, family: &str, label: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{family}_bucket{{");
    metrics
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(label))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.trim().parse().ok()?))
        })
        .collect()
}

/// The `q` quantile (0..1) of what was observed between two scrapes of the
/// same buckets, interpolated within its bucket, in ms (0 when nothing).
pub fn quantile_between(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> f64 {
    let counts: Vec<(f64, u64)> = after
        .iter()
        .map(|(le, n)| {
            let was = before.iter().find(|(b, _)| b == le).map_or(0, |(_, n)| *n);
            (*le, n.saturating_sub(was))
        })
        .collect();
    let total = counts.last().map_or(0, |(_, n)| *n);
    if total == 0 {
        return 0.0;
    }
    let target = q * total as f64;
    let (mut lo, mut below) = (0.0, 0u64);
    for (le, n) in counts {
        if n as f64 >= target {
            if le.is_infinite() {
                return lo * 1000.0;
            }
            let within = (target - below as f64) / (n - below).max(1) as f64;
            return (lo + (le - lo) * within) * 1000.0;
        }
        (lo, below) = (le, n);
    }
    lo * 1000.0
}

/// The figures of the projector's stages, in order: p50 and p99.
const AGES: [(&str, [&str; 2]); 3] = [
    (
        "taken",
        ["trace_low_taken_p50_ms", "trace_low_taken_p99_ms"],
    ),
    (
        "published",
        ["trace_low_published_p50_ms", "trace_low_published_p99_ms"],
    ),
    (
        "committed",
        ["trace_low_committed_p50_ms", "trace_low_committed_p99_ms"],
    ),
];

/// Adds the projector's own stages between two scrapes of its metrics:
/// from an event's storing to its batch taken, published and committed
/// (the oldest event of each batch).
pub fn add_ages(f: &mut Figures, before: &str, after: &str) {
    const FAMILY: &str = "im_projector_event_age_seconds";
    for (stage, names) in AGES {
        let label = format!("stage=\"{stage}\"");
        let (b, a) = (
            buckets(before, FAMILY, &label),
            buckets(after, FAMILY, &label),
        );
        f.add(names[0], quantile_between(&b, &a, 0.5));
        f.add(names[1], quantile_between(&b, &a, 0.99));
    }
}

/// Adds the gateway's own part of a send between two scrapes of its
/// metrics: `im_gateway_append_seconds{via="ws"}`, from the command's
/// start to JetStream's ack (the conversation's lock, `decide`, the
/// signature, the publish and its ack). The rest of a client's ack time
/// is the WebSocket both ways and the scheduling of a shared box.
pub fn add_append(f: &mut Figures, before: &str, after: &str) {
    const FAMILY: &str = "im_gateway_append_seconds";
    let label = "via=\"ws\"";
    let (b, a) = (
        buckets(before, FAMILY, label),
        buckets(after, FAMILY, label),
    );
    f.add("trace_low_append_p50_ms", quantile_between(&b, &a, 0.5));
    f.add("trace_low_append_p99_ms", quantile_between(&b, &a, 0.99));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_buckets_filled_between_scrapes() {
        let before = "im_projector_event_age_seconds_bucket{stage=\"taken\",le=\"0.001\"} 5\n\
                      im_projector_event_age_seconds_bucket{stage=\"taken\",le=\"0.002\"} 5\n\
                      im_projector_event_age_seconds_bucket{stage=\"taken\",le=\"+Inf\"} 5\n";
        let after = "im_projector_event_age_seconds_bucket{stage=\"taken\",le=\"0.001\"} 5\n\
                     im_projector_event_age_seconds_bucket{stage=\"taken\",le=\"0.002\"} 105\n\
                     im_projector_event_age_seconds_bucket{stage=\"taken\",le=\"+Inf\"} 105\n\
                     im_projector_event_age_seconds_bucket{stage=\"published\",le=\"0.001\"} 9\n";
        let family = "im_projector_event_age_seconds";
        let label = "stage=\"taken\"";
        let (b, a) = (
            buckets(before, family, label),
            buckets(after, family, label),
        );
        assert_eq!(a.len(), 3);
        // All 100 new observations lie in (1 ms, 2 ms]: the median halfway.
        assert!((quantile_between(&b, &a, 0.5) - 1.5).abs() < 1e-9);
        assert!((quantile_between(&b, &a, 0.99) - 1.99).abs() < 1e-9);
        assert_eq!(quantile_between(&a, &a, 0.5), 0.0);
    }
}
