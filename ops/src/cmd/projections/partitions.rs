//! The pool as the lease bucket shows it: per partition its owner, epoch,
//! lease age, the fan-out claimed, how far the owner and each follower have
//! folded, and an operator's move. What `imctl projections status` prints
//! under the projections, the admin API answers, and `move` waits on.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::TryStreamExt;
use im_projectors::lease::{Lease, Member, LEASE_TTL, PARTITION_LEASES_BUCKET};
use serde::Serialize;

/// One member's progress on a partition.
#[derive(Clone, Debug, Serialize)]
pub struct Folded {
    pub instance: String,
    /// IM_CONV position it has folded up to.
    pub applied: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PartitionRow {
    pub partition: u32,
    /// "" while no instance has taken it.
    pub owner: String,
    pub epoch: u64,
    /// Since the lease's last write (a claim or a renewal), by the server.
    pub lease_age_ms: u64,
    /// Whether the lease stood past `LEASE_TTL` (its owner gone or stuck).
    pub stale: bool,
    /// IM_CONV position up to which the owner claimed the fan-out.
    pub claimed: u64,
    /// IM_CONV's last position minus what the owner folded: an upper bound
    /// of the partition's lag (its events are among those positions).
    pub lag: u64,
    /// Live members other than the owner that fold the partition.
    pub followers: Vec<Folded>,
    /// Where an operator moved it (`imctl projections move`), if anywhere.
    pub moved_to: Option<String>,
}

/// A key of the bucket: its value and age.
struct Seen {
    value: bytes::Bytes,
    age: Duration,
}

/// Every key of the lease bucket; empty when there is no bucket (no pool
/// ever ran).
async fn read_bucket(
    js: &async_nats::jetstream::Context,
) -> anyhow::Result<BTreeMap<String, Seen>> {
    let Ok(kv) = js.get_key_value(PARTITION_LEASES_BUCKET).await else {
        return Ok(BTreeMap::new());
    };
    let keys: Vec<String> = kv.keys().await?.try_collect().await?;
    let mut out = BTreeMap::new();
    for key in keys {
        if let Some(e) = kv.entry(&key).await? {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as i128;
            let age_ns = (now - e.created.unix_timestamp_nanos()).max(0);
            let age = Duration::from_nanos(age_ns as u64);
            out.insert(
                key,
                Seen {
                    value: e.value,
                    age,
                },
            );
        }
    }
    Ok(out)
}

/// Every partition that has a lease; empty for pinned instances.
pub async fn collect(js: &async_nats::jetstream::Context) -> anyhow::Result<Vec<PartitionRow>> {
    let keys = read_bucket(js).await?;
    let last = js
        .get_stream(im_streams::definitions::CONV_STREAM)
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    // Live members' reports: (instance -> partition -> applied).
    let mut folded: BTreeMap<String, BTreeMap<u32, u64>> = BTreeMap::new();
    for (key, seen) in keys.range("m.".to_string()..) {
        let Some(instance) = key.strip_prefix("m.") else {
            break;
        };
        if seen.age >= LEASE_TTL {
            continue;
        }
        let member: Member = serde_json::from_slice(&seen.value)?;
        let by_p = member.applied.iter().map(|(p, c, _)| (*p, *c)).collect();
        folded.insert(instance.to_string(), by_p);
    }
    let mut rows = Vec::new();
    for (key, seen) in keys.range("p.".to_string()..) {
        let Some(Ok(partition)) = key.strip_prefix("p.").map(str::parse::<u32>) else {
            break;
        };
        let lease: Lease = serde_json::from_slice(&seen.value)?;
        let owner_applied = folded.get(&lease.owner).and_then(|m| m.get(&partition));
        let followers = folded
            .iter()
            .filter(|(i, _)| **i != lease.owner)
            .filter_map(|(i, m)| {
                let applied = *m.get(&partition)?;
                Some(Folded {
                    instance: i.clone(),
                    applied,
                })
            })
            .collect();
        let moved_to = keys
            .get(&im_projectors::lease::move_key(partition))
            .map(|s| String::from_utf8_lossy(&s.value).into_owned());
        rows.push(PartitionRow {
            partition,
            epoch: lease.epoch,
            lease_age_ms: seen.age.as_millis() as u64,
            stale: seen.age >= LEASE_TTL,
            claimed: lease.conv,
            lag: last.saturating_sub(owner_applied.copied().unwrap_or(0)),
            owner: lease.owner,
            followers,
            moved_to,
        });
    }
    rows.sort_by_key(|r| r.partition);
    Ok(rows)
}

/// The partition table under `imctl projections status`.
pub fn print(rows: &[PartitionRow]) {
    if rows.is_empty() {
        return;
    }
    println!();
    println!(
        "{:>9} {:<12} {:>6} {:>9} {:>10} {:>8}  FOLLOWERS (behind the owner's claim)",
        "PARTITION", "OWNER", "EPOCH", "LEASE_AGE", "CLAIMED", "LAG"
    );
    for r in rows {
        let followers: Vec<String> = r
            .followers
            .iter()
            .map(|f| format!("{} ({})", f.instance, r.claimed.saturating_sub(f.applied)))
            .collect();
        let owner = match (&r.moved_to, r.stale) {
            (_, true) => format!("{} (stale)", r.owner),
            (Some(to), _) if *to != r.owner => format!("{} (moving to {to})", r.owner),
            _ => r.owner.clone(),
        };
        println!(
            "{:>9} {:<12} {:>6} {:>8.1}s {:>10} {:>8}  {}",
            r.partition,
            owner,
            r.epoch,
            r.lease_age_ms as f64 / 1000.0,
            r.claimed,
            r.lag,
            followers.join(", ")
        );
    }
}
