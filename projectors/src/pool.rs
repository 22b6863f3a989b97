//! A pool of projector instances sharing the partitions by leases
//! (`lease.rs`, I32). Each instance runs a *unit* per partition it owns or
//! follows: a supervised projector of that one partition on its own store
//! (`<data dir>/p<N>`, instance `<instance>-p<N>`). Every `TICK` (and at
//! each change of the lease bucket) it reconciles what runs with what the
//! board says:
//! - the live members (`m.<instance>`, announced every `RENEW_EVERY` with
//!   the positions each unit has folded) and `assign` say who should own
//!   and follow each partition;
//! - a free partition is created by its assigned owner; a lease that stood
//!   still for `LEASE_TTL` (its owner gone) is taken by the assigned owner
//!   among the live, at the next epoch;
//! - a lease that names this instance (taken, handed over, or its own from
//!   before a restart) is served by a follower unit until it has folded up
//!   to the claim, then adopted, and the unit started again as owner: the
//!   new owner publishes exactly what follows the claim;
//! - an owner whose partition is assigned elsewhere hands it over once the
//!   successor reports it has caught up to the claim (no delivery gap
//!   beyond the successor's restart), and on a graceful stop it hands every
//!   partition to a live follower before it leaves.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::watch;

use crate::lease::{
    apply_entry, assign, with_moves, Board, Claimed, Lease, LeaseError, LeaseRole, Leases, Member,
    OwnerGate, RENEW_EVERY,
};
use crate::metrics::{View, Viewed, FAILOVER_SECONDS, LEASE_CHANGES};
use crate::projector::{Clients, ProjectorConfig, ProjectorError, STOP_MAX};
use crate::query::QueryContext;
use crate::Serves;
use im_streams::definitions::{CONV_STREAM, RCPT_STREAM};

/// How often an instance reconciles its units with the board when nothing
/// changes: a lease's staleness is judged by the clock, not by an event.
pub const TICK: Duration = Duration::from_millis(500);

/// How far (in stream positions) an assigned successor may trail the
/// owner's claim when the owner starts handing over: it folds the rest
/// (the partition's events among them) before it publishes. A successor
/// that had to stand exactly at a claim that moves with every batch would
/// never be handed anything under load.
pub const HANDOVER_SLACK: u64 = 10_000;

/// How long a unit taking a partition over may fold nothing while it is
/// still behind the claim before it is started again: renewing a lease it
/// cannot serve would hold the partition without an owner for ever.
pub const CATCH_UP_STALL: Duration = Duration::from_secs(30);

/// How long a take-over is tracked for the failover metric while its lease
/// does not (yet) name this instance on its board.
const FAILOVER_TRACKED_MAX: Duration = Duration::from_secs(60);

/// How long a leaving instance waits for hand-overs to it that others
/// decided before they saw it leave (they reconcile every `TICK`).
const LEAVE_SETTLE: Duration = Duration::from_secs(1);

/// How long an instance whose catching up stalled stops renewing the lease
/// it was taking: long enough for it to go stale and a follower to take it.
const STALL_LET_GO: Duration = Duration::from_secs(15);

/// How long after an announcement the watch may still not show it before
/// the watch is taken as lagging (its consumer lost) and restarted.
const WATCH_LAG_MAX: Duration = Duration::from_secs(3);

/// Watched entries applied before one reconcile: a burst of changes (a
/// pool starting, every member announcing) is reconciled once, not once
/// per entry, and a flood still yields to the tick.
const ENTRIES_PER_ROUND: usize = 256;

/// Followers per partition by default, when enough instances run: taking a
/// partition over then costs catching up seconds of log, not a rebuild.
pub const DEFAULT_FOLLOWERS: usize = 1;

#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub instance: String,
    /// Each unit's store is `<data_dir>/p<N>`.
    pub data_dir: PathBuf,
    pub fanout_threshold: usize,
    pub followers: usize,
    /// Every unit opens content with it (`ProjectorConfig::kek`).
    pub kek: im_streams::content::KekArgs,
    /// The engine each unit's new store is made in.
    pub store_engine: crate::store::Engine,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("streams: {0}")]
    Streams(#[from] im_streams::StreamsError),
    #[error("instance name: {0}")]
    Instance(#[source] im_streams::ids::IdError),
}

/// One partition's unit: a supervised projector as owner or follower.
struct Unit {
    gate: Option<Arc<OwnerGate>>,
    /// What it had folded when last seen to move, and when.
    progress: (Option<Claimed>, Instant),
    /// An owner's renewals, which live exactly as long as the unit.
    renewer: Option<tokio::task::JoinHandle<()>>,
    limit: Option<watch::Sender<Claimed>>,
    current: watch::Receiver<Option<Arc<QueryContext>>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ProjectorError>>,
}

impl Unit {
    fn is_owner(&self) -> bool {
        self.gate.is_some()
    }

    /// The positions every projection of the unit has applied (None while
    /// it is starting).
    fn applied(&self) -> Option<Claimed> {
        let context = self.current.borrow().clone()?;
        let mut at = Claimed {
            conv: u64::MAX,
            rcpt: u64::MAX,
        };
        for state in &context.projections {
            let a = *state.applied.borrow();
            at.conv = at.conv.min(a.conv);
            if state.projection.reads_receipts() {
                at.rcpt = at.rcpt.min(a.rcpt);
            }
        }
        Some(at)
    }

    /// Whether it has folded nothing for `CATCH_UP_STALL`.
    fn stalled(&mut self, now: Instant) -> bool {
        let applied = self.applied();
        if applied != self.progress.0 {
            self.progress = (applied, now);
        }
        now.duration_since(self.progress.1) >= CATCH_UP_STALL
    }

    /// Whether it has folded everything up to the claim.
    fn caught_up(&self, claimed: Claimed) -> bool {
        self.applied()
            .is_some_and(|a| a.conv >= claimed.conv && a.rcpt >= claimed.rcpt)
    }

    /// Stops it gracefully: its last batch committed (and, an owner,
    /// claimed and published).
    async fn finish(mut self) {
        self.stop.send_replace(true);
        let bound = STOP_MAX + Duration::from_secs(5);
        if tokio::time::timeout(bound, &mut self.task).await.is_err() {
            tracing::warn!("a unit did not stop within its bound");
        }
    }
}

/// A unit dropped without `finish` (its pool gone) stops at once, as a
/// killed process would: it must not go on claiming and publishing.
impl Drop for Unit {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(r) = &self.renewer {
            r.abort();
        }
    }
}

/// Renews an owner's lease every `RENEW_EVERY` while its projector runs
/// (not while it starts, restarts or waits for its disk: a unit that
/// cannot serve lets the lease go stale, and another instance takes it),
/// until the lease is lost.
async fn renew(gate: Arc<OwnerGate>, current: watch::Receiver<Option<Arc<QueryContext>>>) {
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        if gate.is_lost() {
            return;
        }
        if current.borrow().is_none() {
            continue;
        }
        if let Err(e) = gate.renew().await {
            tracing::warn!(error = %e, "lease not renewed");
        }
    }
}

/// The pool as one instance runs it.
pub struct Pool {
    clients: Clients,
    config: PoolConfig,
    leases: Leases,
    partitions: u32,
    board: Board,
    units: BTreeMap<u32, Unit>,
    /// Partitions this instance owns, for its heartbeat.
    owned: watch::Sender<Vec<u32>>,
    /// Its units' stores and readiness, for the metrics listener.
    view: watch::Sender<View>,
    /// Partitions taken from a stale lease: since when their last owner
    /// was silent, until this instance serves them (failover time).
    failing_over: BTreeMap<u32, Instant>,
    /// Partitions whose catching up stalled here, and when.
    stalled: BTreeMap<u32, Instant>,
    /// Owner units started on a lease this process did not hold: the last
    /// claimed batch (prev_conv, conv] to notify of once they serve.
    notices_due: BTreeMap<u32, (u64, u64)>,
    /// Its last announcement's revision and when it was sent (None: it
    /// failed): the board is trusted once the watch shows it.
    announced: Option<(u64, Instant)>,
    /// Members whose lease this instance found stale, with their member
    /// key's revision then: nothing is handed to them until they announce
    /// again. A dead member still looks live for a moment after its lease
    /// goes stale (it announced after its last renewal), and handing its
    /// partition straight back would cost another lease.
    suspects: BTreeMap<String, Option<u64>>,
}

impl Pool {
    pub async fn new(clients: Clients, config: PoolConfig) -> Result<Self, PoolError> {
        im_streams::ids::validate_id(im_streams::ids::IdKind::Device, &config.instance)
            .map_err(PoolError::Instance)?;
        let js = async_nats::jetstream::new(clients.publish.clone());
        let topology = im_streams::definitions::read_topology(&js).await?;
        let leases = Leases::open(&js, &config.instance).await?;
        Ok(Pool {
            clients,
            config,
            leases,
            partitions: topology.partitions,
            board: Board::default(),
            units: BTreeMap::new(),
            owned: watch::Sender::new(Vec::new()),
            view: watch::Sender::new(View {
                contexts: Vec::new(),
                not_ready: Some("joining the pool".into()),
            }),
            failing_over: BTreeMap::new(),
            stalled: BTreeMap::new(),
            suspects: BTreeMap::new(),
            announced: None,
            notices_due: BTreeMap::new(),
        })
    }

    /// The partitions owned, as they change.
    pub fn owned(&self) -> watch::Receiver<Vec<u32>> {
        self.owned.subscribe()
    }

    /// Its units' stores and readiness, as they change.
    pub fn view(&self) -> Viewed {
        self.view.subscribe()
    }

    /// Runs until `stop`; then hands every owned partition over and leaves.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<(), PoolError> {
        let mut watch = Some(self.leases.watch().await?);
        let mut tick = tokio::time::interval(TICK);
        let mut announced = Instant::now() - RENEW_EVERY;
        loop {
            tokio::select! {
                biased;
                _ = crate::pipeline::stopped(&mut stop) => break,
                entry = next_entry(&mut watch) => match (entry, watch.as_mut()) {
                    (Some(entry), Some(w)) => self.observe(entry, w),
                    _ => watch = None,
                },
                _ = tick.tick() => {}
            }
            if announced.elapsed() >= RENEW_EVERY {
                announced = Instant::now();
                self.announce().await;
                self.forget_dead_members().await;
            }
            if self.judge_trust() || watch.is_none() {
                // Behind (its consumer lost with the bucket's leader, say)
                // or ended: a new one replays the bucket from its start.
                watch = match self.leases.watch().await {
                    Ok(w) => Some(w),
                    Err(e) => {
                        tracing::warn!(error = %e, "lease watch not restarted");
                        None
                    }
                };
            }
            self.reap().await;
            self.reconcile_all().await;
            self.report();
        }
        self.leave().await;
        Ok(())
    }

    /// Whether this instance's board may judge staleness now: its last
    /// announcement landed and the watch has shown it. Distrusted while
    /// not (nothing is stale: the bucket or the watch was down, not the
    /// owners); true when the watch lags and must be restarted.
    fn judge_trust(&mut self) -> bool {
        let now = Instant::now();
        let Some((revision, at)) = self.announced else {
            self.board.distrust(now);
            return false;
        };
        let me = &self.config.instance;
        if self.board.member_revision(me) >= Some(revision) {
            self.board.trust_from(now);
            return false;
        }
        if now - at < WATCH_LAG_MAX {
            return false;
        }
        if self.board.is_trusted() {
            tracing::warn!("the lease watch lags: restarted, no lease judged meanwhile");
        }
        self.board.distrust(now);
        // Judged again from the next announcement, which the new watch
        // must show: not restarted at every pass meanwhile.
        self.announced = None;
        true
    }

    /// A watched entry, and those already waiting behind it.
    fn observe(
        &mut self,
        mut entry: Result<
            async_nats::jetstream::kv::Entry,
            async_nats::jetstream::kv::WatcherError,
        >,
        watch: &mut async_nats::jetstream::kv::Watch,
    ) {
        use futures::FutureExt;
        for _ in 0..ENTRIES_PER_ROUND {
            match entry {
                Ok(e) => apply_entry(&mut self.board, &e, Instant::now()),
                Err(e) => tracing::warn!(error = %e, "lease watch"),
            }
            match watch.next().now_or_never() {
                Some(Some(next)) => entry = next,
                _ => return,
            }
        }
    }

    /// Every partition: what this instance should run for it, made so.
    async fn reconcile_all(&mut self) {
        let me = self.config.instance.clone();
        let mut live = self.board.live_members(Instant::now());
        if !live.contains(&me) {
            live.push(me);
        }
        let assignment = assign(self.partitions, &live, self.config.followers);
        let assignment = with_moves(assignment, &self.board.moves(), &live);
        for (p, (owner, followers)) in (0..self.partitions).zip(assignment) {
            match self.reconcile(p, &owner, &followers).await {
                Ok(()) => {}
                // Another instance wrote first (a race to create or
                // take): the board shows it at the next reconcile.
                Err(e @ LeaseError::Lost { .. }) => {
                    tracing::debug!(partition = p, error = %e, "partition lease")
                }
                Err(e) => tracing::warn!(partition = p, error = %e, "partition lease"),
            }
        }
    }

    /// What it owns (the heartbeat), its stores and readiness (metrics),
    /// and the failovers it has completed.
    fn report(&mut self) {
        self.owned.send_replace(self.owned_now());
        let (me, now) = (&self.config.instance, Instant::now());
        let mine = |board: &Board, p: u32| matches!(board.lease(p, now), Ok(Some((l, _, _))) if l.owner == *me);
        // Kept until the owner unit serves (the board may show the take a
        // moment later), or forgotten after a while.
        self.failing_over
            .retain(|p, since| mine(&self.board, *p) || since.elapsed() < FAILOVER_TRACKED_MAX);
        self.stalled.retain(|_, t| now - *t < STALL_LET_GO);
        let board = &self.board;
        self.suspects
            .retain(|m, r| r.is_some() && *r == board.member_revision(m));
        let mut view = View::default();
        for (p, unit) in &self.units {
            let context = unit.current.borrow().clone();
            match (context, unit.is_owner()) {
                (Some(c), owner) => {
                    if owner {
                        if let Some(since) = self.failing_over.remove(p) {
                            FAILOVER_SECONDS.observe(since.elapsed().as_secs_f64());
                        }
                        if let Some(batch) = self.notices_due.remove(p) {
                            let (ctx, publish) = (c.clone(), self.clients.publish.clone());
                            tokio::spawn(notify(ctx, publish, *p, batch));
                        }
                    }
                    view.contexts.push(c);
                }
                (None, true) => {
                    view.not_ready
                        .get_or_insert_with(|| format!("partition {p}: its owner is starting"));
                }
                (None, false) => {}
            }
        }
        self.view.send_replace(view);
    }

    /// Deletes the keys of members silent for `MEMBER_FORGET`.
    async fn forget_dead_members(&mut self) {
        for dead in self.board.forgotten_members(Instant::now()) {
            match self.leases.forget_member(&dead).await {
                Ok(()) => tracing::info!(member = %dead, "a long-silent member forgotten"),
                Err(e) => tracing::debug!(member = %dead, error = %e, "forgetting a member"),
            }
        }
    }

    fn owned_now(&self) -> Vec<u32> {
        self.units
            .iter()
            .filter(|(_, u)| u.is_owner())
            .map(|(p, _)| *p)
            .collect()
    }

    /// Says it is alive, with what each unit has folded (owners renew
    /// their leases from their gates' own tasks).
    async fn announce(&mut self) {
        let applied = self
            .units
            .iter()
            .filter_map(|(p, u)| u.applied().map(|a| (*p, a.conv, a.rcpt)))
            .collect();
        let member = Member { applied };
        let sent = Instant::now();
        match tokio::time::timeout(RENEW_EVERY, self.leases.announce(&member)).await {
            Ok(Ok(revision)) => self.announced = Some((revision, sent)),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "announcing this instance");
                self.announced = None;
            }
            Err(_) => {
                tracing::warn!(
                    "announcing this instance: no answer (the bucket electing a leader?)"
                );
                self.announced = None;
            }
        }
    }

    /// Drops units whose projector ended (a refused claim, an error no
    /// restart mends) or whose lease is lost: the next reconcile starts
    /// what is wanted.
    async fn reap(&mut self) {
        let ended: Vec<u32> = self
            .units
            .iter()
            .filter(|(_, u)| u.task.is_finished() || u.gate.as_ref().is_some_and(|g| g.is_lost()))
            .map(|(p, _)| *p)
            .collect();
        for p in ended {
            if let Some(mut unit) = self.units.remove(&p) {
                if unit.gate.as_ref().is_some_and(|g| g.is_lost()) {
                    LEASE_CHANGES.get_or_create(&kind("lost")).inc();
                }
                if !unit.task.is_finished() {
                    unit.finish().await;
                    continue;
                }
                // Its projector is gone already: its outcome is read once
                // (`finish` would poll the finished task again), and the
                // unit dropped, its renewals with it.
                match (&mut unit.task).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(partition = p, error = %e, "a unit ended"),
                    Err(e) => tracing::warn!(partition = p, error = %e, "a unit's task failed"),
                }
            }
        }
    }

    /// One partition, given who should own and follow it.
    async fn reconcile(
        &mut self,
        p: u32,
        owner: &str,
        followers: &[String],
    ) -> Result<(), LeaseError> {
        let now = Instant::now();
        let me = self.config.instance.clone();
        let wanted = owner == me || followers.contains(&me);
        let Some((lease, revision, stale)) = self.board.lease(p, now)? else {
            if owner == me {
                // Claimed up to the partition's last events: a pool started
                // over an existing log fans none of it out again.
                let ends = self.partition_ends(p).await?;
                let held = self.leases.take_from(p, None, ends).await?;
                LEASE_CHANGES.get_or_create(&kind("created")).inc();
                self.start_owner(p, held).await;
            } else if wanted {
                self.follow(p, Claimed::default());
            }
            return Ok(());
        };
        let holding = self.units.get(&p).is_some_and(Unit::is_owner);
        if holding && lease.owner == me {
            return self.hand_over_if_ready(p, owner, &lease).await;
        }
        if holding {
            // Taken from it (its claims would be refused): it must not go
            // on answering the partition's queries.
            tracing::info!(
                partition = p,
                "the partition was taken: its owner unit stops"
            );
            self.stop_unit(p).await;
        }
        if lease.owner == me {
            return self.take_up(p, lease, revision).await;
        }
        let successor = owner == me || (owner == lease.owner && followers.first() == Some(&me));
        if stale && successor {
            // Taken at the next epoch; served from the next reconcile on,
            // once the watch shows it (`take_up`).
            let silent = self.board.standing(p, now).unwrap_or_default();
            let suspect = self.board.member_revision(&lease.owner);
            self.suspects.insert(lease.owner.clone(), suspect);
            let held = self.leases.take(p, Some((lease, revision))).await?;
            LEASE_CHANGES.get_or_create(&kind("taken")).inc();
            self.failing_over.insert(p, now - silent);
            tracing::info!(
                partition = p,
                epoch = held.lease.epoch,
                "partition taken over"
            );
            return Ok(());
        }
        match wanted {
            true => self.follow(p, Claimed::of(&lease)),
            false => self.stop_unit(p).await,
        }
        Ok(())
    }

    /// A lease that names this instance: followed up to its claim, then
    /// adopted and served by an owner unit.
    async fn take_up(&mut self, p: u32, lease: Lease, revision: u64) -> Result<(), LeaseError> {
        let claimed = Claimed::of(&lease);
        self.follow(p, claimed);
        let now = Instant::now();
        if !self.units.get(&p).is_some_and(|u| u.caught_up(claimed)) {
            if self.units.get_mut(&p).is_some_and(|u| u.stalled(now)) {
                // Let go: no more renewals for a while, so that a
                // follower takes the lease; the unit starts afresh.
                tracing::warn!(partition = p, "catching up stalled: the lease is let go");
                self.stalled.insert(p, now);
                self.stop_unit(p).await;
                return Ok(());
            }
            // Renewed while it catches up, so no one takes it meanwhile.
            let let_go = self
                .stalled
                .get(&p)
                .is_some_and(|t| now - *t < STALL_LET_GO);
            let standing = self.board.standing(p, now);
            if !let_go && standing.is_some_and(|d| d >= RENEW_EVERY) {
                self.leases.adopt(p, lease, revision).await?;
            }
            return Ok(());
        }
        let held = self.leases.adopt(p, lease, revision).await?;
        LEASE_CHANGES.get_or_create(&kind("adopted")).inc();
        self.stop_unit(p).await;
        self.start_owner(p, held).await;
        Ok(())
    }

    /// An owned partition assigned elsewhere goes to its assigned owner
    /// once that one has folded up to the claim.
    async fn hand_over_if_ready(
        &mut self,
        p: u32,
        owner: &str,
        lease: &Lease,
    ) -> Result<(), LeaseError> {
        if owner == self.config.instance {
            return Ok(());
        }
        let suspect = self
            .suspects
            .get(owner)
            .is_some_and(|r| *r == self.board.member_revision(owner));
        // Only to a member seen announcing (not one the watch merely
        // replayed), and not while this board's clocks are paused.
        if suspect || !self.board.member_moved(owner) || !self.board.is_trusted() {
            return Ok(());
        }
        let ready = self.board.member(owner)?.is_some_and(|m| {
            m.applied.iter().any(|(q, c, r)| {
                *q == p && c + HANDOVER_SLACK >= lease.conv && r + HANDOVER_SLACK >= lease.rcpt
            })
        });
        if ready {
            self.hand_over(p, owner).await?;
        }
        Ok(())
    }

    /// Stops the owner unit (its last batch claimed and published), then
    /// writes the successor's name; this instance follows on if wanted.
    async fn hand_over(&mut self, p: u32, to: &str) -> Result<(), LeaseError> {
        let Some(unit) = self.units.remove(&p) else {
            return Ok(());
        };
        let gate = unit.gate.clone();
        unit.finish().await;
        if let Some(gate) = gate {
            let given = self.leases.hand_over(gate.holding().await, to).await?;
            LEASE_CHANGES.get_or_create(&kind("handed_over")).inc();
            tracing::info!(
                partition = p,
                to,
                epoch = given.epoch,
                "partition handed over"
            );
        }
        Ok(())
    }

    /// The last positions of partition `p`'s events in each stream now (0
    /// for none): a new lease's claim. A position of the partition's own,
    /// not the stream's end, which a follower of the partition could never
    /// reach (its consumer sees only the partition's events).
    async fn partition_ends(&self, p: u32) -> Result<Claimed, LeaseError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind as Kind;
        let js = async_nats::jetstream::new(self.clients.publish.clone());
        let topology = im_streams::Topology::new(self.partitions);
        let filters = [
            (CONV_STREAM, topology.conv_partition_filter(p)),
            (RCPT_STREAM, topology.rcpt_partition_filter(p)),
        ];
        let mut ends = [0; 2];
        for (i, (name, filter)) in filters.into_iter().enumerate() {
            let stream = js
                .get_stream(name)
                .await
                .map_err(|e| LeaseError::Kv(Box::new(e)))?;
            ends[i] = match stream.get_last_raw_message_by_subject(&filter).await {
                Ok(last) => last.sequence,
                Err(e) if e.kind() == Kind::NoMessageFound => 0,
                Err(e) => return Err(LeaseError::Kv(Box::new(e))),
            };
        }
        Ok(Claimed {
            conv: ends[0],
            rcpt: ends[1],
        })
    }

    /// The live other member that has folded most of `p` (a follower has
    /// it all but the last moments): the successor that catches up soonest.
    fn successor(&self, p: u32, others: &[String]) -> Option<String> {
        let folded = |m: &String| {
            let member = self.board.member(m).ok().flatten().unwrap_or_default();
            let of_p = member.applied.iter().find(|(q, _, _)| *q == p);
            of_p.map_or((0, 0), |(_, c, r)| (*c, *r))
        };
        others.iter().max_by_key(|m| folded(m)).cloned()
    }

    /// Graceful stop: each owned partition to the live other member that
    /// has folded most of it, every unit stopped, the pool left.
    async fn leave(&mut self) {
        // Out of every assignment first, so no one hands it more meanwhile.
        if let Err(e) = self.leases.leave().await {
            tracing::warn!(error = %e, "leaving the pool");
        }
        let me = self.config.instance.clone();
        let others: Vec<String> = self
            .board
            .live_members(Instant::now())
            .into_iter()
            .filter(|m| *m != me)
            .collect();
        for p in self.owned_now() {
            let to = self.successor(p, &others);
            match to {
                Some(to) => {
                    if let Err(e) = self.hand_over(p, &to).await {
                        tracing::warn!(partition = p, error = %e, "hand-over on stop");
                    }
                }
                None => self.stop_unit(p).await,
            }
        }
        let rest: Vec<u32> = self.units.keys().copied().collect();
        for p in rest {
            self.stop_unit(p).await;
        }
        self.give_away(&others).await;
        // A hand-over to it that another member decided before it saw this
        // one leave lands within a reconcile or two: given on as well.
        tokio::time::sleep(LEAVE_SETTLE).await;
        self.give_away(&others).await;
    }

    /// Leases naming this instance that no owner unit serves (taken or
    /// handed to it, still catching up): given on, their claims unchanged.
    async fn give_away(&self, others: &[String]) {
        for p in 0..self.partitions {
            // Read afresh: renewals while catching up move the revision.
            let Ok(Some((lease, revision))) = self.leases.read(p).await else {
                continue;
            };
            let mine = lease.owner == self.config.instance;
            let Some(to) = self.successor(p, others).filter(|_| mine) else {
                continue;
            };
            let given = async {
                let held = self.leases.adopt(p, lease, revision).await?;
                self.leases.hand_over(held, &to).await
            };
            match given.await {
                Ok(_) => {
                    LEASE_CHANGES.get_or_create(&kind("handed_over")).inc();
                }
                Err(e) => tracing::warn!(partition = p, error = %e, "hand-over on stop"),
            }
        }
    }

    async fn stop_unit(&mut self, p: u32) {
        if let Some(unit) = self.units.remove(&p) {
            unit.finish().await;
        }
    }

    /// Makes sure a follower unit runs for `p`, limited to `claimed`.
    fn follow(&mut self, p: u32, claimed: Claimed) {
        if let Some(unit) = self.units.get(&p) {
            if let Some(limit) = &unit.limit {
                limit.send_if_modified(|c| {
                    let moved = claimed.conv > c.conv || claimed.rcpt > c.rcpt;
                    *c = Claimed {
                        conv: c.conv.max(claimed.conv),
                        rcpt: c.rcpt.max(claimed.rcpt),
                    };
                    moved
                });
            }
            return;
        }
        let (limit, rx) = watch::channel(claimed);
        let unit = self.spawn(p, LeaseRole::Follower(rx), None, Some(limit));
        self.units.insert(p, unit);
    }

    async fn start_owner(&mut self, p: u32, held: crate::lease::Holding) {
        self.stop_unit(p).await;
        let batch = (held.lease.prev_conv, held.lease.conv);
        self.notices_due.insert(p, batch);
        let gate = OwnerGate::new(self.leases.clone(), held);
        tracing::info!(partition = p, "owning the partition");
        let unit = self.spawn(p, LeaseRole::Owner(gate.clone()), Some(gate), None);
        self.units.insert(p, unit);
    }

    fn spawn(
        &self,
        p: u32,
        role: LeaseRole,
        gate: Option<Arc<OwnerGate>>,
        limit: Option<watch::Sender<Claimed>>,
    ) -> Unit {
        let owner = gate.is_some();
        let config = ProjectorConfig {
            kek: self.config.kek.clone(),
            instance: unit_instance(&self.config.instance, p),
            partitions: Some(vec![p]),
            data_dir: self.config.data_dir.join(format!("p{p}")),
            fanout_threshold: self.config.fanout_threshold,
            fanout: owner,
            store_faults: None,
            store_engine: self.config.store_engine,
            serves: match owner {
                true => Serves::Clients,
                false => Serves::OwnerOnly,
            },
            lease: Some(role),
            projections: None,
        };
        let (current, rx) = watch::channel(None);
        let (stop, stopping) = watch::channel(false);
        let task = tokio::spawn(crate::supervisor::run(
            self.clients.clone(),
            config,
            current,
            stopping,
        ));
        let renewer = gate.clone().map(|g| tokio::spawn(renew(g, rx.clone())));
        Unit {
            gate,
            progress: (None, Instant::now()),
            renewer,
            limit,
            current: rx,
            stop,
            task,
        }
    }
}

/// Notifies the members of conversations in a claimed batch that may not
/// have been published (`notice.rs`).
async fn notify(
    ctx: Arc<QueryContext>,
    publish: async_nats::Client,
    partition: u32,
    batch: (u64, u64),
) {
    match crate::notice::notices(&ctx, partition, batch).await {
        Ok(notices) => {
            tracing::info!(
                partition,
                conversations = notices.len(),
                "claimed batch notified"
            );
            crate::runner::publish_effects(&publish, ctx.content.as_deref(), notices).await;
        }
        Err(e) => tracing::warn!(partition, error = %e, "claimed batch not notified"),
    }
}

/// The watch's next entry; never, while there is no watch.
async fn next_entry(
    watch: &mut Option<async_nats::jetstream::kv::Watch>,
) -> Option<Result<async_nats::jetstream::kv::Entry, async_nats::jetstream::kv::WatcherError>> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

fn kind(kind: &'static str) -> crate::metrics::LeaseChange {
    crate::metrics::LeaseChange { kind }
}

/// A unit's instance name: its consumers, control subject and heartbeat.
pub fn unit_instance(instance: &str, partition: u32) -> String {
    format!("{instance}-p{partition}")
}
