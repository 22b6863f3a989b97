//! Partition leases: each partition has one owner at a time, the instance
//! that fans out its deliveries and answers its queries. One key per
//! partition (`p.<N>`) in the `im_partition_leases` bucket holds the owner,
//! an epoch that grows with every change of owner, and how far the owner
//! has claimed the partition's fan-out (IM_CONV and IM_RCPT positions).
//! Each instance of the pool says it is alive under `m.<instance>`.
//!
//! Every write to a partition's key is a compare-and-set on its revision,
//! so the key's history is the one order of who did what:
//! - an owner *claims* each batch's fan-out before publishing it (a claim
//!   renews the lease). A claim refused means the partition was taken:
//!   the batch is not published (fencing);
//! - an idle owner renews every `RENEW_EVERY` (a claim of the positions it
//!   has);
//! - an instance that has seen a key's revision stand still for
//!   `LEASE_TTL` by its own clock, while the bucket took its own writes
//!   (`Trust`), takes it over: epoch + 1, the positions kept, so the new
//!   owner publishes only what comes after them. An owner's claim after a
//!   pause or an election lands if nobody did (the revision is unchanged);
//!   no clock decides that an owner must stop;
//! - an owner that stops hands over: it writes its successor's name.
//!
//! So each position's fan-out is claimed by exactly one owner (claims are
//! contiguous and ordered by revision), and published at most once: an
//! owner that dies between a claim and its publish leaves those deliveries
//! to the clients' sync.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use im_streams::definitions::PARTITION_LEASES_BUCKET;

/// How long an observer waits, by its own clock, for a lease key's
/// revision to move before it takes the partition over. A failover costs
/// about this much; shorter makes a GC pause or a slow disk look like a
/// death. Three renewals fit in it, so one late renewal is ridden out.
pub const LEASE_TTL: Duration = Duration::from_secs(6);

/// How often an owner with nothing to claim renews its leases.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);

/// The first and the longest pause between attempts of a claim the bucket
/// did not answer: short, to resume within moments of the bucket coming
/// back; at most a renewal period, so a waiting claim is never later than
/// an idle owner's renewal would be.
const CLAIM_RETRY_MIN: Duration = Duration::from_millis(100);
const CLAIM_RETRY_MAX: Duration = RENEW_EVERY;

/// How long a claim is retried in all: past a leader election of the
/// bucket (4-9 s), short of a stop's bound.
const CLAIM_WAIT_MAX: Duration = Duration::from_secs(12);

/// What a partition's key holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub owner: String,
    /// Grows by one with every change of owner.
    pub epoch: u64,
    /// The last IM_CONV / IM_RCPT positions whose fan-out was claimed.
    pub conv: u64,
    pub rcpt: u64,
    /// The IM_CONV claim before the last: (prev_conv, conv] is the last
    /// batch claimed, which its owner may have died before publishing
    /// (`notice.rs`).
    #[serde(default)]
    pub prev_conv: u64,
    /// Grows with every write, so no two writes hold the same bytes: a
    /// write whose answer was lost is known to have landed when its exact
    /// value is read back.
    #[serde(default)]
    pub writes: u64,
}

impl Lease {
    /// The next write of this lease.
    fn next(&self) -> Lease {
        Lease {
            writes: self.writes + 1,
            ..self.clone()
        }
    }
}

/// What an instance of the pool says of itself under `m.<instance>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// (partition, IM_CONV position, IM_RCPT position) of every partition
    /// it folds: a successor is ready when it has caught up to the claim.
    pub applied: Vec<(u32, u64, u64)>,
}

pub fn lease_key(partition: u32) -> String {
    format!("p.{partition}")
}

pub fn member_key(instance: &str) -> String {
    format!("m.{instance}")
}

/// Where an operator moved a partition (`imctl projections move`): its
/// owner whenever that instance is live, whatever `assign` says.
pub fn move_key(partition: u32) -> String {
    format!("x.{partition}")
}

/// How long a member key may stand still before any instance deletes it: a
/// killed instance's key would otherwise stay in the bucket for ever. Far
/// past `LEASE_TTL`, so a paused instance is long out of every assignment.
pub const MEMBER_FORGET: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The partition's key moved: someone else owns it now.
    #[error(
        "partition {partition}: the lease was taken (revision {revision} is no longer the latest)"
    )]
    Lost { partition: u32, revision: u64 },
    #[error("lease bucket: {0}")]
    Kv(#[source] im_streams::error::BoxError),
    #[error("lease entry {key}: {source}")]
    Undecodable {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A lease this instance holds: the lease and the revision it wrote. Its
/// next write is a compare-and-set on that revision, so it lands only if
/// nobody wrote the key since (whatever the time: a claim after a pause or
/// an election lands when nobody took the partition meanwhile).
#[derive(Clone, Debug)]
pub struct Holding {
    pub partition: u32,
    pub lease: Lease,
    revision: u64,
}

impl Holding {
    pub fn revision(&self) -> u64 {
        self.revision
    }
}

/// One key as an observer saw it: its value, revision, and since when (its
/// own clock) that revision has stood.
#[derive(Clone, Debug)]
struct Seen {
    value: Bytes,
    revision: u64,
    since: Instant,
    /// Whether this board saw the key's revision move (not only its first
    /// sight, as a watch replays the bucket): a member whose key moved is
    /// alive now, not merely not yet judged dead.
    moved: bool,
}

/// Whether a board's clocks count: a key standing still says its writer
/// is gone only while the bucket took writes and the watch showed them.
/// A leader election of the bucket's stream (4-9 s in nats-server, longer
/// than the lease) stops every writer at once; counting it would make
/// every owner look dead when it comes back.
#[derive(Clone, Copy, Debug, Default)]
pub enum Trust {
    /// Counted.
    #[default]
    Always,
    /// Not counted since this instant: nothing is stale and every member
    /// is live; when trusted again, the clocks resume where they paused.
    Not(Instant),
}

/// What one instance knows of the bucket, kept by its watch.
#[derive(Clone, Debug, Default)]
pub struct Board {
    keys: BTreeMap<String, Seen>,
    trust: Trust,
}

impl Board {
    /// Stops counting until `trust_from`.
    pub fn distrust(&mut self, now: Instant) {
        if !matches!(self.trust, Trust::Not(_)) {
            self.trust = Trust::Not(now);
        }
    }

    /// Counts again from `now` (after `distrust`; a no-op while counting).
    /// The clocks pause rather than restart: every key's standing moves on
    /// by the time distrusted, so a member dead before it stays dead.
    pub fn trust_from(&mut self, now: Instant) {
        if let Trust::Not(since) = self.trust {
            let paused = now.saturating_duration_since(since);
            for seen in self.keys.values_mut() {
                seen.since = (seen.since + paused).min(now);
            }
            self.trust = Trust::Always;
        }
    }

    pub fn is_trusted(&self) -> bool {
        matches!(self.trust, Trust::Always)
    }

    /// How long a key has stood still in counted time.
    fn counted(&self, since: Instant, now: Instant) -> Duration {
        match self.trust {
            Trust::Always => now.saturating_duration_since(since),
            Trust::Not(_) => Duration::ZERO,
        }
    }

    /// A put seen at `now`; a new revision restarts the key's clock.
    pub fn observe(&mut self, key: &str, value: Bytes, revision: u64, now: Instant) {
        let moved = match self.keys.get(key) {
            Some(seen) if seen.revision >= revision => return,
            Some(_) => true,
            None => false,
        };
        let seen = Seen {
            value,
            revision,
            since: now,
            moved,
        };
        self.keys.insert(key.to_string(), seen);
    }

    /// Whether a member's key moved while this board watched it.
    pub fn member_moved(&self, instance: &str) -> bool {
        self.keys
            .get(&member_key(instance))
            .is_some_and(|s| s.moved)
    }

    /// A delete or purge.
    pub fn forget(&mut self, key: &str) {
        self.keys.remove(key);
    }

    /// A partition's lease, its revision, and whether it has stood still
    /// for `LEASE_TTL` (its owner is gone) at `now`.
    pub fn lease(
        &self,
        partition: u32,
        now: Instant,
    ) -> Result<Option<(Lease, u64, bool)>, LeaseError> {
        let key = lease_key(partition);
        let Some(seen) = self.keys.get(&key) else {
            return Ok(None);
        };
        let lease = decode(&key, &seen.value)?;
        let stale = self.counted(seen.since, now) >= LEASE_TTL;
        Ok(Some((lease, seen.revision, stale)))
    }

    /// How long a partition's lease revision has stood, by this clock.
    pub fn standing(&self, partition: u32, now: Instant) -> Option<Duration> {
        self.keys
            .get(&lease_key(partition))
            .map(|s| now.duration_since(s.since))
    }

    /// The instances whose member key moved within `LEASE_TTL`, sorted.
    pub fn live_members(&self, now: Instant) -> Vec<String> {
        self.members(|standing| standing < LEASE_TTL, now)
    }

    /// Member keys that stood still for `MEMBER_FORGET` at `now`.
    pub fn forgotten_members(&self, now: Instant) -> Vec<String> {
        self.members(|standing| standing >= MEMBER_FORGET, now)
    }

    fn members(&self, keep: impl Fn(Duration) -> bool, now: Instant) -> Vec<String> {
        self.keys
            .range("m.".to_string()..)
            .take_while(|(k, _)| k.starts_with("m."))
            .filter(|(_, s)| keep(self.counted(s.since, now)))
            .map(|(k, _)| k["m.".len()..].to_string())
            .collect()
    }

    /// Partitions an operator moved, and to whom.
    pub fn moves(&self) -> BTreeMap<u32, String> {
        self.keys
            .range("x.".to_string()..)
            .take_while(|(k, _)| k.starts_with("x."))
            .filter_map(|(k, s)| {
                let p = k["x.".len()..].parse().ok()?;
                Some((p, String::from_utf8(s.value.to_vec()).ok()?))
            })
            .collect()
    }

    /// The revision of a member's key (it moves with each announcement).
    pub fn member_revision(&self, instance: &str) -> Option<u64> {
        self.keys.get(&member_key(instance)).map(|s| s.revision)
    }

    /// A live member's report of itself.
    pub fn member(&self, instance: &str) -> Result<Option<Member>, LeaseError> {
        let key = member_key(instance);
        self.keys
            .get(&key)
            .map(|s| decode(&key, &s.value))
            .transpose()
    }
}

fn decode<T: for<'a> Deserialize<'a>>(key: &str, value: &[u8]) -> Result<T, LeaseError> {
    serde_json::from_slice(value).map_err(|source| LeaseError::Undecodable {
        key: key.to_string(),
        source,
    })
}

fn encode<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("a lease encodes"))
}

/// Who should own and follow each partition: the live instances sorted,
/// partition p owned by the (p mod n)th and followed by the next
/// `followers` of them (fewer when fewer run). Every instance computes the
/// same from the same members; shares differ by at most one partition.
pub fn assign(partitions: u32, live: &[String], followers: usize) -> Vec<(String, Vec<String>)> {
    let mut sorted = live.to_vec();
    sorted.sort();
    sorted.dedup();
    let n = sorted.len();
    if n == 0 {
        return Vec::new();
    }
    (0..partitions as usize)
        .map(|p| {
            let following = (1..=followers.min(n - 1))
                .map(|k| sorted[(p + k) % n].clone())
                .collect();
            (sorted[p % n].clone(), following)
        })
        .collect()
}

/// `assign` with the operator's moves: a partition moved to a live
/// instance is owned by it, the owner it displaced following in its place.
pub fn with_moves(
    mut assignment: Vec<(String, Vec<String>)>,
    moves: &BTreeMap<u32, String>,
    live: &[String],
) -> Vec<(String, Vec<String>)> {
    for (p, to) in moves {
        let Some((owner, followers)) = assignment.get_mut(*p as usize) else {
            continue;
        };
        if !live.contains(to) || owner == to {
            continue;
        }
        let displaced = std::mem::replace(owner, to.clone());
        let slot = followers.iter().position(|f| f == to);
        match slot {
            Some(i) => followers[i] = displaced,
            // No followers wanted: the displaced owner just stops.
            None if followers.is_empty() => {}
            None => followers[0] = displaced,
        }
    }
    assignment
}

/// Moves partition `p` to `to` (`None`: back to the even share), as
/// `imctl projections move` does.
pub async fn set_move(
    js: &jetstream::Context,
    partition: u32,
    to: Option<&str>,
) -> Result<(), LeaseError> {
    let kv = js
        .get_key_value(PARTITION_LEASES_BUCKET)
        .await
        .map_err(kv_err)?;
    let key = move_key(partition);
    match to {
        Some(to) => {
            kv.put(key, Bytes::from(to.to_string()))
                .await
                .map_err(kv_err)?;
        }
        None => kv.delete(key).await.map_err(kv_err)?,
    }
    Ok(())
}

/// The lease bucket as one instance uses it.
#[derive(Clone)]
pub struct Leases {
    kv: kv::Store,
    instance: String,
}

fn kv_err(e: impl std::error::Error + Send + Sync + 'static) -> LeaseError {
    LeaseError::Kv(Box::new(e))
}

impl Leases {
    /// The bucket (created with IM_CONV's replicas if missing).
    pub async fn open(js: &jetstream::Context, instance: &str) -> Result<Self, LeaseError> {
        let kv = im_streams::definitions::open_bucket(js, PARTITION_LEASES_BUCKET)
            .await
            .map_err(kv_err)?;
        Ok(Leases {
            kv,
            instance: instance.to_string(),
        })
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Every key as it stands, then every change: what a `Board` is kept by.
    pub async fn watch(&self) -> Result<kv::Watch, LeaseError> {
        self.kv.watch_with_history(">").await.map_err(kv_err)
    }

    /// Takes a partition: creates its key, or, given the revision seen
    /// standing for `LEASE_TTL` (or its own, handed to it), moves it to a
    /// new epoch owned by this instance with the same positions.
    pub async fn take(
        &self,
        partition: u32,
        seen: Option<(Lease, u64)>,
    ) -> Result<Holding, LeaseError> {
        self.take_from(partition, seen, Claimed::default()).await
    }

    /// `take`; a key created claims `from` (the streams' ends when a pool
    /// starts over an existing log: their events are not fanned out again).
    pub async fn take_from(
        &self,
        partition: u32,
        seen: Option<(Lease, u64)>,
        from: Claimed,
    ) -> Result<Holding, LeaseError> {
        let key = lease_key(partition);
        let (lease, revision) = match seen {
            None => {
                let lease = Lease {
                    owner: self.instance.clone(),
                    epoch: 1,
                    conv: from.conv,
                    rcpt: from.rcpt,
                    prev_conv: from.conv,
                    writes: 1,
                };
                let r = self.kv.create(&key, encode(&lease)).await;
                let revision = r.map_err(|e| match e.kind() {
                    kv::CreateErrorKind::AlreadyExists => LeaseError::Lost {
                        partition,
                        revision: 0,
                    },
                    _ => kv_err(e),
                })?;
                (lease, revision)
            }
            Some((before, revision)) => {
                let lease = Lease {
                    owner: self.instance.clone(),
                    epoch: before.epoch + 1,
                    ..before.next()
                };
                let revision = self.cas(partition, &lease, revision).await?;
                (lease, revision)
            }
        };
        Ok(Holding {
            partition,
            lease,
            revision,
        })
    }

    /// A partition's lease and revision as the bucket holds it now (not as
    /// a watch has shown it so far).
    pub async fn read(&self, partition: u32) -> Result<Option<(Lease, u64)>, LeaseError> {
        let key = lease_key(partition);
        match self.kv.entry(&key).await.map_err(kv_err)? {
            Some(e) if e.operation == kv::Operation::Put => {
                Ok(Some((decode(&key, &e.value)?, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Takes up a lease handed to this instance (seen with `owner` = its
    /// name at `revision`), renewing it: from here it is held.
    pub async fn adopt(
        &self,
        partition: u32,
        lease: Lease,
        revision: u64,
    ) -> Result<Holding, LeaseError> {
        if lease.owner != self.instance {
            return Err(LeaseError::Lost {
                partition,
                revision,
            });
        }
        let lease = lease.next();
        let revision = self.cas(partition, &lease, revision).await?;
        Ok(Holding {
            partition,
            lease,
            revision,
        })
    }

    /// Claims the fan-out up to (conv, rcpt) and renews the lease; an error
    /// means nothing may be published: `Lost` (taken) for good, the
    /// bucket's for now.
    pub async fn claim(&self, h: &mut Holding, conv: u64, rcpt: u64) -> Result<(), LeaseError> {
        let prev_conv = match conv > h.lease.conv {
            true => h.lease.conv,
            false => h.lease.prev_conv,
        };
        let next = Lease {
            conv: conv.max(h.lease.conv),
            rcpt: rcpt.max(h.lease.rcpt),
            prev_conv,
            ..h.lease.next()
        };
        h.revision = self.cas(h.partition, &next, h.revision).await?;
        h.lease = next;
        Ok(())
    }

    /// Gives a partition to `to` (a graceful stop, a rebalance, a move): it
    /// is its owner from this write on, at the next epoch.
    pub async fn hand_over(&self, h: Holding, to: &str) -> Result<Lease, LeaseError> {
        let next = Lease {
            owner: to.to_string(),
            epoch: h.lease.epoch + 1,
            ..h.lease.next()
        };
        self.cas(h.partition, &next, h.revision).await?;
        Ok(next)
    }

    /// Says this instance is alive, with the positions it has folded; the
    /// key's new revision.
    pub async fn announce(&self, member: &Member) -> Result<u64, LeaseError> {
        self.kv
            .put(member_key(&self.instance), encode(member))
            .await
            .map_err(kv_err)
    }

    /// Leaves the pool (a graceful stop): the others rebalance at once.
    pub async fn leave(&self) -> Result<(), LeaseError> {
        self.forget_member(&self.instance).await
    }

    /// Deletes a member's key (its own on leaving, or one long dead).
    pub async fn forget_member(&self, instance: &str) -> Result<(), LeaseError> {
        self.kv.delete(member_key(instance)).await.map_err(kv_err)
    }

    /// A compare-and-set of a partition's key. When the answer is lost (a
    /// timeout), the key is read back: the write happened if it holds
    /// exactly what was written.
    async fn cas(&self, partition: u32, next: &Lease, revision: u64) -> Result<u64, LeaseError> {
        let key = lease_key(partition);
        match self.kv.update(&key, encode(next), revision).await {
            Ok(r) => Ok(r),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // This very write may have landed on an earlier attempt
                // whose answer was lost: then the key holds its bytes.
                match self.kv.entry(&key).await {
                    Ok(Some(en)) if en.value == encode(next) => Ok(en.revision),
                    _ => Err(LeaseError::Lost {
                        partition,
                        revision,
                    }),
                }
            }
            Err(e) => {
                let entry = self.kv.entry(&key).await.map_err(kv_err)?;
                match entry {
                    // Every write's bytes differ (`writes`): this one landed.
                    Some(en) if en.value == encode(next) => Ok(en.revision),
                    Some(en) if en.revision != revision => Err(LeaseError::Lost {
                        partition,
                        revision,
                    }),
                    // Unchanged: it did not land (yet); the caller's next
                    // attempt, at the same revision, decides.
                    _ => Err(kv_err(e)),
                }
            }
        }
    }
}

/// What a unit of the pool is to its partition.
#[derive(Clone)]
pub enum LeaseRole {
    /// It owns the partition: each batch's fan-out is claimed before it is
    /// published, and a refused claim stops the unit (`RunError::Lease`).
    Owner(Arc<OwnerGate>),
    /// It follows the owner: it folds nothing past the owner's claim, so
    /// that, taking over, it publishes exactly what follows the claim.
    Follower(tokio::sync::watch::Receiver<Claimed>),
}

impl std::fmt::Debug for LeaseRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaseRole::Owner(_) => f.write_str("Owner"),
            LeaseRole::Follower(limit) => write!(f, "Follower({:?})", *limit.borrow()),
        }
    }
}

/// Positions whose fan-out an owner claimed: (IM_CONV, IM_RCPT).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Claimed {
    pub conv: u64,
    pub rcpt: u64,
}

impl Claimed {
    pub fn of(lease: &Lease) -> Claimed {
        Claimed {
            conv: lease.conv,
            rcpt: lease.rcpt,
        }
    }
}

/// An owner's lease, shared by its pipeline (claims per batch) and its
/// renewals.
pub struct OwnerGate {
    leases: Leases,
    holding: tokio::sync::Mutex<Holding>,
    /// Set when a claim or renewal was refused (the partition taken): the
    /// unit is not the owner any more.
    lost: std::sync::atomic::AtomicBool,
}

impl OwnerGate {
    pub fn new(leases: Leases, holding: Holding) -> Arc<Self> {
        Arc::new(OwnerGate {
            leases,
            holding: tokio::sync::Mutex::new(holding),
            lost: Default::default(),
        })
    }

    /// Whether a claim was refused.
    pub fn is_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The positions claimed so far.
    pub async fn claimed(&self) -> Claimed {
        Claimed::of(&self.holding.lock().await.lease)
    }

    /// Claims a batch's fan-out (its last positions; 0 for a stream it has
    /// none of) before it is published. The bucket not answering (a leader
    /// election, a reconnect) is waited out for `CLAIM_WAIT_MAX`, retrying
    /// every `CLAIM_RETRY_MAX` at most: nothing is published meanwhile, and
    /// the claim lands afterwards if nobody took the partition. `Lost` is
    /// final at once.
    pub async fn claim(&self, conv: u64, rcpt: u64) -> Result<(), LeaseError> {
        let mut h = self.holding.lock().await;
        let mut pause = CLAIM_RETRY_MIN;
        let give_up = Instant::now() + CLAIM_WAIT_MAX;
        loop {
            if self.is_lost() {
                return Err(LeaseError::Lost {
                    partition: h.partition,
                    revision: h.revision,
                });
            }
            match self.leases.claim(&mut h, conv, rcpt).await {
                Err(e @ LeaseError::Lost { .. }) => {
                    self.lost.store(true, std::sync::atomic::Ordering::SeqCst);
                    return Err(e);
                }
                // Bounded, so a stop or a hand-over never waits on it for
                // long: the unit ends, and its lease, which nobody took, is
                // adopted again once the bucket answers.
                Err(e) if Instant::now() >= give_up => return Err(e),
                Err(e) => {
                    tracing::warn!(partition = h.partition, error = %e, "claim not written: retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(CLAIM_RETRY_MAX);
                }
                ok => return ok,
            }
        }
    }

    /// Renews the lease at the positions claimed so far.
    pub async fn renew(&self) -> Result<(), LeaseError> {
        self.claim(0, 0).await
    }

    pub async fn holding(&self) -> Holding {
        self.holding.lock().await.clone()
    }
}

/// Applies one watched entry to a board.
pub fn apply_entry(board: &mut Board, entry: &kv::Entry, now: Instant) {
    match entry.operation {
        kv::Operation::Put => board.observe(&entry.key, entry.value.clone(), entry.revision, now),
        kv::Operation::Delete | kv::Operation::Purge => board.forget(&entry.key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn shares_are_even_followers_are_others_and_order_does_not_matter() {
        for n in 1..=5usize {
            let live: Vec<String> = (0..n).map(|i| format!("i{i}")).collect();
            let mut reversed = live.clone();
            reversed.reverse();
            let a = assign(16, &live, 1);
            assert_eq!(a, assign(16, &reversed, 1));
            let mut shares = BTreeMap::new();
            for (owner, followers) in &a {
                *shares.entry(owner.clone()).or_insert(0) += 1;
                assert_eq!(followers.len(), usize::from(n > 1));
                assert!(!followers.contains(owner));
            }
            let (lo, hi) = (shares.values().min(), shares.values().max());
            assert!(hi.unwrap() - lo.unwrap() <= 1, "{shares:?}");
            assert_eq!(shares.len(), n.min(16));
        }
        assert!(assign(16, &[], 1).is_empty());
        let two = assign(4, &names(&["b", "a"]), 3);
        assert_eq!(two[0], ("a".to_string(), names(&["b"])));
        assert_eq!(two[1], ("b".to_string(), names(&["a"])));
    }

    #[test]
    fn a_key_is_stale_only_after_its_revision_stood_for_the_ttl() {
        let t0 = Instant::now();
        let mut board = Board::default();
        let lease = encode(&Lease {
            owner: "a".into(),
            epoch: 1,
            conv: 5,
            ..Default::default()
        });
        board.observe("p.3", lease.clone(), 7, t0);
        let at = |d: Duration| board.lease(3, t0 + d).unwrap().unwrap().2;
        assert!(!at(LEASE_TTL - Duration::from_millis(1)));
        assert!(at(LEASE_TTL));
        // The same revision seen again does not restart its clock; a new
        // one does; an older one (a late watch) is ignored.
        board.observe("p.3", lease.clone(), 7, t0 + LEASE_TTL);
        assert!(board.lease(3, t0 + LEASE_TTL).unwrap().unwrap().2);
        board.observe("p.3", lease.clone(), 8, t0 + LEASE_TTL);
        assert!(!board.lease(3, t0 + LEASE_TTL).unwrap().unwrap().2);
        board.observe("p.3", lease, 6, t0 + 2 * LEASE_TTL);
        assert_eq!(board.lease(3, t0 + LEASE_TTL).unwrap().unwrap().1, 8);
        assert!(board.lease(4, t0).unwrap().is_none());
    }

    #[test]
    fn a_move_to_a_live_instance_displaces_the_owner_into_its_place() {
        let live = names(&["a", "b", "c"]);
        let even = assign(3, &live, 1);
        assert_eq!(even[0], ("a".to_string(), names(&["b"])));
        let moves = BTreeMap::from([
            (0, "b".to_string()),
            (1, "a".to_string()),
            (2, "gone".to_string()),
            (9, "a".to_string()),
        ]);
        let moved = with_moves(even.clone(), &moves, &live);
        // To its follower: the two swap.
        assert_eq!(moved[0], ("b".to_string(), names(&["a"])));
        // To an instance that did not follow it: the owner follows instead.
        assert_eq!(moved[1], ("a".to_string(), names(&["b"])));
        // To an instance not live, or a partition that does not exist: ignored.
        assert_eq!(moved[2], even[2]);
        let alone = with_moves(assign(1, &names(&["a", "b"]), 0), &moves, &live);
        assert_eq!(alone[0], ("b".to_string(), vec![]));
    }

    #[test]
    fn time_while_distrusted_does_not_count() {
        let t0 = Instant::now();
        let mut board = Board::default();
        board.observe("p.1", encode(&Lease::default()), 1, t0);
        board.observe("m.a", encode(&Member::default()), 2, t0);
        let half = LEASE_TTL / 2;
        board.distrust(t0 + half);
        let late = t0 + 3 * LEASE_TTL;
        assert!(!board.lease(1, late).unwrap().unwrap().2);
        assert_eq!(board.live_members(late), names(&["a"]));
        assert!(board.forgotten_members(t0 + 2 * MEMBER_FORGET).is_empty());
        // Counted again from where the clocks paused: half the lease had
        // passed before, the other half is left.
        board.trust_from(late);
        assert!(
            !board
                .lease(1, late + half - Duration::from_millis(1))
                .unwrap()
                .unwrap()
                .2
        );
        assert!(board.lease(1, late + half).unwrap().unwrap().2);
        assert!(board.live_members(late + half).is_empty());
        // Trusting again while trusted changes nothing.
        board.trust_from(late + half);
        assert!(board.lease(1, late + half).unwrap().unwrap().2);
    }

    #[test]
    fn a_member_seen_only_in_a_replay_has_not_moved() {
        let t0 = Instant::now();
        let mut board = Board::default();
        board.observe("m.a", encode(&Member::default()), 1, t0);
        assert!(!board.member_moved("a"));
        board.observe("m.a", encode(&Member::default()), 1, t0);
        assert!(!board.member_moved("a"));
        board.observe("m.a", encode(&Member::default()), 4, t0);
        assert!(board.member_moved("a"));
    }

    #[test]
    fn members_live_while_they_announce() {
        let t0 = Instant::now();
        let mut board = Board::default();
        board.observe("m.b", encode(&Member::default()), 1, t0);
        board.observe("m.a", encode(&Member::default()), 2, t0 + LEASE_TTL);
        board.observe("p.0", encode(&Lease::default()), 3, t0);
        assert_eq!(board.live_members(t0), names(&["a", "b"]));
        assert_eq!(board.live_members(t0 + LEASE_TTL), names(&["a"]));
        assert!(board.forgotten_members(t0).is_empty());
        assert_eq!(board.forgotten_members(t0 + MEMBER_FORGET), names(&["b"]));
        board.forget("m.a");
        assert!(board.live_members(t0 + LEASE_TTL).is_empty());
    }
}
