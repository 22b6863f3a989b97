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

use async_nats::jetstream;
use im_schema::v1;

use crate::projections::Projection;
use crate::runner::{Applied, ProjectionState, RunError, RunnerConfig, Source, BATCH_MAX};
use crate::store::{Keyspace, Store, StoreError};

mod fold;
mod read;

use fold::{commit_blocking, fold_to};
use read::Reader;

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
pub fn drop_leftovers(store: &Store, projection: &str, serving: u64) -> Result<(), StoreError> {
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
    /// The generation's keyspace while it is folded (the search indexer
    /// builds its index alongside).
    building: Mutex<Option<Arc<dyn Keyspace>>>,
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
        self.building
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
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
    store: Store,
    meta: Arc<dyn Keyspace>,
    cfg: Arc<RunnerConfig>,
    jobs: Mutex<BTreeMap<&'static str, Arc<Job>>>,
    /// The running rebuild tasks, aborted with the projector.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Rebuilds {
    pub fn new(
        client: async_nats::Client,
        store: Store,
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
    pub fn store(&self) -> &Store {
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

    /// The keyspace (and its name) of a projection's generation being
    /// folded, if one is, and when its rebuild started (an earlier attempt
    /// at the same generation started at another time).
    pub fn building(&self, projection: &str) -> Option<(String, Arc<dyn Keyspace>, i64)> {
        let job = self.jobs().get(projection).cloned()?;
        let ks = job
            .building
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        Some((
            keyspace_name(job.projection, job.generation),
            ks,
            job.started_ms,
        ))
    }

    /// Starts rebuilding every state in `targets` (one read of the streams
    /// for all of them); none starts if one of them is already rebuilding.
    /// `verdicts`: the live `members` projection, whose recorded verdicts
    /// the new generations fold by (`rebuild/fold.rs`).
    pub fn start(
        self: &Arc<Self>,
        targets: Vec<Arc<ProjectionState>>,
        verdicts: Arc<ProjectionState>,
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
                building: Mutex::new(None),
            });
            jobs.insert(name, job.clone());
            work.push((job, state));
        }
        drop(jobs);
        let started = work.iter().map(|(j, _)| j.progress()).collect();
        let this = self.clone();
        let task = tokio::spawn(async move {
            let outcome = this.run(&work, &verdicts, from_seq).await;
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
    async fn run(
        &self,
        work: &Work,
        verdicts: &ProjectionState,
        from_seq: u64,
    ) -> Result<Option<Vec<Old>>, RunError> {
        verdicts_cover(verdicts, from_seq)?;
        let mut gens = Vec::with_capacity(work.len());
        for (job, state) in work {
            let name = keyspace_name(job.projection, job.generation);
            // A keyspace of this name can only be an earlier attempt's.
            self.store.drop_keyspace(&name)?;
            let ks = self.store.keyspace(&name)?;
            // Events before `from_seq` are left out: chains start there.
            ks.commit(vec![crate::chain::chain_from_write(from_seq)])?;
            *job.building.lock().unwrap_or_else(|e| e.into_inner()) = Some(ks.clone());
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
            fold_to(&mut gens, &mut readers, &limits, (work, verdicts)).await?;
        }
        // The live pipeline waits while the last events are folded and the
        // generations swapped: it holds every projection's lock per batch.
        let mut held = Vec::with_capacity(work.len());
        for (_, state) in work {
            held.push(state.batch_lock.lock().await);
        }
        let limits = live();
        // Every event folded has a verdict: `members` has applied it (it
        // moves with the others; only a failed commit leaves it behind).
        let judged = verdicts.applied.borrow().conv;
        if let Some(ahead) = limits.iter().map(|l| l.conv).find(|c| *c > judged) {
            return Err(RunError::Verdicts(format!(
                "the live members projection has judged up to IM_CONV seq {judged}, not {ahead}: try again once it has caught up"
            )));
        }
        fold_to(&mut gens, &mut readers, &limits, (work, verdicts)).await?;
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

/// Whether the live `members` keyspace's dead letters are the verdicts of
/// every event a rebuild from `from_seq` folds: it must have judged from
/// there on (a `members` folded from a later sequence has not).
fn verdicts_cover(verdicts: &ProjectionState, from_seq: u64) -> Result<(), RunError> {
    let starts = crate::chain::chain_from(verdicts.ks().as_ref())?.unwrap_or(1);
    if starts > from_seq.max(1) {
        return Err(RunError::Verdicts(format!(
            "the live members projection judged events from IM_CONV seq {starts} only: \
             rebuild members from {} first, or rebuild from {starts}",
            from_seq.max(1)
        )));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_keeps_only_the_serving_generation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
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
