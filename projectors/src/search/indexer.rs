//! The indexer: a thread per projector that drains the `search` rows'
//! queue into the index of the serving generation, and into the one a
//! rebuild is folding, so a swap finds its index nearly complete. Each
//! round syncs at most `DRAIN_MAX` documents, commits the index, then
//! deletes the queue entries it synced: a crash in between syncs them
//! again, which changes nothing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use im_schema::v1;

use super::{index_dir, Opener, SearchError, SearchIndex};
use crate::keys::prefix_end;
use crate::projections::search::{doc_id_of_key, ERASED, NAME, QUEUE};
use crate::rebuild::{keyspace_name, Rebuilds};
use crate::runner::{checkpoint, ProjectionState, Source};
use crate::store::Keyspace;

/// The indexer's round when idle and nobody searches. Each commit writes
/// a segment (merged later) and costs milliseconds of CPU however few
/// documents it holds, so at a few messages a second a short round
/// multiplies the projector's CPU per message (measured at 10 messages/s:
/// 2.7 ms per message without search, 7.5 with a 200 ms round, 5.0 with
/// 1 s). Searches do not wait for it: each wakes the indexer for what is
/// folded and not yet indexed (`answer::caught_up`), so a search sees
/// every message folded before it.
pub const COMMIT_EVERY: Duration = Duration::from_secs(5);

/// Queue entries synced per commit: bounds the memory and time of one
/// round (~20k documents of a few hundred bytes) and how far a crash
/// sends the indexer back.
pub const DRAIN_MAX: usize = 20_000;

/// How long the indexer waits after a failure (a full disk) before it
/// tries again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The open indexes of one store, by keyspace name.
pub struct Indexes {
    data_dir: PathBuf,
    open: Mutex<HashMap<String, Arc<SearchIndex>>>,
    stop: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Set (and the condvar notified) to start a round now.
    woken: (Mutex<bool>, std::sync::Condvar),
    /// Permits of the searches running (`answer::SEARCHES_RUNNING_MAX`).
    pub running: Arc<tokio::sync::Semaphore>,
    /// The rebuild whose index was last made fresh: (keyspace, started).
    building_seen: Mutex<Option<(String, i64)>>,
    /// How a row's sealed text is opened.
    pub opener: Opener,
}

impl Indexes {
    pub fn new(data_dir: PathBuf, opener: Opener) -> Arc<Self> {
        Arc::new(Indexes {
            data_dir,
            open: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
            woken: (Mutex::new(false), std::sync::Condvar::new()),
            running: Arc::new(tokio::sync::Semaphore::new(
                super::answer::SEARCHES_RUNNING_MAX,
            )),
            building_seen: Mutex::new(None),
            opener,
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<SearchIndex>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The index of a keyspace generation, opened on first use.
    pub fn get(&self, keyspace: &str) -> Result<Arc<SearchIndex>, SearchError> {
        if self.stop.load(Relaxed) {
            return Err(SearchError::Io(std::io::Error::other(
                "the projector is stopping",
            )));
        }
        let mut map = self.map();
        if let Some(index) = map.get(keyspace) {
            return Ok(index.clone());
        }
        let index = Arc::new(SearchIndex::open(&index_dir(&self.data_dir, keyspace))?);
        map.insert(keyspace.to_string(), index.clone());
        Ok(index)
    }

    /// The serving generation's index of a projection, if it is search's
    /// and open (metrics look, never open).
    pub fn open_for(&self, state: &ProjectionState) -> Option<Arc<SearchIndex>> {
        if state.projection.name() != NAME {
            return None;
        }
        self.map()
            .get(&keyspace_name(NAME, state.generation()))
            .cloned()
    }

    /// The serving keyspace and its index, read together.
    pub fn serving(
        &self,
        state: &ProjectionState,
    ) -> Result<(Arc<dyn Keyspace>, Arc<SearchIndex>), SearchError> {
        let (ks, generation) = state.serving();
        Ok((ks, self.get(&keyspace_name(NAME, generation))?))
    }

    /// Starts the thread that keeps the indexes of `state` (and of its
    /// rebuild) up with their rows.
    pub fn start(self: &Arc<Self>, state: Arc<ProjectionState>, rebuilds: Arc<Rebuilds>) {
        let this = self.clone();
        let thread = std::thread::Builder::new()
            .name("search-indexer".into())
            .spawn(move || this.run(&state, &rebuilds))
            .expect("a thread starts");
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
    }

    /// Starts a round now (a query waits for a fold to be indexed).
    pub fn wake(&self) {
        let (flag, cv) = &self.woken;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }

    /// Waits up to `COMMIT_EVERY` or until woken.
    fn idle(&self) {
        let (flag, cv) = &self.woken;
        let guard = flag.lock().unwrap_or_else(|e| e.into_inner());
        let (mut guard, _) = cv
            .wait_timeout_while(guard, COMMIT_EVERY, |woken| !*woken)
            .unwrap_or_else(|e| e.into_inner());
        *guard = false;
    }

    /// Stops the thread and closes every writer (a restart opens them
    /// again: each holds its directory's lock).
    pub fn close(&self) {
        self.stop.store(true, Relaxed);
        self.wake();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
        for (_, index) in self.map().drain() {
            index.close();
        }
    }

    fn run(&self, state: &ProjectionState, rebuilds: &Rebuilds) {
        while !self.stop.load(Relaxed) {
            // The rebuild first, then the serving keyspace with its
            // generation read together: a swap in between leaves the new
            // generation in both (drained twice), never in neither.
            let building = rebuilds.building(NAME);
            let (ks, generation) = state.serving();
            let mut targets = vec![(keyspace_name(NAME, generation), ks)];
            if let Some((name, ks, started)) = building {
                self.fresh_for(&name, started);
                targets.push((name, ks));
            }
            let mut busy = false;
            for (name, ks) in &targets {
                let drained = self
                    .get(name)
                    .and_then(|index| drain(ks.as_ref(), &index, &self.opener));
                match drained {
                    Ok(more) => busy |= more,
                    Err(e) => {
                        tracing::warn!(keyspace = %name, error = %e, "search index not updated: trying again");
                        std::thread::sleep(RETRY_AFTER);
                    }
                }
            }
            self.forget_others(&targets);
            if !busy {
                self.idle();
            }
        }
    }

    /// Deletes what an earlier rebuild attempt at the same generation left
    /// in its index, the first time a rebuild (started at `started`) is
    /// seen: its keyspace starts empty, so must its index.
    fn fresh_for(&self, name: &str, started: i64) {
        let mut seen = self.building_seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen
            .as_ref()
            .is_some_and(|(n, s)| n == name && *s == started)
        {
            return;
        }
        *seen = Some((name.to_string(), started));
        if let Some(index) = self.map().remove(name) {
            index.close();
        }
        let _ = std::fs::remove_dir_all(index_dir(&self.data_dir, name));
    }

    /// Closes and deletes the indexes of generations gone (swapped out,
    /// or a rebuild cancelled).
    fn forget_others(&self, targets: &[(String, Arc<dyn Keyspace>)]) {
        let keep = |name: &str| targets.iter().any(|(n, _)| n == name);
        let gone: Vec<_> = {
            let mut map = self.map();
            let names: Vec<String> = map.keys().filter(|n| !keep(n)).cloned().collect();
            names.into_iter().filter_map(|n| map.remove(&n)).collect()
        };
        for index in gone {
            index.close();
        }
        let Ok(entries) = std::fs::read_dir(self.data_dir.join("search-index")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep(&name) {
                tracing::info!(index = %name, "dropping the index of a generation gone");
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Syncs up to `DRAIN_MAX` queued documents into the index and commits;
/// whether more are queued.
pub fn drain(ks: &dyn Keyspace, index: &SearchIndex, open: &Opener) -> Result<bool, SearchError> {
    let _one = index.draining();
    let at = checkpoint(ks, Source::Conv)?;
    let rows = ks.range(&QUEUE, &prefix_end(&QUEUE), false, DRAIN_MAX + 1)?;
    if rows.is_empty() {
        if *index.indexed.borrow() < at {
            index.indexed.send_replace(at);
        }
        return Ok(false);
    }
    let more = rows.len() > DRAIN_MAX;
    let mut done = Vec::with_capacity(rows.len().min(DRAIN_MAX));
    let mut erased = false;
    for (k, _) in rows.into_iter().take(DRAIN_MAX) {
        let row_key = &k[QUEUE.len() + 8..];
        if let Some((&ERASED, user)) = row_key.split_first() {
            index.forget_sender(&String::from_utf8_lossy(user))?;
            erased = true;
        } else {
            let doc = ks
                .get(row_key)?
                .map(|v| crate::store::decode_value::<v1::SearchDoc>(row_key, &v))
                .transpose()?;
            index.sync(&doc_id_of_key(row_key), doc.as_ref(), open)?;
        }
        done.push((k, None));
    }
    let position = if more { *index.indexed.borrow() } else { at };
    index.commit(position)?;
    // An erasure leaves no word of theirs in the index's files.
    if erased {
        index.purge_deleted()?;
    }
    ks.commit(done)?;
    Ok(more)
}

/// Drains until nothing is queued (a status that reads the index's
/// digest, a test).
pub fn drain_all(ks: &dyn Keyspace, index: &SearchIndex, open: &Opener) -> Result<(), SearchError> {
    while drain(ks, index, open)? {}
    Ok(())
}
