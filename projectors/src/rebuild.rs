//! Zero-downtime rebuilds: a new generation of a projection's keyspace is
//! folded from the streams while the serving one keeps answering and the
//! live runner keeps applying. When the new one is close behind, it takes
//! the runner's batch lock (the live runner pauses between batches), folds
//! the last events up to exactly the live position, and is swapped in: the
//! generation is recorded in the store's meta keyspace, then the serving
//! pointer changes, then the old keyspace is dropped. A query therefore
//! sees either the old keyspace or the new one at a position no older.
//!
//! Interrupting is safe at any point before the swap: a cancel (or a crash)
//! leaves the serving generation as it was, and the unfinished keyspace is
//! dropped (at once, or when the projector next starts).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use futures::StreamExt;
use im_schema::v1;

use crate::fold::{fold_item, Delivered, Item, Target};
use crate::members_cache::MembersCache;
use crate::projections::FoldCtx;
use crate::projections::Projection;
use crate::runner::{
    commit_at, js_err, Applied, ProjectionState, RunError, RunnerConfig, Source, BATCH_MAX,
};
use crate::store::{Keyspace, SledStore, StoreError};

/// Stream sequences the new keyspace may trail the live one by when it
/// takes the batch lock: the live runner pauses for at most about this many
/// events' fold.
pub const HANDOFF_GAP_MAX: u64 = BATCH_MAX as u64;

/// Catch-up rounds without the lock. Under a load faster than the rebuild
/// folds, the gap never closes; after this many rounds it takes the lock
/// anyway and the live runner waits for the rest.
pub const CATCHUP_ROUNDS_MAX: u32 = 64;

/// How long one read may wait for an event known to exist (the live
/// runner has applied it): a stall means the server is gone.
pub const READ_STALL_MAX: Duration = Duration::from_secs(30);

/// 10 ms waits for the readers of a swapped-out keyspace: queries wait at
/// most `MIN_POSITION_WAIT` (2 s), so 30 s is ample.
const OLD_KEYSPACE_WAITS_MAX: u32 = 3_000;

/// The keyspace name of a projection's generation.
pub fn keyspace_name(projection: &str, generation: u64) -> String {
    if generation == 0 {
        projection.to_string()
    } else {
        format!("{projection}.g{generation}")
    }
}

fn generation_key(projection: &str) -> Vec<u8> {
    format!("generation/{projection}").into_bytes()
}

/// The serving generation recorded for a projection.
pub fn generation(meta: &dyn Keyspace, projection: &str) -> Result<u64, StoreError> {
    Ok(meta
        .get(&generation_key(projection))?
        .and_then(|v| v.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

/// Drops every keyspace of the projection but the serving one: what an
/// interrupted rebuild or a swap cut short by a crash left behind.
pub fn drop_leftovers(store: &SledStore, projection: &str, serving: u64) -> Result<(), StoreError> {
    let keep = keyspace_name(projection, serving);
    let prefix = format!("{projection}.g");
    for name in store.keyspace_names() {
        let ours = name == projection || name.starts_with(&prefix);
        if ours && name != keep {
            tracing::info!(keyspace = %name, "dropping a keyspace left by a rebuild");
            store.drop_keyspace(&name)?;
        }
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One rebuild, as the status query shows it.
pub struct Job {
    projection: &'static str,
    generation: u64,
    started_ms: i64,
    folded: AtomicU64,
    /// Events left to read, per source (conv, rcpt).
    remaining: [AtomicU64; 2],
    conv_position: AtomicU64,
    rcpt_position: AtomicU64,
    cancel: AtomicBool,
    end: Mutex<Option<(v1::RebuildPhase, String, i64)>>,
}

impl Job {
    pub fn progress(&self) -> v1::RebuildProgress {
        let end = self.end.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (phase, error, finished_ms) =
            end.unwrap_or((v1::RebuildPhase::Building, String::new(), 0));
        v1::RebuildProgress {
            projection: self.projection.to_string(),
            generation: self.generation,
            phase: phase as i32,
            folded: self.folded.load(Relaxed),
            remaining: self.remaining.iter().map(|r| r.load(Relaxed)).sum(),
            conv_position: self.conv_position.load(Relaxed),
            rcpt_position: self.rcpt_position.load(Relaxed),
            started_ms: self.started_ms,
            finished_ms,
            error,
        }
    }

    fn running(&self) -> bool {
        self.end.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    fn finish(&self, phase: v1::RebuildPhase, error: String) {
        *self.end.lock().unwrap_or_else(|e| e.into_inner()) = Some((phase, error, now_ms()));
    }
}

/// Why a rebuild could not start.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("no projection {0:?}")]
    Unknown(String),
    #[error("{0} is already rebuilding")]
    Running(String),
}

/// The rebuilds of one projector instance: at most one per projection.
pub struct Rebuilds {
    client: async_nats::Client,
    store: SledStore,
    meta: Arc<dyn Keyspace>,
    cfg: Arc<RunnerConfig>,
    jobs: Mutex<BTreeMap<&'static str, Arc<Job>>>,
    /// The running rebuild tasks, aborted with the projector.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Rebuilds {
    pub fn new(
        client: async_nats::Client,
        store: SledStore,
        meta: Arc<dyn Keyspace>,
        cfg: Arc<RunnerConfig>,
    ) -> Self {
        Rebuilds {
            client,
            store,
            meta,
            cfg,
            jobs: Mutex::new(BTreeMap::new()),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// The instance's store.
    pub fn store(&self) -> &SledStore {
        &self.store
    }

    /// The store's meta keyspace (generations, partition set, probes).
    pub fn meta(&self) -> Arc<dyn Keyspace> {
        self.meta.clone()
    }

    /// The instance's runner configuration.
    pub fn runner_config(&self) -> Arc<RunnerConfig> {
        self.cfg.clone()
    }

    /// Stops every rebuild where it stands (the projector is going away; its
    /// next start drops what they left).
    pub fn abort_all(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Arc<Job>>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The latest rebuild of each projection that had one.
    pub fn progress(&self) -> Vec<v1::RebuildProgress> {
        self.jobs().values().map(|j| j.progress()).collect()
    }

    /// Starts rebuilding every state in `targets` (one read of the streams
    /// for all of them); none starts if one of them is already rebuilding.
    pub fn start(
        self: &Arc<Self>,
        targets: Vec<Arc<ProjectionState>>,
        from_seq: u64,
    ) -> Result<Vec<v1::RebuildProgress>, RebuildError> {
        let mut jobs = self.jobs();
        if let Some(busy) = targets
            .iter()
            .find(|t| jobs.get(t.projection.name()).is_some_and(|j| j.running()))
        {
            return Err(RebuildError::Running(busy.projection.name().into()));
        }
        let mut work = Vec::new();
        for state in targets {
            let name = state.projection.name();
            let job = Arc::new(Job {
                projection: name,
                generation: state.generation() + 1,
                started_ms: now_ms(),
                folded: AtomicU64::new(0),
                remaining: [AtomicU64::new(0), AtomicU64::new(0)],
                conv_position: AtomicU64::new(0),
                rcpt_position: AtomicU64::new(0),
                cancel: AtomicBool::new(false),
                end: Mutex::new(None),
            });
            jobs.insert(name, job.clone());
            work.push((job, state));
        }
        drop(jobs);
        let started = work.iter().map(|(j, _)| j.progress()).collect();
        let this = self.clone();
        let task = tokio::spawn(async move {
            let outcome = this.run(&work, from_seq).await;
            this.finish(&work, outcome).await;
        });
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
        Ok(started)
    }

    /// Ends every job of a run: the swapped ones drop their old keyspaces
    /// (after the outcome is reported, outside the rebuild's time), the
    /// others their unfinished new ones.
    async fn finish(&self, work: &Work, outcome: Result<Option<Vec<Old>>, RunError>) {
        let (phase, error) = match &outcome {
            Ok(Some(_)) => (v1::RebuildPhase::Swapped, String::new()),
            Ok(None) => (v1::RebuildPhase::Cancelled, String::new()),
            Err(e) => (v1::RebuildPhase::Failed, e.to_string()),
        };
        for (job, _) in work {
            if phase != v1::RebuildPhase::Swapped {
                let name = keyspace_name(job.projection, job.generation);
                if let Err(e) = self.store.drop_keyspace(&name) {
                    tracing::warn!(keyspace = %name, error = %e, "could not drop an unfinished keyspace");
                }
            }
            tracing::info!(projection = job.projection, generation = job.generation, ?phase, %error, "rebuild ended");
            job.finish(phase, error.clone());
        }
        if let Ok(Some(old)) = outcome {
            for old in old {
                self.drop_when_unused(old).await;
            }
        }
    }

    /// Drops a swapped-out keyspace once no query holds it (queries that
    /// took it before the swap finish on it), or leaves it to the next start.
    async fn drop_when_unused(&self, (name, old): Old) {
        for _ in 0..OLD_KEYSPACE_WAITS_MAX {
            if Arc::strong_count(&old) == 1 {
                drop(old);
                // The new generation serves already: a failure here only
                // leaves a leftover for the next start.
                if let Err(e) = self.store.drop_keyspace(&name) {
                    tracing::warn!(keyspace = %name, error = %e, "old keyspace not dropped; dropped at the next start");
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::warn!(keyspace = %name, "old keyspace still in use; dropped at the next start");
    }

    /// Asks the named rebuilds (all when empty) to stop before their swap.
    pub fn cancel(&self, names: &[String]) -> Vec<v1::RebuildProgress> {
        let jobs = self.jobs();
        jobs.values()
            .filter(|j| names.is_empty() || names.iter().any(|n| n == j.projection))
            .map(|j| {
                j.cancel.store(true, Relaxed);
                j.progress()
            })
            .collect()
    }

    /// Folds new generations of every target and swaps them in; the old
    /// keyspaces to drop, or None when cancelled.
    async fn run(&self, work: &Work, from_seq: u64) -> Result<Option<Vec<Old>>, RunError> {
        let mut gens = Vec::with_capacity(work.len());
        for (job, state) in work {
            let name = keyspace_name(job.projection, job.generation);
            // A keyspace of this name can only be an earlier attempt's.
            self.store.drop_keyspace(&name)?;
            let ks = self.store.keyspace(&name)?;
            // Events before `from_seq` are left out: chains start there.
            ks.commit(vec![crate::chain::chain_from_write(from_seq)])?;
            gens.push(Generation {
                projection: state.projection.clone(),
                ks,
                at: Applied::default(),
            });
        }
        let js = jetstream::new(self.client.clone());
        let mut readers = vec![Reader::open(&js, &self.cfg, Source::Conv, from_seq).await?];
        if gens.iter().any(|g| g.projection.reads_receipts()) {
            readers.push(Reader::open(&js, &self.cfg, Source::Rcpt, from_seq).await?);
        }
        for r in &readers {
            for (job, _) in work {
                job.remaining[r.source as usize].store(r.pending_at_open, Relaxed);
            }
        }
        let cancelled = || work.iter().any(|(j, _)| j.cancel.load(Relaxed));
        let live = || -> Vec<Applied> { work.iter().map(|(_, s)| *s.applied.borrow()).collect() };
        for round in 0.. {
            if cancelled() {
                return Ok(None);
            }
            let limits = live();
            let gap: u64 = gens
                .iter()
                .zip(&limits)
                .flat_map(|(g, l)| {
                    readers
                        .iter()
                        .map(|r| r.source.of(*l).saturating_sub(r.source.of(g.at)))
                })
                .max()
                .unwrap_or(0);
            if gap <= HANDOFF_GAP_MAX || round >= CATCHUP_ROUNDS_MAX {
                break;
            }
            fold_to(&mut gens, &mut readers, &limits, work).await?;
        }
        // The live pipeline waits while the last events are folded and the
        // generations swapped: it holds every projection's lock per batch.
        let mut held = Vec::with_capacity(work.len());
        for (_, state) in work {
            held.push(state.batch_lock.lock().await);
        }
        let limits = live();
        fold_to(&mut gens, &mut readers, &limits, work).await?;
        if cancelled() {
            return Ok(None);
        }
        self.swap(work, gens, &limits).await.map(Some)
    }

    /// Records each new generation (durably, before any swap: a crash
    /// before the record leaves the old one serving and the new one a
    /// leftover; after it, the new one serves), then swaps each in.
    async fn swap(
        &self,
        work: &Work,
        gens: Vec<Generation>,
        limits: &[Applied],
    ) -> Result<Vec<Old>, RunError> {
        let mut records = Vec::new();
        for ((job, _), (g, limit)) in work.iter().zip(gens.iter().zip(limits)) {
            // Nothing matched between the last event and the live position
            // (a `from_seq` past it): the checkpoints still say where it is.
            commit_blocking(g.ks.clone(), Vec::new(), *limit).await?;
            records.push((
                generation_key(job.projection),
                Some(job.generation.to_be_bytes().to_vec()),
            ));
        }
        self.meta.commit(records)?;
        self.meta.flush()?;
        let mut old = Vec::new();
        for ((job, state), g) in work.iter().zip(gens) {
            let (ks, generation) = state.swap(g.ks, job.generation);
            old.push((keyspace_name(job.projection, generation), ks));
        }
        Ok(old)
    }
}

/// A run's projections: each job with the state it rebuilds.
type Work = [(Arc<Job>, Arc<ProjectionState>)];

/// A swapped-out keyspace, by name.
type Old = (String, Arc<dyn Keyspace>);

/// A new generation being folded.
struct Generation {
    projection: Arc<dyn Projection>,
    ks: Arc<dyn Keyspace>,
    at: Applied,
}

/// An ordered read of one stream (the instance's partitions) that can
/// stop at a position and go on later from there.
struct Reader {
    source: Source,
    messages: Option<jetstream::consumer::pull::Ordered>,
    from_seq: u64,
    pending_at_open: u64,
    peeked: Option<(u64, jetstream::Message)>,
}

impl Reader {
    async fn open(
        js: &jetstream::Context,
        cfg: &RunnerConfig,
        source: Source,
        from_seq: u64,
    ) -> Result<Self, RunError> {
        let stream = js.get_stream(source.stream()).await.map_err(js_err)?;
        let config = OrderedConfig {
            filter_subjects: source.filters(cfg.topology, &cfg.partitions),
            deliver_policy: if from_seq <= 1 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: from_seq,
                }
            },
            ..Default::default()
        };
        let mut consumer = stream.create_consumer(config).await.map_err(js_err)?;
        let pending_at_open = consumer.info().await.map_err(js_err)?.num_pending;
        Ok(Reader {
            source,
            messages: Some(consumer.messages().await.map_err(js_err)?),
            from_seq,
            pending_at_open,
            peeked: None,
        })
    }

    /// The next event at or below `target` (with the events left after
    /// it), or None once the next one is beyond it.
    async fn next_upto(
        &mut self,
        at: u64,
        target: u64,
    ) -> Result<Option<(u64, u64, jetstream::Message)>, RunError> {
        // Nothing can lie in (at, target] when target is below where this
        // read starts, or already reached.
        if at >= target || target < self.from_seq {
            return Ok(None);
        }
        let (seq, msg) = match self.peeked.take() {
            Some(p) => p,
            None => {
                let messages = self
                    .messages
                    .as_mut()
                    .ok_or_else(|| RunError::JetStream("reader closed".into()))?;
                let msg = tokio::time::timeout(READ_STALL_MAX, messages.next())
                    .await
                    .map_err(|_| js_err("the stream read stalled"))?
                    .ok_or_else(|| js_err("the stream read ended"))?
                    .map_err(js_err)?;
                let seq = msg.info().map_err(js_err)?.stream_sequence;
                (seq, msg)
            }
        };
        if seq > target {
            self.peeked = Some((seq, msg));
            return Ok(None);
        }
        let remaining = msg.info().map_err(js_err)?.pending;
        Ok(Some((seq, remaining, msg)))
    }
}

/// `commit_at`, off the async threads.
async fn commit_blocking(
    ks: Arc<dyn Keyspace>,
    writes: Vec<crate::store::Write>,
    at: Applied,
) -> Result<(), RunError> {
    tokio::task::spawn_blocking(move || commit_at(ks.as_ref(), writes, at))
        .await
        .map_err(|e| RunError::Store(StoreError::Engine(e.to_string())))?
        .map_err(RunError::Store)
}

/// Events a rebuild folds per round: large, to amortize the commits and
/// the threads' start; bounded, since a round's decoded events are held in
/// memory (~1 KB each: ~16 MB).
pub const REBUILD_BATCH_MAX: usize = 16_384;

/// Folds every reader's events up to each generation's limit (its
/// projection's live position), a round at a time: each round's messages
/// are decoded once, in parallel, then every generation folds them on its
/// own thread (as many threads as cores) and commits with its position.
async fn fold_to(
    gens: &mut [Generation],
    readers: &mut [Reader],
    limits: &[Applied],
    work: &Work,
) -> Result<(), RunError> {
    for reader in readers.iter_mut() {
        let source = reader.source;
        let reads = |g: &Generation| source == Source::Conv || g.projection.reads_receipts();
        let upto = gens
            .iter()
            .zip(limits)
            .filter(|(g, _)| reads(g))
            .map(|(_, l)| source.of(*l))
            .max()
            .unwrap_or(0);
        loop {
            let at = gens
                .iter()
                .filter(|g| reads(g))
                .map(|g| source.of(g.at))
                .min()
                .unwrap_or(upto);
            let mut batch = Vec::new();
            let mut remaining = 0;
            while batch.len() < REBUILD_BATCH_MAX {
                let from = batch.last().map_or(at, |(seq, _)| *seq);
                let Some((seq, left, msg)) = reader.next_upto(from, upto).await? else {
                    break;
                };
                remaining = left;
                batch.push((seq, msg));
            }
            if batch.is_empty() {
                break;
            }
            let folded = fold_round(gens, source, batch, limits).await?;
            for ((job, _), (g, n)) in work.iter().zip(gens.iter().zip(folded)) {
                job.folded.fetch_add(n, Relaxed);
                job.remaining[source as usize].store(remaining, Relaxed);
                job.conv_position.store(g.at.conv, Relaxed);
                job.rcpt_position.store(g.at.rcpt, Relaxed);
            }
            if work.iter().any(|(j, _)| j.cancel.load(Relaxed)) {
                return Ok(());
            }
        }
    }
    // Reached the limits (possibly with nothing in between matching).
    for (g, l) in gens.iter_mut().zip(limits) {
        g.at.conv = g.at.conv.max(l.conv);
        if g.projection.reads_receipts() {
            g.at.rcpt = g.at.rcpt.max(l.rcpt);
        }
    }
    Ok(())
}

/// One round, off the async threads: decodes in parallel, then folds each
/// generation (only the events at or below its limit) on its own thread
/// and commits it. Returns the events each folded.
async fn fold_round(
    gens: &mut [Generation],
    source: Source,
    batch: Vec<(u64, jetstream::Message)>,
    limits: &[Applied],
) -> Result<Vec<u64>, RunError> {
    let work: Vec<RoundWork> = gens
        .iter()
        .zip(limits)
        .map(|(g, l)| (g.projection.clone(), g.ks.clone(), g.at, source.of(*l)))
        .collect();
    let done = tokio::task::spawn_blocking(move || fold_round_blocking(source, &batch, &work))
        .await
        .map_err(|e| RunError::Store(StoreError::Engine(e.to_string())))?
        .map_err(RunError::Store)?;
    let mut folded = Vec::with_capacity(gens.len());
    for (g, (at, n)) in gens.iter_mut().zip(done) {
        g.at = at;
        folded.push(n);
    }
    Ok(folded)
}

type RoundWork = (Arc<dyn Projection>, Arc<dyn Keyspace>, Applied, u64);

fn fold_round_blocking(
    source: Source,
    batch: &[(u64, jetstream::Message)],
    work: &[RoundWork],
) -> Result<Vec<(Applied, u64)>, StoreError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = batch.len().div_ceil(threads).max(1);
    let items: Vec<Item> = std::thread::scope(|scope| {
        let parts: Vec<_> = batch
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(seq, msg)| Item::decode(&Delivered::of(source, *seq, msg)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().expect("decoding does not panic"))
            .collect()
    });
    let items = &items;
    let groups = work.len().min(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..groups)
            .map(|g| {
                scope.spawn(move || {
                    work.iter()
                        .skip(g)
                        .step_by(groups)
                        .map(|(p, ks, at, limit)| {
                            fold_generation(p.as_ref(), ks.as_ref(), *at, *limit, items)
                        })
                        .collect::<Result<Vec<_>, StoreError>>()
                })
            })
            .collect();
        let mut out = vec![(Applied::default(), 0); work.len()];
        for (g, h) in handles.into_iter().enumerate() {
            let results = h.join().expect("folding does not panic")?;
            for (k, r) in results.into_iter().enumerate() {
                out[g + k * groups] = r;
            }
        }
        Ok(out)
    })
}

/// Folds the items at or below `limit` into one generation and commits
/// them with its new position (no flush: see `commit_at`).
fn fold_generation(
    projection: &dyn Projection,
    ks: &dyn Keyspace,
    at: Applied,
    limit: u64,
    items: &[Item],
) -> Result<(Applied, u64), StoreError> {
    let mut target = Target::new(projection, ks, at)?;
    let mut members = MembersCache::default();
    let mut ctx = FoldCtx {
        members: &mut members,
        effects: false,
    };
    for item in items.iter().take_while(|i| i.stream_seq <= limit) {
        fold_item(
            std::slice::from_mut(&mut target),
            item,
            &mut ctx,
            &mut Vec::new(),
        )?;
    }
    let (at, folded) = (target.at, target.folded);
    commit_at(ks, target.tx.into_writes(), at)?;
    Ok((at, folded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_keeps_only_the_serving_generation() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        for name in [
            "history",
            "history.g1",
            "history.g2",
            "members",
            "members.g1",
        ] {
            store
                .keyspace(name)
                .unwrap()
                .commit(vec![(b"k".to_vec(), Some(b"v".to_vec()))])
                .unwrap();
        }
        // history: generation 1 serves; a rebuild to 2 was cut short.
        drop_leftovers(&store, "history", 1).unwrap();
        // members: generation 0 serves; a rebuild to 1 was cut short.
        drop_leftovers(&store, "members", 0).unwrap();
        let mut left: Vec<String> = store
            .keyspace_names()
            .into_iter()
            .filter(|n| !n.starts_with("__sled"))
            .collect();
        left.sort();
        assert_eq!(left, vec!["history.g1", "members"]);
        assert_eq!(keyspace_name("unread", 0), "unread");
        assert_eq!(keyspace_name("unread", 3), "unread.g3");
    }
}
