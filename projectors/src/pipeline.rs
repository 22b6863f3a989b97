//! The one read pipeline of a projector instance. One durable consumer per
//! stream (`<instance>_conv`, `<instance>_rcpt`), starting right after the
//! lowest checkpoint of the projections that read it. Each batch goes to a
//! dedicated fold thread (the async workers, which may also run a gateway,
//! never fold or commit): each event is decoded and chain-checked once,
//! every projection folds it into its own overlay and keeps its own
//! checkpoint. As soon as the batch is folded (its events judged valid and
//! their members known) its effects go back to be published (I12), while
//! the thread commits every projection's writes (one atomic batch per
//! keyspace, with its checkpoint); then one ack per stream and batch
//! (AckPolicy::All). Commits are not flushed one by one: the store flushes
//! on its own cadence and when the pipeline stops (I13). A crash loses at
//! most the commits since the last flush; every start opens the consumers
//! right after the recovered checkpoints, so those events are folded (and
//! their deliveries published) again.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use im_streams::codec::HDR_EVENT_TYPE;
use im_streams::conversation::MEMBERS_PER_EVENT_MAX;
use im_streams::signing::{KeyRing, Signed, WriterKeys, HDR_SIGNATURE};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::acks::Acks;
use crate::fold::{fold_one, Delivered, Target, Verdicts};
use crate::judge::{sign_verdicts, Judge, SignatureVerdicts};
use crate::lease::{Claimed, LeaseRole};
use crate::members_cache::MembersCache;
use crate::projections::{Effect, FoldCtx, Projection};
use crate::runner::{
    ensure_consumer, js_err, publish_effects, with_checkpoints, Applied, DeliveryMark,
    ProjectionState, RunError, RunnerConfig, Source, BATCH_MAX, INPUT_QUEUE_MAX, MAX_ACK_PENDING,
};
use crate::store::{Keyspace, StoreError};

/// Delivered messages with their stream and stream sequence, in order.
type Batch = Vec<(Source, u64, jetstream::Message)>;

/// A projection to fold into, its serving keyspace, and where it stands.
type Feed = (Arc<dyn Projection>, Arc<dyn Keyspace>, Applied);

/// A batch handed to the fold thread, and where its answer goes.
struct FoldJob {
    batch: Batch,
    targets: Vec<Feed>,
    fanout: bool,
    /// Groups above this many members are delivered on their group subject.
    large_above: usize,
    /// The writers' keys, ready for this batch's events, and the verdicts
    /// on their signatures (reached before, in parallel).
    keys: Arc<WriterKeys>,
    signed: SignatureVerdicts,
    /// The projections' `rows_changed`, summed: when it moves, what the
    /// fold thread keeps of their rows is stale.
    rows_epoch: u64,
    /// The batch's effects, sent as soon as it is folded, before its commit.
    folded: oneshot::Sender<Vec<Effect>>,
    reply: oneshot::Sender<FoldDone>,
}

/// What the fold thread did with a batch; the messages come back to be
/// acknowledged.
struct FoldDone {
    outcome: Result<Vec<(Applied, u64, u64)>, RunError>,
    batch: Batch,
}

/// Batches a fold thread may have waiting: one folding, one queued.
const FOLD_QUEUE_MAX: usize = 1;

/// Folds and commits batches until the job channel closes; then flushes
/// the store once (a clean stop leaves nothing to fold again).
fn fold_thread(mut jobs: mpsc::Receiver<FoldJob>) {
    let mut members = MembersCache::default();
    let mut judge = Judge::default();
    let mut rows_epoch = 0;
    let mut last_store = None;
    while let Some(mut job) = jobs.blocking_recv() {
        if job.rows_epoch != rows_epoch {
            rows_epoch = job.rows_epoch;
            members.clear();
            judge.clear();
        }
        judge.set_keys(job.keys.clone(), std::mem::take(&mut job.signed));
        let mut ctx = FoldCtx {
            members: &mut members,
            effects: job.fanout,
            large_above: job.large_above,
        };
        let outcome = fold_then_commit(&mut job, &mut judge, &mut ctx).map_err(RunError::Store);
        if outcome.is_err() {
            // The store and the caches may disagree now; the next start
            // reloads whatever is needed.
            members.clear();
            judge.clear();
        }
        last_store = job.targets.first().map(|(_, ks, _)| ks.clone());
        let _ = job.reply.send(FoldDone {
            outcome,
            batch: job.batch,
        });
    }
    if let Some(ks) = last_store {
        if let Err(e) = ks.flush() {
            tracing::warn!(error = %e, "flush at stop failed; the next start folds again");
        }
    }
}

/// Folds a batch into every target and hands its effects over, then
/// commits each keyspace with its checkpoints. Returns (position, folded,
/// dead) per target.
fn fold_then_commit(
    job: &mut FoldJob,
    judge: &mut Judge,
    ctx: &mut FoldCtx,
) -> Result<Vec<(Applied, u64, u64)>, StoreError> {
    let started = std::time::Instant::now();
    let mut targets = job
        .targets
        .iter()
        .map(|(p, ks, at)| Target::new(p.as_ref(), ks.as_ref(), *at))
        .collect::<Result<Vec<_>, _>>()?;
    let mut verdicts = Verdicts::Judge(judge);
    let mut effects = Vec::new();
    for (source, stream_seq, msg) in &job.batch {
        fold_one(
            &mut targets,
            &Delivered::of(*source, *stream_seq, msg),
            &mut verdicts,
            ctx,
            &mut effects,
        )?;
    }
    // Valid and with its members known: the deliveries may leave (I12).
    let (folded, _) = oneshot::channel();
    let _ = std::mem::replace(&mut job.folded, folded).send(effects);
    let mut out = Vec::with_capacity(targets.len());
    let mut commits = Vec::with_capacity(targets.len());
    for (t, (_, ks, before)) in targets.into_iter().zip(&job.targets) {
        out.push((t.at, t.folded, t.dead));
        if t.at != *before {
            commits.push((ks.as_ref(), with_checkpoints(t.tx.into_writes(), t.at)));
        }
    }
    crate::store::commit_all(commits)?;
    crate::metrics::BATCH_EVENTS.observe(job.batch.len() as f64);
    crate::metrics::COMMIT_SECONDS.observe(started.elapsed().as_secs_f64());
    Ok(out)
}

/// The pipeline's handles on the projections it feeds.
pub struct Feeds {
    pub states: Vec<Arc<ProjectionState>>,
    pub applied: Vec<watch::Sender<Applied>>,
}

impl Feeds {
    /// The lowest position of the projections that read `source` (None when
    /// none does).
    fn lowest(&self, source: Source) -> Option<u64> {
        self.states
            .iter()
            .filter(|s| source == Source::Conv || s.projection.reads_receipts())
            .map(|s| source.of(*s.applied.borrow()))
            .min()
    }
}

/// Why a batch loop ended without an error.
enum Stop {
    /// The channel closed (shutdown).
    Closed,
    /// Deliveries went out of order (one lost in transit, or a redelivery
    /// above a checkpoint): reopen the consumers at the checkpoints rather
    /// than apply out of order, which the skip would turn into a lost event.
    Resync(&'static str),
}

/// Starts the pipeline; returns the task running it. `consume` carries the
/// consumers and acks; `publish` the deliveries.
pub async fn start(
    consume: async_nats::Client,
    publish: async_nats::Client,
    cfg: Arc<RunnerConfig>,
    feeds: Feeds,
    mut stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<Result<(), RunError>>, RunError> {
    let js = jetstream::new(consume);
    // Opened here so a misconfiguration fails `start`, not a task later.
    let first = open_pumps(&js, &cfg, &feeds).await?;
    let (jobs, rx) = mpsc::channel(FOLD_QUEUE_MAX);
    let fold = std::thread::Builder::new()
        .name(format!("fold-{}", cfg.instance))
        .spawn(move || fold_thread(rx))
        .map_err(|e| RunError::Task(e.into()))?;
    Ok(tokio::spawn(async move {
        let mut pumps = Some(first);
        // Bounded by what can go wrong on the wire; each round first commits
        // everything applied so far.
        loop {
            let (rx, guard) = match pumps.take() {
                Some(p) => p,
                None => open_pumps(&js, &cfg, &feeds).await?,
            };
            let stop = run_batches(rx, &publish, &cfg, &feeds, &jobs, &mut stop).await?;
            drop(guard);
            match stop {
                Stop::Closed => {
                    // A clean stop returns once the fold thread has flushed
                    // the store (nothing to fold again at the next start).
                    drop(jobs);
                    let _ = tokio::task::spawn_blocking(move || fold.join()).await;
                    return Ok(());
                }
                Stop::Resync(why) => {
                    tracing::warn!(
                        instance = cfg.instance,
                        why,
                        "resyncing consumers from the checkpoints"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }))
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// What the consumers pumped, and word that one of them is gone.
struct Input {
    rx: mpsc::Receiver<(Source, jetstream::Message)>,
    gone: Arc<Notify>,
}

/// Opens the instance's consumer of each stream some projection reads,
/// starting right after the lowest checkpoint, pumping into one bounded
/// channel.
async fn open_pumps(
    js: &jetstream::Context,
    cfg: &RunnerConfig,
    feeds: &Feeds,
) -> Result<(Input, AbortOnDrop), RunError> {
    let (tx_in, rx_in) = mpsc::channel(INPUT_QUEUE_MAX);
    let gone = Arc::new(Notify::new());
    let mut pumps = Vec::new();
    for source in [Source::Conv, Source::Rcpt] {
        let Some(from) = feeds.lowest(source) else {
            continue;
        };
        let consumer = ensure_consumer(js, cfg, source, from).await?;
        let mut messages = consumer.messages().await.map_err(js_err)?;
        let (tx_in, gone) = (tx_in.clone(), gone.clone());
        pumps.push(tokio::spawn(async move {
            while let Some(next) = messages.next().await {
                match next {
                    Ok(msg) => {
                        if tx_in.send((source, msg)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(source = source.tag(), error = %e, "consumer error");
                        if consumer_gone(&consumer, &e).await {
                            gone.notify_one();
                            return;
                        }
                    }
                }
            }
        }));
    }
    Ok((Input { rx: rx_in, gone }, AbortOnDrop(pumps)))
}

/// Whether a consumer is gone after an error of its messages: deleted, or
/// not found when asked (its state lives in the server's memory, so a
/// restarted server no longer has it). A server that does not answer yet
/// says nothing: its messages will tell again.
async fn consumer_gone(
    consumer: &jetstream::consumer::Consumer<jetstream::consumer::pull::Config>,
    error: &jetstream::consumer::pull::MessagesError,
) -> bool {
    use jetstream::consumer::pull::MessagesErrorKind;
    use jetstream::context::ConsumerInfoErrorKind;
    if error.kind() == MessagesErrorKind::ConsumerDeleted {
        return true;
    }
    matches!(
        consumer.get_info().await.map_err(|e| e.kind()),
        Err(ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound)
    )
}

/// The next batch: up to `BATCH_MAX` messages in delivery order, cut short
/// where deliveries go out of order. `seen` is the last consumer sequence
/// per source.
fn take_batch(
    items: Vec<(Source, jetstream::Message)>,
    feeds: &Feeds,
    seen: &mut [u64; 2],
) -> Result<(Batch, Option<Stop>), RunError> {
    let mut batch = Vec::with_capacity(items.len());
    for (source, msg) in items {
        let info = msg.info().map_err(js_err)?;
        let (stream_seq, consumer_seq, delivered) =
            (info.stream_sequence, info.consumer_sequence, info.delivered);
        let lowest = feeds.lowest(source).unwrap_or(0);
        let seen = &mut seen[source as usize];
        if stream_seq > lowest && (consumer_seq != *seen + 1 || delivered > 1) {
            let why = if delivered > 1 {
                "redelivery above a checkpoint"
            } else {
                "a delivery never arrived"
            };
            return Ok((batch, Some(Stop::Resync(why))));
        }
        *seen = (*seen).max(consumer_seq);
        batch.push((source, stream_seq, msg));
    }
    Ok((batch, None))
}

/// Events a follower holds past the owner's claim, at most. A consumer has
/// at most `MAX_ACK_PENDING` unacknowledged, so with room for both
/// streams' the pipeline always reads on: the other stream's events
/// within the claim are never stuck behind held ones.
const HELD_MAX: usize = 2 * MAX_ACK_PENDING as usize;

/// Folds batches until the channel closes, deliveries go out of order or
/// a consumer is gone.
async fn run_batches(
    mut input: Input,
    publish: &async_nats::Client,
    cfg: &RunnerConfig,
    feeds: &Feeds,
    jobs: &mpsc::Sender<FoldJob>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Stop, RunError> {
    // Consumer sequences of fresh consumers are numbered 1, 2, 3...; a jump
    // means a delivery never arrived.
    let mut seen = [0u64; 2];
    let mut ring = KeyRing::new(jetstream::new(publish.clone()), Duration::ZERO);
    let mut claim = match &cfg.lease {
        Some(LeaseRole::Follower(limit)) => Some(limit.clone()),
        _ => None,
    };
    // An owner's floor: what was claimed before this run (published, or
    // left to the clients' sync by a run that died): never published again.
    let floor = match &cfg.lease {
        Some(LeaseRole::Owner(gate)) => Some(gate.claimed().await),
        _ => None,
    };
    let mut out = Out {
        ring: &mut ring,
        publish,
        cfg,
        feeds,
        jobs,
        floor,
        acks: Acks::default(),
    };
    // A follower's events past the owner's claim, waiting for it.
    let mut held: Batch = Vec::new();
    loop {
        if let Some(limit) = claim.as_mut() {
            let (now, later) = within_claim(*limit.borrow_and_update(), std::mem::take(&mut held));
            held = later;
            if !now.is_empty() {
                out.fold_publish_ack(now).await?;
                continue;
            }
        }
        // Asked to stop: only between batches, so the last one is
        // committed, published and acknowledged whole.
        let ack_at = out.acks.due();
        let first = tokio::select! {
            biased;
            _ = stopped(stop) => break,
            _ = claim_moved(&mut claim), if !held.is_empty() => continue,
            _ = tokio::time::sleep_until(ack_at.unwrap_or_else(Instant::now).into()), if ack_at.is_some() => {
                out.acks.send().await;
                continue;
            }
            _ = input.gone.notified() => {
                out.acks.drop_all();
                return Ok(Stop::Resync("a consumer is gone (a restarted server forgets them)"));
            }
            first = input.rx.recv(), if held.len() < HELD_MAX => first,
        };
        let Some(first) = first else { break };
        let mut weight = weight_of(&first.1);
        let mut items = vec![first];
        while !batch_full(items.len(), weight) {
            match input.rx.try_recv() {
                Ok(item) => {
                    weight += weight_of(&item.1);
                    items.push(item);
                }
                Err(_) => break,
            }
        }
        let (batch, resync) = take_batch(items, feeds, &mut seen)?;
        crate::metrics::observe_age("taken", stored_at(&batch));
        let batch = match claim.as_mut() {
            // Held events first: the claim may have moved since the loop's
            // top, and an event folded before an older held one of its
            // conversation would not extend its chain (dead-lettered, and
            // every later one with it).
            Some(limit) => release(&mut held, batch, *limit.borrow_and_update()),
            None => batch,
        };
        if !batch.is_empty() {
            out.fold_publish_ack(batch).await?;
        }
        if let Some(stop) = resync {
            // The consumers are reopened at the checkpoints.
            out.acks.drop_all();
            return Ok(stop);
        }
    }
    out.acks.send().await;
    Ok(Stop::Closed)
}

/// The work a batch may hold, in member rows: an event naming members (a
/// creation, a bulk add: up to `MEMBERS_PER_EVENT_MAX` each) writes rows
/// per member in several projections, and a batch of hundreds of them
/// held every projection's batch lock for seconds (queries about other
/// conversations timed out behind it) and gigabytes of overlay.
const BATCH_WEIGHT_MAX: usize = 4 * MEMBERS_PER_EVENT_MAX;

/// An event's work for `BATCH_WEIGHT_MAX`, from its type header.
fn weight_of(msg: &jetstream::Message) -> usize {
    let kind = msg.headers.as_ref().and_then(|h| h.get(HDR_EVENT_TYPE));
    event_weight(kind.map(|v| v.as_str()))
}

fn event_weight(event_type: Option<&str>) -> usize {
    match event_type {
        Some("conversation_created" | "members_added") => MEMBERS_PER_EVENT_MAX,
        _ => 1,
    }
}

/// Whether a batch of `events` weighing `weight` takes no more.
fn batch_full(events: usize, weight: usize) -> bool {
    events >= BATCH_MAX || weight >= BATCH_WEIGHT_MAX
}

/// Returns when a follower's claim moves; never without one.
async fn claim_moved(claim: &mut Option<watch::Receiver<Claimed>>) {
    let moved = match claim {
        Some(limit) => limit.changed().await.is_ok(),
        None => false,
    };
    if !moved {
        std::future::pending::<()>().await;
    }
}

/// Where a run's batches go, and what it needs for them.
struct Out<'a> {
    ring: &'a mut KeyRing,
    publish: &'a async_nats::Client,
    cfg: &'a RunnerConfig,
    feeds: &'a Feeds,
    jobs: &'a mpsc::Sender<FoldJob>,
    floor: Option<Claimed>,
    acks: Acks,
}

impl Out<'_> {
    /// One batch: an owner's claim of its fan-out first (a refused claim
    /// commits and acknowledges nothing, so a store never passes its
    /// owner's claim), then folded, published while it commits, and
    /// acknowledged, with the batches around it (`acks.rs`): one ack per
    /// stream acknowledges all before it (a lost ack means a redelivery,
    /// which is skipped; an ack never skips anything after a crash, since
    /// every start reopens the consumers at the checkpoints). What an owner's earlier run claimed is folded
    /// without fan-out.
    async fn fold_publish_ack(&mut self, batch: Batch) -> Result<(), RunError> {
        if let Some(LeaseRole::Owner(gate)) = &self.cfg.lease {
            let at = |source| last_of(&batch, source).map_or(0, |(seq, _)| seq);
            let (conv, rcpt) = (at(Source::Conv), at(Source::Rcpt));
            gate.claim(conv, rcpt).await.map_err(RunError::Lease)?;
        }
        let (claimed_before, fresh) = match self.floor {
            Some(floor) => within_claim(floor, batch),
            None => (Vec::new(), batch),
        };
        for (part, fanout) in [(claimed_before, false), (fresh, self.cfg.fanout)] {
            if part.is_empty() {
                continue;
            }
            let keys = prepare_keys(self.ring, &part).await?;
            let signed = verify_signatures(keys.clone(), &part).await?;
            let publish = fanout.then_some(Publish {
                client: self.publish,
                content: self.cfg.content.as_deref(),
                threshold: self.cfg.fanout_threshold,
                published: &self.cfg.published,
            });
            let done = fold_batch(part, (keys, signed), publish, self.feeds, self.jobs).await?;
            self.acks
                .hold(done.batch.into_iter().map(|(source, _, msg)| (source, msg)));
        }
        self.acks.send_if_due().await;
        Ok(())
    }
}

/// When the oldest event of a batch was stored (the server's clock).
fn stored_at(batch: &Batch) -> Option<time::OffsetDateTime> {
    let (_, _, msg) = batch.first()?;
    msg.info().ok().map(|i| i.published)
}

/// A batch's last event from `source`: its stream seq and message.
fn last_of(batch: &Batch, source: Source) -> Option<(u64, &jetstream::Message)> {
    batch
        .iter()
        .rev()
        .find(|(s, _, _)| *s == source)
        .map(|(_, seq, msg)| (*seq, msg))
}

/// Whether an event's fan-out is within what the owner claimed.
fn is_claimed(claimed: Claimed, source: Source, stream_seq: u64) -> bool {
    stream_seq
        <= match source {
            Source::Conv => claimed.conv,
            Source::Rcpt => claimed.rcpt,
        }
}

/// Items with their stream and position (a batch's messages; anything in
/// tests).
type Positioned<T> = Vec<(Source, u64, T)>;

/// A batch split by the claim, each stream on its own: (the events within
/// it, the events past it), each in delivery order. Per stream the events
/// within a claim come first; the two streams fold alike in any
/// interleaving.
fn within_claim<T>(claimed: Claimed, batch: Positioned<T>) -> (Positioned<T>, Positioned<T>) {
    batch
        .into_iter()
        .partition(|(source, seq, _)| is_claimed(claimed, *source, *seq))
}

/// A follower's events to fold now: of those it held and a new batch, in
/// that order, the ones within the claim; the rest stay held.
fn release<T>(held: &mut Positioned<T>, batch: Positioned<T>, claimed: Claimed) -> Positioned<T> {
    let mut all = std::mem::take(held);
    all.extend(batch);
    let (now, later) = within_claim(claimed, all);
    *held = later;
    now
}

/// The writers' keys, ready for a batch's events: whether signatures are
/// in force is asked again until they are, and every key an event names is
/// looked up. A bucket that cannot be read stops the pipeline (the batch
/// is delivered again), since nothing could be told from a forgery.
async fn prepare_keys(ring: &mut KeyRing, batch: &Batch) -> Result<Arc<WriterKeys>, RunError> {
    let named: Vec<(u64, Option<&str>)> = batch
        .iter()
        .filter(|(source, _, _)| *source == Source::Conv)
        .map(|(_, seq, msg)| {
            let sig = msg.headers.as_ref().and_then(|h| h.get(HDR_SIGNATURE));
            (*seq, sig.map(|v| v.as_str()))
        })
        .collect();
    let keys = ring.prepare(named).await.map_err(js_err)?;
    Ok(Arc::new(keys.clone()))
}

/// Events whose signatures are verified on the async worker itself: a
/// few hundred µs, less than handing them to a blocking thread and back
/// costs in wake-ups (at everyday rates a batch is one event).
const VERIFY_INLINE_MAX: usize = 4;

/// The verdicts on a batch's signatures, reached off the async workers and
/// in parallel (`judge::sign_verdicts`) unless the batch is small:
/// verifying is most of what judging an event costs.
async fn verify_signatures(
    keys: Arc<WriterKeys>,
    batch: &Batch,
) -> Result<SignatureVerdicts, RunError> {
    if keys.in_force_from().is_none() {
        return Ok(SignatureVerdicts::default());
    }
    let owned: Vec<(u64, Option<String>, bytes::Bytes)> = batch
        .iter()
        .filter(|(source, _, _)| *source == Source::Conv)
        .map(|(_, seq, msg)| {
            let sig = msg.headers.as_ref().and_then(|h| h.get(HDR_SIGNATURE));
            (
                *seq,
                sig.map(|v| v.as_str().to_string()),
                msg.payload.clone(),
            )
        })
        .collect();
    let verify = move || {
        let events: Vec<Signed> = owned
            .iter()
            .map(|(seq, header, payload)| Signed {
                stream_seq: *seq,
                header: header.as_deref(),
                payload,
            })
            .collect();
        sign_verdicts(&keys, &events)
    };
    if batch.len() <= VERIFY_INLINE_MAX {
        return Ok(verify());
    }
    tokio::task::spawn_blocking(verify)
        .await
        .map_err(|e| RunError::Task(e.into()))
}

/// Returns once `stop` says so; never when no one can say it any more.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Where a batch's effects are published.
struct Publish<'a> {
    client: &'a async_nats::Client,
    content: Option<&'a im_streams::content::ContentKeys>,
    threshold: usize,
    published: &'a DeliveryMark,
}

/// Raises the mark to `to` and keeps the deliveries not published before.
fn not_published_before(published: &DeliveryMark, to: Applied, effects: &mut Vec<Effect>) {
    let before = published.raise(to).conv;
    effects
        .retain(|e| !matches!(e, Effect::Deliver { deliver, .. } if deliver.stream_seq <= before));
}

/// Has the fold thread fold and commit one batch, holding every
/// projection's batch lock meanwhile (a rebuild's hand-over or a repair
/// waiting on one sees its keyspace and position stand still). With
/// `publish`, the batch's effects are published as soon as it is folded,
/// while it commits (I12).
async fn fold_batch(
    batch: Batch,
    (keys, signed): (Arc<WriterKeys>, SignatureVerdicts),
    publish: Option<Publish<'_>>,
    feeds: &Feeds,
    jobs: &mpsc::Sender<FoldJob>,
) -> Result<FoldDone, RunError> {
    let mut held = Vec::with_capacity(feeds.states.len());
    for state in &feeds.states {
        held.push(state.batch_lock.lock().await);
    }
    let targets = feeds
        .states
        .iter()
        .map(|s| (s.projection.clone(), s.ks(), *s.applied.borrow()))
        .collect();
    let (reply, answer) = oneshot::channel();
    let (folded, effects) = oneshot::channel();
    let rows_epoch = feeds
        .states
        .iter()
        .map(|s| s.rows_changed.load(std::sync::atomic::Ordering::SeqCst))
        .sum();
    let reach = Applied {
        conv: last_of(&batch, Source::Conv).map_or(0, |(seq, _)| seq),
        rcpt: last_of(&batch, Source::Rcpt).map_or(0, |(seq, _)| seq),
    };
    let job = FoldJob {
        batch,
        targets,
        fanout: publish.is_some(),
        large_above: publish.as_ref().map_or(usize::MAX, |p| p.threshold),
        keys,
        signed,
        rows_epoch,
        folded,
        reply,
    };
    let gone = || RunError::Task("the fold thread is gone".into());
    let stored = stored_at(&job.batch);
    jobs.send(job).await.map_err(|_| gone())?;
    // No effects when the fold failed: the answer says why.
    if let (Some(to), Ok(mut effects)) = (publish, effects.await) {
        // Raised first: a sync arriving once these may have been seen
        // waits for their commit.
        not_published_before(to.published, reach, &mut effects);
        publish_effects(to.client, to.content, effects).await;
        crate::metrics::observe_age("published", stored);
    }
    let mut done = answer.await.map_err(|_| gone())?;
    crate::metrics::observe_age("committed", stored);
    let outcome = std::mem::replace(&mut done.outcome, Ok(Vec::new()))?;
    for ((state, applied), (at, folded, dead)) in
        feeds.states.iter().zip(&feeds.applied).zip(outcome)
    {
        state.events_applied.fetch_add(folded, Relaxed);
        state.dead_letters.fetch_add(dead, Relaxed);
        let _ = applied.send(at);
    }
    drop(held);
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(seqs: &[u64]) -> Vec<(Source, u64, ())> {
        seqs.iter().map(|s| (Source::Conv, *s, ())).collect()
    }

    #[test]
    fn batches_of_membership_events_are_cut_by_their_work() {
        let (member, message) = (
            event_weight(Some("members_added")),
            event_weight(Some("message_sent")),
        );
        assert_eq!(event_weight(Some("conversation_created")), member);
        assert_eq!(message, 1);
        // Messages: up to BATCH_MAX.
        assert!(!batch_full(BATCH_MAX - 1, (BATCH_MAX - 1) * message));
        assert!(batch_full(BATCH_MAX, BATCH_MAX * message));
        // Bulk adds: four at most.
        assert!(!batch_full(3, 3 * member));
        assert!(batch_full(4, 4 * member));
    }

    fn seqs(batch: &[(Source, u64, ())]) -> Vec<u64> {
        batch.iter().map(|(_, s, _)| *s).collect()
    }

    /// A follower folds what it held before a newer batch's events: the
    /// claim may have moved past both at once, and a conversation's events
    /// must be folded in stream order (an event folded before an older one
    /// would not extend its chain).
    #[test]
    fn held_events_are_released_before_a_newer_batch() {
        let claim = |conv| Claimed { conv, rcpt: 0 };
        let mut held = conv(&[11, 12]);
        let now = release(&mut held, conv(&[13, 14, 15]), claim(14));
        assert_eq!(seqs(&now), [11, 12, 13, 14]);
        assert_eq!(seqs(&held), [15]);
        let now = release(&mut held, conv(&[16]), claim(14));
        assert!(now.is_empty());
        assert_eq!(seqs(&held), [15, 16]);
        let receipts = vec![(Source::Rcpt, 3, ())];
        let now = release(&mut held, receipts, claim(15));
        // Each stream on its own: a receipt past its claim (0) is held.
        assert_eq!(seqs(&now), [15]);
        assert_eq!(seqs(&held), [16, 3]);
    }
}
