//! What the pipeline (`pipeline.rs`) shares: the consumers it reads with,
//! the checkpoints committed with each batch's writes, the positions it
//! has applied and delivered, and the publishing of effects.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
};
use im_schema::v1;
use im_streams::error::BoxError;
use im_streams::{
    definitions::{CONV_STREAM, RCPT_STREAM},
    Topology,
};
use tokio::sync::watch;

use crate::chain;
use crate::keys::{key, seq, META};
use crate::projections::{Effect, Projection};
use crate::store::{Keyspace, StoreError};

/// Events folded into one commit. Large enough to amortize the commit and
/// flush; small enough that a batch's writes and effects stay small.
pub const BATCH_MAX: usize = 512;

/// Events buffered between a consumer and its projection. Two batches: the
/// consumer keeps fetching while a batch is committed.
pub const INPUT_QUEUE_MAX: usize = 2 * BATCH_MAX;

/// How long the server waits for an ack before redelivering: far longer
/// than a batch's fold + commit + flush, so redelivery means a crash.
pub const ACK_WAIT: Duration = Duration::from_secs(30);

/// Unlimited: poison is dead-lettered here, never left to the server, whose
/// limit would silently drop an event and make the model wrong.
pub const MAX_DELIVER: i64 = -1;

/// Delivered but unacknowledged events per consumer: bounds what the server
/// pushes ahead of the commits.
pub const MAX_ACK_PENDING: i64 = 4 * BATCH_MAX as i64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    Conv = 0,
    Rcpt = 1,
}

impl Source {
    /// This source's position in `at`.
    pub fn of(self, at: Applied) -> u64 {
        match self {
            Source::Conv => at.conv,
            Source::Rcpt => at.rcpt,
        }
    }

    pub fn tag(self) -> &'static str {
        match self {
            Source::Conv => "conv",
            Source::Rcpt => "rcpt",
        }
    }

    /// The source a stream name stands for (IM_CONV for anything else).
    pub fn of_stream(stream: &str) -> Source {
        match stream {
            s if s == RCPT_STREAM => Source::Rcpt,
            _ => Source::Conv,
        }
    }

    pub fn stream(self) -> &'static str {
        match self {
            Source::Conv => CONV_STREAM,
            Source::Rcpt => RCPT_STREAM,
        }
    }

    pub fn filters(self, topology: Topology, partitions: &[u32]) -> Vec<String> {
        if partitions.len() == topology.partitions as usize {
            return vec![match self {
                Source::Conv => im_streams::subjects::CONV_ALL,
                Source::Rcpt => im_streams::subjects::RCPT_ALL,
            }
            .to_string()];
        }
        partitions
            .iter()
            .map(|p| match self {
                Source::Conv => topology.conv_partition_filter(*p),
                Source::Rcpt => topology.rcpt_partition_filter(*p),
            })
            .collect()
    }
}

pub fn checkpoint_key(source: Source) -> Vec<u8> {
    key(META, &[b"cp", source.tag().as_bytes()])
}

pub fn dead_letter_key(source: Source, stream_seq: u64) -> Vec<u8> {
    key(META, &[b"dl", source.tag().as_bytes(), &seq(stream_seq)])
}

/// The last stream sequence applied from `source`.
pub fn checkpoint(ks: &dyn Keyspace, source: Source) -> Result<u64, StoreError> {
    Ok(ks
        .get(&checkpoint_key(source))?
        .and_then(|v| v.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

/// Dead letters recorded by a projection.
pub fn dead_letters(ks: &dyn Keyspace) -> Result<Vec<v1::DeadLetter>, StoreError> {
    let p = key(META, &[b"dl"]);
    ks.range(&p, &crate::keys::prefix_end(&p), false, usize::MAX)?
        .into_iter()
        .map(|(k, v)| crate::store::decode_value(&k, &v))
        .collect()
}

/// Applied positions, watched by queries waiting for `min_position`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub conv: u64,
    pub rcpt: u64,
}

/// The positions whose deliveries an instance has published, kept across
/// its supervised restarts (`Health`). Raised just before publishing, so
/// a query arriving later waits for their commit (I12); and a run that
/// folds the same events again after a failed commit (a full disk retried
/// for minutes) does not deliver them again. A crash forgets it: the
/// deliveries then come again and clients drop what they hold.
#[derive(Debug, Default)]
pub struct DeliveryMark {
    conv: AtomicU64,
    rcpt: AtomicU64,
}

impl DeliveryMark {
    /// Raises the mark to `to`; returns where it stood.
    pub fn raise(&self, to: Applied) -> Applied {
        Applied {
            conv: self
                .conv
                .fetch_max(to.conv, std::sync::atomic::Ordering::SeqCst),
            rcpt: self
                .rcpt
                .fetch_max(to.rcpt, std::sync::atomic::Ordering::SeqCst),
        }
    }

    pub fn get(&self) -> Applied {
        Applied {
            conv: self.conv.load(std::sync::atomic::Ordering::SeqCst),
            rcpt: self.rcpt.load(std::sync::atomic::Ordering::SeqCst),
        }
    }
}

/// What the query service and metrics see of a running projection.
pub struct ProjectionState {
    pub projection: Arc<dyn Projection>,
    /// The serving keyspace; a completed rebuild swaps it (see `swap`).
    ks: RwLock<(Arc<dyn Keyspace>, u64)>,
    pub applied: watch::Receiver<Applied>,
    pub events_applied: AtomicU64,
    pub dead_letters: AtomicU64,
    /// Held while a batch is folded and committed: whoever holds it sees
    /// the keyspace and `applied` standing still (a rebuild's hand-over, a
    /// repair).
    pub batch_lock: tokio::sync::Mutex<()>,
    /// Counts changes to the keyspace's rows made outside the pipeline (a
    /// swap, a repair): the fold thread drops what it keeps of them in
    /// memory (member lists, rules states) when it moves.
    pub rows_changed: AtomicU64,
}

impl ProjectionState {
    /// A projection's state as its keyspace stands; the sender moves
    /// `applied` as the pipeline commits.
    pub fn new(
        projection: Arc<dyn Projection>,
        ks: Arc<dyn Keyspace>,
        generation: u64,
    ) -> Result<(Arc<Self>, watch::Sender<Applied>), StoreError> {
        let applied = Applied {
            conv: checkpoint(ks.as_ref(), Source::Conv)?,
            rcpt: checkpoint(ks.as_ref(), Source::Rcpt)?,
        };
        let (tx, rx) = watch::channel(applied);
        let state = Arc::new(ProjectionState {
            projection,
            dead_letters: AtomicU64::new(dead_letters(ks.as_ref())?.len() as u64),
            ks: RwLock::new((ks, generation)),
            applied: rx,
            events_applied: AtomicU64::new(0),
            batch_lock: tokio::sync::Mutex::new(()),
            rows_changed: AtomicU64::new(0),
        });
        Ok((state, tx))
    }

    /// The keyspace serving now. Callers keep the Arc for one whole answer,
    /// so an answer never mixes two generations.
    pub fn ks(&self) -> Arc<dyn Keyspace> {
        self.ks.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// The serving keyspace with its generation, read together.
    pub fn serving(&self) -> (Arc<dyn Keyspace>, u64) {
        self.ks.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The serving keyspace's generation (0 until the first rebuild).
    pub fn generation(&self) -> u64 {
        self.ks.read().unwrap_or_else(|e| e.into_inner()).1
    }

    /// Puts another keyspace in service; returns the old one.
    /// Only under `batch_lock`, with `next` at exactly `applied`.
    pub fn swap(&self, next: Arc<dyn Keyspace>, generation: u64) -> (Arc<dyn Keyspace>, u64) {
        let mut ks = self.ks.write().unwrap_or_else(|e| e.into_inner());
        self.rows_changed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::mem::replace(&mut *ks, (next, generation))
    }
}

/// Why a projection stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("jetstream: {0}")]
    JetStream(#[source] BoxError),
    /// A projection's task or the fold thread ended or could not start.
    #[error("projection task: {0}")]
    Task(#[source] BoxError),
    #[error(transparent)]
    Id(#[from] im_streams::ids::IdError),
    #[error("{conv} has more than {max} events: rebuild instead")]
    TooLargeToRepair { conv: String, max: u64 },
    /// A rebuild would fold events the live `members` has not judged.
    #[error("no verdicts to rebuild by: {0}")]
    Verdicts(String),
    /// An owner's claim was refused: the partition is someone else's now
    /// (the batch is committed, not published).
    #[error("partition lease: {0}")]
    Lease(#[source] crate::lease::LeaseError),
}

pub(crate) fn js_err(e: impl Into<BoxError>) -> RunError {
    RunError::JetStream(e.into())
}

pub struct RunnerConfig {
    pub instance: String,
    pub topology: Topology,
    pub partitions: Vec<u32>,
    /// Groups with more members than this get notifications, not events.
    pub fanout_threshold: usize,
    /// Whether this instance publishes deliveries (one replica per
    /// partition should).
    pub fanout: bool,
    /// A unit of the pool: its claims as owner, or its limit as follower
    /// (`lease.rs`); None for pinned partitions.
    pub lease: Option<crate::lease::LeaseRole>,
    /// What this instance's runs have published.
    pub published: Arc<DeliveryMark>,
    /// Deliveries are opened with these before they are published.
    pub content: Option<Arc<im_streams::content::ContentKeys>>,
}

/// The durable consumer an instance reads `source` with: `<instance>_<tag>`.
pub fn consumer_name(instance: &str, source: Source) -> String {
    format!("{instance}_{}", source.tag())
}

/// (Re)creates the instance's durable consumer of `source` to start right
/// after `from_checkpoint` (the lowest checkpoint of the projections that
/// read it).
pub(crate) async fn ensure_consumer(
    js: &jetstream::Context,
    cfg: &RunnerConfig,
    source: Source,
    from_checkpoint: u64,
) -> Result<jetstream::consumer::Consumer<pull::Config>, RunError> {
    let stream = js.get_stream(source.stream()).await.map_err(js_err)?;
    let consumer_name = consumer_name(&cfg.instance, source);
    // One consumer per projection was the layout before one pipeline: those
    // would keep their pending messages on the server for good.
    for projection in crate::projections::NAMES {
        let old = format!("{}_{projection}_{}", cfg.instance, source.tag());
        if stream.get_consumer::<pull::Config>(&old).await.is_ok() {
            stream.delete_consumer(&old).await.map_err(js_err)?;
        }
    }
    let filters = source.filters(cfg.topology, &cfg.partitions);
    let config = pull::Config {
        durable_name: Some(consumer_name.clone()),
        deliver_policy: if from_checkpoint == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: from_checkpoint + 1,
            }
        },
        // One ack per batch and stream acknowledges every message before it.
        ack_policy: AckPolicy::All,
        ack_wait: ACK_WAIT,
        max_deliver: MAX_DELIVER,
        max_ack_pending: MAX_ACK_PENDING,
        filter_subjects: filters.clone(),
        // The consumer's state in memory: on file, nats-server rewrites
        // its state file within 10 ms of every delivery and ack, which at
        // everyday rates was a fifth of its CPU. Nothing is lost with it:
        // every start recreates the consumer at the store's checkpoint
        // (above), and a consumer gone with a server restart stops the
        // pipeline, which starts again from the checkpoints.
        memory_storage: true,
        ..Default::default()
    };
    // The store is the truth: whatever the server remembers of this
    // consumer (delivered-but-unacked messages, an ack floor from a wiped
    // store), it starts again right after the checkpoint.
    if stream
        .get_consumer::<pull::Config>(&consumer_name)
        .await
        .is_ok()
    {
        stream
            .delete_consumer(&consumer_name)
            .await
            .map_err(js_err)?;
    }
    stream.create_consumer(config).await.map_err(js_err)
}

/// Publishes a batch's effects; deliveries are core NATS (at most once):
/// clients recover gaps from history. A large group's delivery goes once
/// to its group subject, before any personal copy (a gateway reading both
/// sees them in that order).
pub(crate) async fn publish_effects(
    client: &async_nats::Client,
    content: Option<&im_streams::content::ContentKeys>,
    effects: Vec<Effect>,
) {
    for effect in effects {
        let (users, payload) = match effect {
            Effect::Deliver { users, mut deliver } => {
                open_delivery(content, &mut deliver).await;
                let group = deliver
                    .group
                    .then(|| im_streams::subjects::group_subject(&deliver.conversation_id));
                let payload = v1::envelope::Payload::Deliver(*deliver);
                if let Some(Ok(subject)) = group {
                    let bytes = im_schema::encode(&v1::Envelope {
                        header: None,
                        payload: Some(payload.clone()),
                    });
                    if let Err(e) = client.publish(subject, bytes.into()).await {
                        tracing::warn!(error = %e, "group publish failed");
                    }
                }
                (users, payload)
            }
            Effect::Receipt { users, update } => {
                (users, v1::envelope::Payload::ReceiptUpdate(update))
            }
        };
        let bytes: bytes::Bytes = im_schema::encode(&v1::Envelope {
            header: None,
            payload: Some(payload),
        })
        .into();
        for user in users {
            if let Ok(subject) = im_streams::subjects::deliver_subject(&user) {
                if let Err(e) = client.publish(subject, bytes.clone()).await {
                    tracing::warn!(error = %e, "fan-out publish failed");
                }
            }
        }
    }
}

/// Opens a delivery's event; one that cannot be opened now (the keys
/// bucket not answering) goes without its event, as a notification the
/// client answers by reading history.
async fn open_delivery(
    content: Option<&im_streams::content::ContentKeys>,
    deliver: &mut v1::Deliver,
) {
    let Some(ev) = deliver.event.as_mut() else {
        return;
    };
    if let Err(e) = crate::opening::open_event(content, ev).await {
        tracing::warn!(error = %e, "a delivery's content not opened: sent as a notification");
        deliver.event = None;
    }
}

/// Whether a keyspace's conversations without a chain head must start at
/// their creation (see `chain::chain_from_key`).
pub(crate) fn from_genesis(ks: &dyn Keyspace) -> Result<bool, StoreError> {
    Ok(chain::chain_from(ks)?.unwrap_or(1) <= 1)
}

/// Commits a fold's writes with the checkpoints they advance, atomically
/// (one batch of one keyspace: I13). Not flushed here: sled recovers a
/// prefix of its log after a crash, so a lost commit is folded again from
/// the checkpoint before it. The live pipeline leaves flushing to the
/// store's cadence and its stop; a rebuild to the flush of its generation
/// record (a crash before it drops the unfinished generation anyway).
pub(crate) fn commit_at(
    ks: &dyn Keyspace,
    writes: Vec<crate::store::Write>,
    at: Applied,
) -> Result<(), StoreError> {
    ks.commit(with_checkpoints(writes, at))
}

/// A fold's writes with the checkpoints they advance (what `commit_at`
/// commits, for a commit of several keyspaces at once).
pub(crate) fn with_checkpoints(
    mut writes: Vec<crate::store::Write>,
    at: Applied,
) -> Vec<crate::store::Write> {
    writes.push((
        checkpoint_key(Source::Conv),
        Some(at.conv.to_be_bytes().to_vec()),
    ));
    writes.push((
        checkpoint_key(Source::Rcpt),
        Some(at.rcpt.to_be_bytes().to_vec()),
    ));
    writes
}
