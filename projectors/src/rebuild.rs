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

use crate::fold::{fold_one, Delivered, Target};
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

    /// Starts rebuilding every state in `targets`; none starts if one of
    /// them is already rebuilding.
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
        let mut started = Vec::new();
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
            started.push(job.progress());
            let this = self.clone();
            let task = tokio::spawn(async move {
                let outcome = this.run(&job, &state, from_seq).await;
                let (phase, error) = match outcome {
                    Ok(true) => (v1::RebuildPhase::Swapped, String::new()),
                    Ok(false) => (v1::RebuildPhase::Cancelled, String::new()),
                    Err(e) => (v1::RebuildPhase::Failed, e.to_string()),
                };
                if phase != v1::RebuildPhase::Swapped {
                    let name = keyspace_name(name, job.generation);
                    if let Err(e) = this.store.drop_keyspace(&name) {
                        tracing::warn!(keyspace = %name, error = %e, "could not drop an unfinished keyspace");
                    }
                }
                tracing::info!(projection = name, generation = job.generation, ?phase, %error, "rebuild ended");
                job.finish(phase, error);
            });
            let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
            tasks.retain(|t| !t.is_finished());
            tasks.push(task.abort_handle());
        }
        Ok(started)
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

    /// Folds a new generation and swaps it in; false when cancelled.
    async fn run(
        &self,
        job: &Job,
        state: &ProjectionState,
        from_seq: u64,
    ) -> Result<bool, RunError> {
        let projection = state.projection.as_ref();
        let name = keyspace_name(projection.name(), job.generation);
        // A keyspace of this name can only be an earlier attempt's.
        self.store.drop_keyspace(&name)?;
        let ks = self.store.keyspace(&name)?;
        // Events before `from_seq` are left out: chains start where it does.
        ks.commit(vec![crate::chain::chain_from_write(from_seq)])?;
        let js = jetstream::new(self.client.clone());
        let mut readers = Vec::new();
        readers.push(Reader::open(&js, &self.cfg, Source::Conv, from_seq).await?);
        if projection.reads_receipts() {
            readers.push(Reader::open(&js, &self.cfg, Source::Rcpt, from_seq).await?);
        }
        for r in &readers {
            job.remaining[r.source as usize].store(r.pending_at_open, Relaxed);
        }
        let mut at = Applied::default();
        for round in 0.. {
            if job.cancel.load(Relaxed) {
                return Ok(false);
            }
            let target = *state.applied.borrow();
            let gap: u64 = readers
                .iter()
                .map(|r| r.source.of(target).saturating_sub(r.source.of(at)))
                .sum();
            if gap <= HANDOFF_GAP_MAX || round >= CATCHUP_ROUNDS_MAX {
                break;
            }
            at = fold_to(projection, &ks, &mut readers, at, target, job).await?;
        }
        let held = state.batch_lock.lock().await;
        let target = *state.applied.borrow();
        let at = fold_to(projection, &ks, &mut readers, at, target, job).await?;
        if job.cancel.load(Relaxed) {
            return Ok(false);
        }
        if crate::runner::checkpoint(ks.as_ref(), Source::Conv)? != at.conv
            || crate::runner::checkpoint(ks.as_ref(), Source::Rcpt)? != at.rcpt
        {
            // Nothing matched between the last event and the target (a
            // `from_seq` past it): the checkpoints still say where it stands.
            commit_blocking(ks.clone(), Vec::new(), at).await?;
        }
        // The order makes a crash at any point safe: until the generation is
        // durable the old keyspace serves after a restart and the new one is
        // a leftover; after it, the new one serves.
        self.meta.commit(vec![(
            generation_key(projection.name()),
            Some(job.generation.to_be_bytes().to_vec()),
        )])?;
        self.meta.flush()?;
        let (old, old_generation) = state.swap(ks, job.generation);
        drop(held);
        // Queries that took the old keyspace before the swap finish on it;
        // it is dropped once nobody holds it (or at the next start).
        for _ in 0..OLD_KEYSPACE_WAITS_MAX {
            if Arc::strong_count(&old) == 1 {
                drop(old);
                // The new generation serves already: a failure here only
                // leaves a leftover for the next start, never an error that
                // would drop the serving keyspace.
                let old_name = keyspace_name(projection.name(), old_generation);
                if let Err(e) = self.store.drop_keyspace(&old_name) {
                    tracing::warn!(keyspace = %old_name, error = %e, "old keyspace not dropped; dropped at the next start");
                }
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::warn!(
            projection = projection.name(),
            "old keyspace still in use; dropped at the next start"
        );
        Ok(true)
    }
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

/// Folds every reader's events up to `target` into `ks`, committing each
/// batch with the positions reached.
async fn fold_to(
    projection: &dyn Projection,
    ks: &Arc<dyn Keyspace>,
    readers: &mut [Reader],
    mut at: Applied,
    target_at: Applied,
    job: &Job,
) -> Result<Applied, RunError> {
    let mut members = MembersCache::default();
    for reader in readers.iter_mut() {
        let source = reader.source;
        loop {
            let mut target = Target::new(projection, ks.as_ref(), at)?;
            let mut ctx = FoldCtx {
                members: &mut members,
                effects: false,
            };
            let mut effects = Vec::new();
            let mut folded = 0u64;
            while folded < BATCH_MAX as u64 {
                let pos = source.of(target.at);
                let Some((seq, remaining, msg)) =
                    reader.next_upto(pos, source.of(target_at)).await?
                else {
                    break;
                };
                // Effects are the live runner's business; the new keyspace
                // only needs the writes.
                fold_one(
                    std::slice::from_mut(&mut target),
                    &Delivered::of(source, seq, &msg),
                    &mut ctx,
                    &mut effects,
                )?;
                folded += 1;
                job.remaining[source as usize].store(remaining, Relaxed);
            }
            let next = target.at;
            if folded == 0 {
                break;
            }
            let writes = target.tx.into_writes();
            commit_blocking(ks.clone(), writes, next).await?;
            at = next;
            job.folded.fetch_add(folded, Relaxed);
            job.conv_position.store(at.conv, Relaxed);
            job.rcpt_position.store(at.rcpt, Relaxed);
            if job.cancel.load(Relaxed) {
                return Ok(at);
            }
        }
        // Reached the target for this source (possibly with nothing in
        // between matching the filters).
        match source {
            Source::Conv => at.conv = at.conv.max(target_at.conv),
            Source::Rcpt => at.rcpt = at.rcpt.max(target_at.rcpt),
        }
    }
    Ok(at)
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
