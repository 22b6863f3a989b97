//! A projector instance: every projection over the partitions it owns, the
//! query service, and the fan-out.

use std::path::PathBuf;
use std::sync::Arc;

use crate::pipeline::{self, Feeds};
use crate::projections;
use crate::query::{self, QueryContext};
use crate::rebuild::{self, Rebuilds};
use crate::runner::{ProjectionState, RunError, RunnerConfig};
use crate::store::{Store, StoreError};

/// The instance name every tool assumes unless told (`--instance`,
/// `IM_PROJECTOR_INSTANCE`): `im-projector`, `imctl up`'s projector and
/// `imctl projections`.
pub const DEFAULT_INSTANCE: &str = "main";

/// Default member count above which a group gets notifications instead of
/// full events: fan-out cost grows with members × event size.
pub const DEFAULT_FANOUT_THRESHOLD: usize = 500;

#[derive(Clone, Debug)]
pub struct ProjectorConfig {
    /// Names this instance's consumers and query subject; unique per store.
    pub instance: String,
    /// Owned partitions; `None` for all.
    pub partitions: Option<Vec<u32>>,
    pub data_dir: PathBuf,
    pub fanout_threshold: usize,
    pub fanout: bool,
    /// Makes the store's writes fail as a full disk does (tests).
    pub store_faults: Option<Arc<crate::store::StoreFaults>>,
    /// The engine a new store is made in (an existing one is opened in
    /// its own, or refused when it is another).
    pub store_engine: crate::store::Engine,
    pub serves: Serves,
    /// A unit of the pool (`lease.rs`): owner or follower of its one
    /// partition; None for pinned partitions.
    pub lease: Option<crate::lease::LeaseRole>,
    /// The projections it runs: all (`projections::all()`) when None; a
    /// process that needs a few read models of its own (the notifier)
    /// names them, `members` among them (the judge reads it).
    pub projections: Option<Vec<Arc<dyn projections::Projection>>>,
    /// The deployment's key-encryption key, where it encrypts content:
    /// what leaves the projector is opened with it (`opening.rs`).
    pub kek: im_streams::content::KekArgs,
}

/// Whose questions an instance answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serves {
    /// Clients' partition queries (`im.q.<p>`, in the queue group) and its
    /// own control subject: a live instance.
    Clients,
    /// Its own control subject only: a scratch instance (`imctl
    /// projections verify`) must never answer a client from a store it is
    /// still building.
    OwnerOnly,
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("instance name: {0}")]
    Instance(#[source] im_streams::ids::IdError),
    #[error("subscribing to the query subjects: {0}")]
    Subscribe(#[source] im_streams::error::BoxError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("streams: {0}")]
    Streams(#[from] im_streams::StreamsError),
}

pub struct Projector {
    pub context: Arc<QueryContext>,
    pub health: Arc<crate::heartbeat::Health>,
    tasks: tokio::task::JoinSet<Result<(), RunError>>,
    query_task: tokio::task::JoinHandle<()>,
    /// The answers in flight hold its permits (and the store).
    answers: Arc<tokio::sync::Semaphore>,
    /// Its own heartbeat, unless a supervisor beats for it.
    heartbeat_task: Option<tokio::task::JoinHandle<()>>,
    /// Tells the pipeline to stop after the batch it is on.
    stop: tokio::sync::watch::Sender<bool>,
}

/// How long a graceful stop waits for the batch in hand to be committed,
/// published and acknowledged: a batch takes milliseconds, a full disk or
/// a NATS that does not answer can hold it; past this it is abandoned
/// (nothing of it acknowledged, so it is delivered again).
pub const STOP_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a graceful stop waits for answers in flight to let go of the
/// store (they end in milliseconds; a query waiting on deliveries may wait
/// its own bound, and then the stop returns without waiting).
const RELEASE_MAX: std::time::Duration = std::time::Duration::from_secs(5);

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Drop for Projector {
    fn drop(&mut self) {
        self.tasks.abort_all();
        self.query_task.abort();
        if let Some(t) = &self.heartbeat_task {
            t.abort();
        }
        self.context.rebuilds.abort_all();
        self.context.search.close();
    }
}

/// Parses "all", "3", "0-7" or "0,2,5-6".
pub fn parse_partitions(text: &str, partitions_total: u32) -> Result<Option<Vec<u32>>, String> {
    if text.trim() == "all" {
        return Ok(None);
    }
    let mut out = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: u32 = lo.parse().map_err(|_| format!("bad partition {part:?}"))?;
        let hi: u32 = hi.parse().map_err(|_| format!("bad partition {part:?}"))?;
        if lo > hi || hi >= partitions_total {
            return Err(format!(
                "partition range {part:?} outside 0..{partitions_total}"
            ));
        }
        out.extend(lo..=hi);
    }
    out.sort_unstable();
    out.dedup();
    Ok(Some(out))
}

/// The connections a projector uses: one for its consumers and acks, one
/// for what it publishes (deliveries, query answers, heartbeats), so
/// neither queues behind the other.
#[derive(Clone)]
pub struct Clients {
    pub consume: async_nats::Client,
    pub publish: async_nats::Client,
}

/// How often a projector whose disk refused a write tries again.
pub const WRITABLE_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Storage errors since the process started (every instance), for metrics.
pub static STORAGE_ERRORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Opens the store; one whose files cannot be trusted is moved aside
/// (`<dir>.quarantined-<unix seconds>`) and a fresh one is opened, which
/// the pipeline folds from the log's start: never a crash loop on a store
/// that will not open.
fn open_or_quarantine(config: &ProjectorConfig) -> Result<Store, ProjectorError> {
    let store = open_trusted(config)?;
    if !outdated(&store)? {
        return Ok(store);
    }
    // Its rows lack what this build keeps (the rules state the judge
    // reads): the read models are folded again from the log.
    drop(store);
    let aside = quarantine(&config.data_dir)?;
    tracing::warn!(store = %config.data_dir.display(), format = STORE_FORMAT, "store written by an older build: folding the read models again from the log");
    let store = open_trusted(config)?;
    // (Deleted already when there was no room to set it aside.)
    if aside != config.data_dir {
        std::fs::remove_dir_all(&aside).map_err(|e| ProjectorError::Store(StoreError::Io(e)))?;
    }
    Ok(store)
}

/// The layout of the read models this build writes; a store that records
/// an older one (or none, with data in it) is folded again from the log.
/// 2: the `members` rows hold the rules state (`members::rules_state`).
pub const STORE_FORMAT: u32 = 2;

const FORMAT_KEY: &[u8] = b"format";

/// Whether the store holds read models of an older layout.
fn outdated(store: &Store) -> Result<bool, ProjectorError> {
    let meta = store.keyspace("meta")?;
    Ok(match meta.get(FORMAT_KEY)? {
        Some(v) => v.try_into().map_or(0, u32::from_be_bytes) < STORE_FORMAT,
        None => meta.get(b"partitions")?.is_some(),
    })
}

/// Opens the store; one whose files cannot be trusted is moved aside.
fn open_trusted(config: &ProjectorConfig) -> Result<Store, ProjectorError> {
    let open = || {
        Store::open_engine(
            &config.data_dir,
            config.store_faults.clone(),
            config.store_engine,
        )
    };
    match open() {
        Err(e) if e.is_corruption() => {
            let aside = quarantine(&config.data_dir)?;
            tracing::error!(store = %config.data_dir.display(), quarantined = %aside.display(), error = %e, "store will not open: quarantined, rebuilding from the log");
            Ok(open()?)
        }
        other => Ok(other?),
    }
}

/// Moves a store aside, where it takes no room (a rename on its own
/// filesystem); returns where to. The directory itself is renamed to
/// `<dir>.quarantined-<millis>`; when it cannot be (it is a mount point)
/// its entries go into `<dir>/quarantined-<millis>-<n>/`; when even that
/// folder cannot be made (the disk is full), the store is deleted, with
/// earlier quarantined copies: the read models are folded again from the
/// log either way.
pub fn quarantine(dir: &std::path::Path) -> Result<std::path::PathBuf, ProjectorError> {
    let io = |e| ProjectorError::Store(StoreError::Io(e));
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut aside = dir.as_os_str().to_owned();
    aside.push(format!(".quarantined-{millis}"));
    let aside = std::path::PathBuf::from(aside);
    if std::fs::rename(dir, &aside).is_ok() {
        return Ok(aside);
    }
    // Two quarantines in one millisecond must not take the second's
    // folder for "no room": a suffix makes it another name.
    let free = |n: u32| dir.join(format!("quarantined-{millis}-{n}"));
    let inside = (0..8)
        .map(free)
        .find(|p| !p.exists())
        .unwrap_or_else(|| free(8));
    let entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(Result::ok)
        .collect();
    let earlier =
        |e: &std::fs::DirEntry| e.file_name().to_string_lossy().starts_with("quarantined-");
    if std::fs::create_dir(&inside).is_ok() {
        for entry in entries.iter().filter(|e| !earlier(e)) {
            std::fs::rename(entry.path(), inside.join(entry.file_name())).map_err(io)?;
        }
        return Ok(inside);
    }
    // No room: the store goes, and earlier quarantined copies with it.
    for entry in entries {
        let path = entry.path();
        match path.is_dir() {
            true => std::fs::remove_dir_all(&path),
            false => std::fs::remove_file(&path),
        }
        .map_err(io)?;
    }
    Ok(dir.to_path_buf())
}

/// The partitions an instance serves: the configured ones, all of them by
/// default; each within the topology.
fn partitions_of(
    config: &ProjectorConfig,
    topology: im_streams::Topology,
) -> Result<Vec<u32>, ProjectorError> {
    let partitions = config
        .partitions
        .clone()
        .unwrap_or_else(|| (0..topology.partitions).collect());
    if partitions.is_empty() || partitions.iter().any(|p| *p >= topology.partitions) {
        return Err(ProjectorError::Config(format!(
            "partitions {partitions:?} outside 0..{}",
            topology.partitions
        )));
    }
    Ok(partitions)
}

/// A store belongs to one partition set: its checkpoints mean nothing for
/// another. Whether the set is still to be recorded (a new store; written
/// once the disk takes writes).
fn store_partitions_fit(
    meta: &dyn crate::store::Keyspace,
    config: &ProjectorConfig,
    parts_text: &str,
) -> Result<bool, ProjectorError> {
    match meta.get(b"partitions")? {
        Some(v) if v != parts_text.as_bytes() => Err(ProjectorError::Config(format!(
            "{} holds partitions {}, not {parts_text}",
            config.data_dir.display(),
            String::from_utf8_lossy(&v)
        ))),
        Some(_) => Ok(false),
        None => Ok(true),
    }
}

/// Every projection's current generation, opened, with its checkpoints.
fn open_feeds(
    store: &Store,
    meta: &dyn crate::store::Keyspace,
    config: &ProjectorConfig,
) -> Result<Feeds, ProjectorError> {
    let mut feeds = Feeds {
        states: Vec::new(),
        applied: Vec::new(),
    };
    let chosen = config.projections.clone().unwrap_or_else(projections::all);
    if !chosen
        .iter()
        .any(|p| p.name() == projections::members::NAME)
    {
        return Err(ProjectorError::Config(
            "the members projection must run: the judge reads it".into(),
        ));
    }
    for projection in chosen {
        let generation = rebuild::generation(meta, projection.name())?;
        let ks = store.keyspace(&rebuild::keyspace_name(projection.name(), generation))?;
        let (state, applied) = ProjectionState::new(projection, ks, generation)?;
        feeds.states.push(state);
        feeds.applied.push(applied);
    }
    Ok(feeds)
}

/// Once the disk takes writes: the partition set recorded (a new store),
/// chain starts recorded, a crashed rebuild's leftovers dropped.
fn prepare_store(context: &QueryContext, partitions: Option<String>) -> Result<(), ProjectorError> {
    let meta = context.rebuilds.meta();
    if let Some(text) = partitions {
        meta.commit(vec![
            (b"partitions".to_vec(), Some(text.into_bytes())),
            (
                FORMAT_KEY.to_vec(),
                Some(STORE_FORMAT.to_be_bytes().to_vec()),
            ),
        ])?;
        meta.flush()?;
    }
    for state in &context.projections {
        crate::chain::ensure_chain_from(state.ks().as_ref(), *state.applied.borrow())?;
        rebuild::drop_leftovers(
            context.rebuilds.store(),
            state.projection.name(),
            state.generation(),
        )?;
    }
    Ok(())
}

/// Returns once a write and a flush succeed, reporting the disk's refusal
/// (log, metric, heartbeat) meanwhile. Corruption is not waited out.
async fn wait_until_writable(
    meta: &dyn crate::store::Keyspace,
    health: &crate::heartbeat::Health,
) -> Result<(), StoreError> {
    loop {
        let probe = meta
            .commit(vec![(b"probe".to_vec(), Some(b"ok".to_vec()))])
            .and_then(|()| meta.flush());
        match probe {
            Ok(()) => {
                health.clear();
                return Ok(());
            }
            Err(e) if e.is_corruption() => return Err(e),
            Err(e) => {
                STORAGE_ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "the store refuses writes: waiting");
                health.set_problem(format!("storage: {e}: {}", source_text(&e)));
                tokio::time::sleep(WRITABLE_PROBE_INTERVAL).await;
            }
        }
    }
}

/// The innermost cause of an error, as text.
fn source_text(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The data keys an instance opens content with. One that answers
/// clients or publishes deliveries must have them where the deployment
/// encrypts (it refuses to start otherwise); a scratch instance given no
/// KEK (`imctl projections verify`) opens nothing and needs none.
async fn content_keys(
    js: &async_nats::jetstream::Context,
    config: &ProjectorConfig,
) -> Result<Option<Arc<im_streams::content::ContentKeys>>, ProjectorError> {
    let answers = config.serves == Serves::Clients || config.fanout;
    if config.kek.load()?.is_none() && !answers {
        return Ok(None);
    }
    Ok(im_streams::content::open_keys(js, &config.kek).await?)
}

impl Projector {
    /// A projector on one connection (tests, tools).
    pub async fn start(
        client: async_nats::Client,
        config: ProjectorConfig,
    ) -> Result<Self, ProjectorError> {
        let clients = Clients {
            consume: client.clone(),
            publish: client,
        };
        Self::start_with(clients, config).await
    }

    /// A projector that beats for itself.
    pub async fn start_with(
        clients: Clients,
        config: ProjectorConfig,
    ) -> Result<Self, ProjectorError> {
        Self::start_reporting(clients, config, None).await
    }

    /// A projector whose problems go to `health`, whose owner beats for it
    /// (a supervisor, whose heartbeat outlives the restarts); None: it
    /// beats for itself.
    pub async fn start_reporting(
        clients: Clients,
        config: ProjectorConfig,
        health: Option<Arc<crate::heartbeat::Health>>,
    ) -> Result<Self, ProjectorError> {
        let client = clients.publish.clone();
        im_streams::ids::validate_id(im_streams::ids::IdKind::Device, &config.instance)
            .map_err(ProjectorError::Instance)?;
        let js = async_nats::jetstream::new(client.clone());
        let topology = im_streams::definitions::read_topology(&js).await?;
        let partitions = partitions_of(&config, topology)?;
        let content = content_keys(&js, &config).await?;
        let store = open_or_quarantine(&config)?;
        let meta = store.keyspace("meta")?;
        let parts_text = format!("{partitions:?}");
        let record_partitions = store_partitions_fit(meta.as_ref(), &config, &parts_text)?;
        let published = health
            .as_ref()
            .map_or_else(Default::default, |h| h.published.clone());
        let cfg = Arc::new(RunnerConfig {
            instance: config.instance.clone(),
            topology,
            partitions: partitions.clone(),
            fanout_threshold: config.fanout_threshold,
            fanout: config.fanout,
            lease: config.lease.clone(),
            published: published.clone(),
            content: content.clone(),
        });
        let feeds = open_feeds(&store, meta.as_ref(), &config)?;
        let states = feeds.states.clone();
        let context = Arc::new(QueryContext {
            topology,
            instance: config.instance.clone(),
            partitions,
            serves: config.serves,
            projections: states,
            large_above: config.fanout_threshold,
            published,
            client: client.clone(),
            rebuilds: Arc::new(Rebuilds::new(client.clone(), store, meta, cfg)),
            search: crate::search::indexer::Indexes::new(
                config.data_dir.clone(),
                crate::opening::search_opener(content.clone()),
            ),
            content,
        });
        let subs = query::subscribe(&client, &context)
            .await
            .map_err(ProjectorError::Subscribe)?;
        let answers = query::answers_in_flight();
        let query_task = tokio::spawn(query::serve(
            client.clone(),
            context.clone(),
            subs,
            answers.clone(),
        ));
        let (health, heartbeat_task) = match health {
            Some(h) => (h, None),
            None => {
                let h = Arc::new(crate::heartbeat::Health::default());
                let beat = tokio::spawn(crate::heartbeat::run(
                    client.clone(),
                    config.instance.clone(),
                    crate::heartbeat::served(config.serves, context.partitions.clone()),
                    h.clone(),
                ));
                (h, Some(beat))
            }
        };
        // From here an error drops `projector`, whose Drop stops the tasks
        // above: they hold the store, and a restart must be able to open it.
        let mut projector = Projector {
            context,
            health,
            tasks: tokio::task::JoinSet::new(),
            query_task,
            answers,
            heartbeat_task,
            stop: tokio::sync::watch::Sender::new(false),
        };
        // Queries are answered (from what is committed) and the heartbeat
        // says what is wrong while the disk refuses writes; nothing is
        // consumed, so nothing is acknowledged, until it takes them again.
        let context = projector.context.clone();
        wait_until_writable(context.rebuilds.meta().as_ref(), &projector.health).await?;
        let record = record_partitions.then_some(parts_text);
        prepare_store(&context, record)?;
        if let Some(search) = context.projection(crate::projections::search::NAME) {
            context
                .search
                .start(search.clone(), context.rebuilds.clone());
        }
        let pipeline = pipeline::start(
            clients.consume.clone(),
            clients.publish.clone(),
            context.rebuilds.runner_config(),
            feeds,
            projector.stop.subscribe(),
        )
        .await?;
        projector.tasks.spawn(async move {
            // Aborting this task (a dropped projector) aborts the
            // pipeline too: a dropped handle would leave it running,
            // consuming, claiming and publishing.
            let _pipeline = AbortOnDrop(pipeline.abort_handle());
            pipeline.await.unwrap_or(Ok(()))
        });
        Ok(projector)
    }

    /// Stops gracefully: the pipeline finishes the batch it is on (or
    /// abandons it past `STOP_MAX`); then everything is dropped.
    pub async fn finish(mut self) -> Result<(), RunError> {
        self.stop.send_replace(true);
        let finished = async {
            while let Some(done) = self.tasks.join_next().await {
                done.map_err(|e| RunError::Task(e.into()))??;
            }
            Ok(())
        };
        let out = match tokio::time::timeout(STOP_MAX, finished).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(
                    bound_s = STOP_MAX.as_secs(),
                    "stop: the batch in hand is abandoned (not acknowledged)"
                );
                Ok(())
            }
        };
        self.release().await;
        out
    }

    /// Stops the query and heartbeat tasks and waits (up to `RELEASE_MAX`)
    /// for the answers in flight: a caller that opens the same directory
    /// next must not find sled's lock still taken by a task that an abort
    /// has not yet dropped. (Whatever else holds `context`, such as a
    /// metrics view, is the caller's to drop.)
    async fn release(&mut self) {
        self.query_task.abort();
        let _ = (&mut self.query_task).await;
        if let Some(t) = self.heartbeat_task.as_mut() {
            t.abort();
            let _ = t.await;
        }
        self.context.rebuilds.abort_all();
        self.context.search.close();
        let answered = self.answers.acquire_many(query::ANSWERS_MAX);
        if tokio::time::timeout(RELEASE_MAX, answered).await.is_err() {
            tracing::warn!(
                bound_s = RELEASE_MAX.as_secs(),
                "stop: answers still in flight hold the store; it is released when they end"
            );
        }
    }

    /// Returns when a projection stops (an error: they run until aborted).
    pub async fn wait(&mut self) -> Result<(), RunError> {
        match self.tasks.join_next().await {
            Some(Ok(r)) => r,
            Some(Err(e)) => Err(RunError::Task(e.into())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_partitions;

    #[test]
    fn partition_sets_parse_and_are_bounded() {
        assert_eq!(parse_partitions("all", 16), Ok(None));
        assert_eq!(
            parse_partitions("0-3,7, 5", 16),
            Ok(Some(vec![0, 1, 2, 3, 5, 7]))
        );
        assert!(parse_partitions("15-16", 16).is_err());
        assert!(parse_partitions("x", 16).is_err());
        assert!(parse_partitions("4-2", 16).is_err());
    }
}
