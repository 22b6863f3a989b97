//! Runs one projection: a durable pull consumer per stream it reads, events
//! folded in batches, each batch committed in one atomic write together with
//! the checkpoints it advances, flushed, then acknowledged, then its effects
//! published. A crash anywhere loses at most an unacknowledged batch, which
//! the consumer redelivers and the checkpoint makes a no-op if it had landed.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
};
use futures::StreamExt;
use im_schema::v1;
use im_streams::{
    codec::decode_conv_parts,
    definitions::{CONV_STREAM, RCPT_STREAM},
    Topology,
};
use tokio::sync::{mpsc, watch};

use crate::chain;
use crate::keys::{key, seq, META};
use crate::projections::{Effect, Input, Projection};
use crate::store::{Keyspace, StoreError};
use crate::tx::Tx;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Conv = 0,
    Rcpt = 1,
}

impl Source {
    pub fn tag(self) -> &'static str {
        match self {
            Source::Conv => "conv",
            Source::Rcpt => "rcpt",
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
            return vec![format!("im.{}.>", self.tag())];
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

fn dead_letter_key(source: Source, stream_seq: u64) -> Vec<u8> {
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
}

impl ProjectionState {
    /// The keyspace serving now. Callers keep the Arc for one whole answer,
    /// so an answer never mixes two generations.
    pub fn ks(&self) -> Arc<dyn Keyspace> {
        self.ks.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// The serving keyspace's generation (0 until the first rebuild).
    pub fn generation(&self) -> u64 {
        self.ks.read().unwrap_or_else(|e| e.into_inner()).1
    }

    /// Puts another keyspace in service; returns the old one.
    /// Only under `batch_lock`, with `next` at exactly `applied`.
    pub fn swap(&self, next: Arc<dyn Keyspace>, generation: u64) -> (Arc<dyn Keyspace>, u64) {
        let mut ks = self.ks.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *ks, (next, generation))
    }
}

/// Why a projection stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("jetstream: {0}")]
    JetStream(String),
}

pub(crate) fn js_err(e: impl std::fmt::Display) -> RunError {
    RunError::JetStream(e.to_string())
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
}

/// (Re)creates the durable consumer to start right after the store's
/// checkpoint.
async fn ensure_consumer(
    js: &jetstream::Context,
    cfg: &RunnerConfig,
    name: &str,
    source: Source,
    from_checkpoint: u64,
) -> Result<jetstream::consumer::Consumer<pull::Config>, RunError> {
    let stream = js.get_stream(source.stream()).await.map_err(js_err)?;
    let consumer_name = format!("{}_{}_{}", cfg.instance, name, source.tag());
    let filters = source.filters(cfg.topology, &cfg.partitions);
    let config = pull::Config {
        durable_name: Some(consumer_name.clone()),
        description: Some(format!("projection {name} of instance {}", cfg.instance)),
        deliver_policy: if from_checkpoint == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: from_checkpoint + 1,
            }
        },
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_deliver: MAX_DELIVER,
        max_ack_pending: MAX_ACK_PENDING,
        filter_subjects: filters.clone(),
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

/// Decodes one delivered message, or says why it is poison.
enum Decoded {
    Conv(Box<im_streams::codec::StoredEvent>),
    Rcpt(v1::ReceiptEvent),
}

fn decode(source: Source, msg: &jetstream::Message, stream_seq: u64) -> Result<Decoded, String> {
    let too_new = |v: u32| {
        (v > im_schema::SCHEMA_VERSION).then(|| {
            format!(
                "schema version {v} is newer than {}",
                im_schema::SCHEMA_VERSION
            )
        })
    };
    match source {
        Source::Conv => {
            let stored = decode_conv_parts(
                stream_seq,
                msg.subject.as_str(),
                msg.headers.as_ref(),
                &msg.payload,
            )
            .map_err(|e| e.to_string())?;
            if let Some(reason) = too_new(stored.event.schema_version) {
                return Err(reason);
            }
            let subject_conv = im_streams::subjects::conv_id_of_subject(&stored.subject);
            if subject_conv != Some(stored.event.conversation_id.as_str()) {
                return Err("conversation id differs from the subject's".into());
            }
            Ok(Decoded::Conv(Box::new(stored)))
        }
        Source::Rcpt => {
            let ev: v1::ReceiptEvent =
                im_schema::decode(&msg.payload).map_err(|e| e.to_string())?;
            if let Some(reason) = too_new(ev.schema_version) {
                return Err(reason);
            }
            let subject_conv = im_streams::subjects::conv_id_of_subject(msg.subject.as_str());
            if subject_conv != Some(ev.conversation_id.as_str()) {
                return Err("conversation id differs from the subject's".into());
            }
            Ok(Decoded::Rcpt(ev))
        }
    }
}

/// Publishes a batch's effects; deliveries are core NATS (at most once):
/// clients recover gaps from history.
async fn publish_effects(client: &async_nats::Client, cfg: &RunnerConfig, effects: Vec<Effect>) {
    for effect in effects {
        let (users, payload) = match effect {
            Effect::Deliver { users, mut deliver } => {
                if users.len() > cfg.fanout_threshold {
                    deliver.event = None;
                }
                (users, v1::envelope::Payload::Deliver(*deliver))
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

/// Opens a consumer per source, each starting right after the store's
/// checkpoint, and pumps their messages into one bounded channel.
async fn open_pumps(
    js: &jetstream::Context,
    cfg: &RunnerConfig,
    name: &str,
    sources: &[Source],
    applied: Applied,
) -> Result<(mpsc::Receiver<(Source, jetstream::Message)>, AbortOnDrop), RunError> {
    let (tx_in, rx_in) = mpsc::channel::<(Source, jetstream::Message)>(INPUT_QUEUE_MAX);
    let mut pumps = Vec::new();
    for &source in sources {
        let from = match source {
            Source::Conv => applied.conv,
            Source::Rcpt => applied.rcpt,
        };
        let consumer = ensure_consumer(js, cfg, name, source, from).await?;
        let mut messages = consumer.messages().await.map_err(js_err)?;
        let tx_in = tx_in.clone();
        pumps.push(tokio::spawn(async move {
            while let Some(next) = messages.next().await {
                match next {
                    Ok(msg) => {
                        if tx_in.send((source, msg)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(source = source.tag(), error = %e, "consumer error"),
                }
            }
        }));
    }
    Ok((rx_in, AbortOnDrop(pumps)))
}

/// Why a batch loop ended without an error.
enum Stop {
    /// The channel closed (shutdown).
    Closed,
    /// Deliveries went out of order (one lost in transit, or a redelivery
    /// above the checkpoint): reopen the consumers at the checkpoint rather
    /// than apply out of order, which the checkpoint skip would turn into a
    /// lost event.
    Resync(&'static str),
}

/// Starts a projection; returns its state handle and the task running it.
pub async fn start(
    client: async_nats::Client,
    cfg: Arc<RunnerConfig>,
    projection: Arc<dyn Projection>,
    ks: Arc<dyn Keyspace>,
    generation: u64,
) -> Result<
    (
        Arc<ProjectionState>,
        tokio::task::JoinHandle<Result<(), RunError>>,
    ),
    RunError,
> {
    let js = jetstream::new(client.clone());
    let name = projection.name();
    let applied = Applied {
        conv: checkpoint(ks.as_ref(), Source::Conv)?,
        rcpt: checkpoint(ks.as_ref(), Source::Rcpt)?,
    };
    if chain::chain_from(ks.as_ref())?.is_none() {
        // Heads are kept from here on: a store written before they were
        // trusts the chains it already holds.
        ks.commit(vec![chain::chain_from_write(applied.conv + 1)])?;
    }
    let mut sources = vec![Source::Conv];
    if projection.reads_receipts() {
        sources.push(Source::Rcpt);
    }
    // Opened here so a misconfiguration fails `start`, not a task later.
    let first = open_pumps(&js, &cfg, name, &sources, applied).await?;
    let (applied_tx, applied_rx) = watch::channel(applied);
    let state = Arc::new(ProjectionState {
        projection: projection.clone(),
        dead_letters: AtomicU64::new(dead_letters(ks.as_ref())?.len() as u64),
        ks: RwLock::new((ks, generation)),
        applied: applied_rx,
        events_applied: AtomicU64::new(0),
        batch_lock: tokio::sync::Mutex::new(()),
    });
    let task_state = state.clone();
    let task = tokio::spawn(async move {
        let mut pumps = Some(first);
        let mut applied = applied;
        // Bounded by what can go wrong on the wire; each round first commits
        // everything applied so far.
        loop {
            let (rx, guard) = match pumps.take() {
                Some(p) => p,
                None => open_pumps(&js, &cfg, name, &sources, applied).await?,
            };
            let stop =
                run_batches(rx, &client, &cfg, &task_state, &applied_tx, &mut applied).await?;
            drop(guard);
            match stop {
                Stop::Closed => return Ok(()),
                Stop::Resync(why) => {
                    tracing::warn!(
                        projection = name,
                        why,
                        "resyncing consumers from the checkpoint"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok((state, task))
}

/// Folds one delivered event into `tx`: its effects, or a dead letter when
/// it is poison or does not extend the conversation's chain (policy:
/// record, count, skip; the partition goes on and an operator repairs from
/// the dead letter). `from_genesis`: see `chain::check`. Returns whether it
/// was dead-lettered.
pub(crate) fn fold_message(
    projection: &dyn Projection,
    tx: &mut Tx,
    source: Source,
    msg: &jetstream::Message,
    stream_seq: u64,
    effects: &mut Vec<Effect>,
    from_genesis: bool,
) -> Result<bool, StoreError> {
    let checked = decode(source, msg, stream_seq).and_then(|decoded| match decoded {
        Decoded::Conv(stored) => {
            let head = chain::head(tx, &stored.event.conversation_id).map_err(|e| e.to_string())?;
            chain::check(head, &stored, from_genesis).map(|()| Decoded::Conv(stored))
        }
        rcpt => Ok(rcpt),
    });
    match checked {
        Ok(Decoded::Conv(stored)) => {
            effects.extend(projection.apply(tx, &Input::Conv(&stored))?);
            chain::advance(tx, &stored);
            Ok(false)
        }
        Ok(Decoded::Rcpt(event)) => {
            effects.extend(projection.apply(
                tx,
                &Input::Rcpt {
                    stream_seq,
                    event: &event,
                },
            )?);
            Ok(false)
        }
        Err(reason) => {
            tracing::error!(
                projection = projection.name(),
                stream = source.stream(),
                stream_seq,
                %reason,
                "event dead-lettered"
            );
            tx.put_msg(
                dead_letter_key(source, stream_seq),
                &v1::DeadLetter {
                    stream: source.stream().to_string(),
                    stream_seq,
                    subject: msg.subject.to_string(),
                    reason,
                },
            );
            Ok(true)
        }
    }
}

/// Whether a keyspace's conversations without a chain head must start at
/// their creation (see `chain::chain_from_key`).
pub(crate) fn from_genesis(ks: &dyn Keyspace) -> Result<bool, StoreError> {
    Ok(chain::chain_from(ks)?.unwrap_or(1) <= 1)
}

/// Whether a commit is flushed before it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Before acks and deliveries (invariants 5 and 6).
    Flush,
    /// A rebuild's folds into a generation nobody reads yet: the flush of
    /// the generation record before the swap makes them all durable at
    /// once (sled recovers a prefix of its log), and a crash before it
    /// drops the unfinished generation anyway.
    Deferred,
}

/// Stages the checkpoints and commits a fold atomically, off the async
/// threads (sled's flush blocks).
pub(crate) async fn commit_fold(
    ks: Arc<dyn Keyspace>,
    mut tx_writes: Vec<crate::store::Write>,
    at: Applied,
    durability: Durability,
) -> Result<(), RunError> {
    tx_writes.push((
        checkpoint_key(Source::Conv),
        Some(at.conv.to_be_bytes().to_vec()),
    ));
    tx_writes.push((
        checkpoint_key(Source::Rcpt),
        Some(at.rcpt.to_be_bytes().to_vec()),
    ));
    tokio::task::spawn_blocking(move || {
        ks.commit(tx_writes)?;
        match durability {
            Durability::Flush => ks.flush(),
            Durability::Deferred => Ok(()),
        }
    })
    .await
    .map_err(|e| RunError::Store(StoreError::Engine(e.to_string())))?
    .map_err(RunError::Store)
}

/// Folds batches until the channel closes or deliveries go out of order.
async fn run_batches(
    mut rx_in: mpsc::Receiver<(Source, jetstream::Message)>,
    client: &async_nats::Client,
    cfg: &RunnerConfig,
    state: &ProjectionState,
    applied_tx: &watch::Sender<Applied>,
    applied: &mut Applied,
) -> Result<Stop, RunError> {
    let projection = state.projection.clone();
    // The last consumer sequence seen per source: deliveries of a fresh
    // consumer are numbered 1, 2, 3...; a jump means one never arrived.
    let (mut seen_conv, mut seen_rcpt) = (0u64, 0u64);
    while let Some(first) = rx_in.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match rx_in.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        // Held from the fold to the published position: a hand-over or
        // repair waiting on it sees a settled keyspace.
        let held = state.batch_lock.lock().await;
        let ks = state.ks();
        let genesis = from_genesis(ks.as_ref())?;
        let mut tx = Tx::new(ks.as_ref());
        let mut effects = Vec::new();
        // Every message of the batch, acknowledged once the commit is durable.
        let mut to_ack: Vec<jetstream::Message> = Vec::with_capacity(batch.len());
        let (mut folded, mut dead) = (0u64, 0u64);
        let mut next = *applied;
        let mut stop = None;
        for (source, msg) in batch {
            let info = msg.info().map_err(js_err)?;
            let (stream_seq, consumer_seq, delivered) =
                (info.stream_sequence, info.consumer_sequence, info.delivered);
            let (cp, seen) = match source {
                Source::Conv => (&mut next.conv, &mut seen_conv),
                Source::Rcpt => (&mut next.rcpt, &mut seen_rcpt),
            };
            if stream_seq <= *cp {
                // Already applied (a redelivery): acknowledge with the rest.
                *seen = (*seen).max(consumer_seq);
                to_ack.push(msg);
                continue;
            }
            if consumer_seq != *seen + 1 || delivered > 1 {
                stop = Some(Stop::Resync(if delivered > 1 {
                    "redelivery above the checkpoint"
                } else {
                    "a delivery never arrived"
                }));
                break;
            }
            *seen = consumer_seq;
            if fold_message(
                projection.as_ref(),
                &mut tx,
                source,
                &msg,
                stream_seq,
                &mut effects,
                genesis,
            )? {
                dead += 1;
            }
            *cp = stream_seq;
            folded += 1;
            to_ack.push(msg);
        }
        if next != *applied {
            let writes = tx.into_writes();
            commit_fold(ks, writes, next, Durability::Flush).await?;
        }
        *applied = next;
        let _ = applied_tx.send(*applied);
        drop(held);
        // Acknowledge only what is durable. A lost ack means a redelivery,
        // which the checkpoint skips.
        for msg in to_ack {
            if let Err(e) = msg.ack().await {
                tracing::warn!(error = %e, "ack failed; redelivery will be skipped");
            }
        }
        state.events_applied.fetch_add(folded, Relaxed);
        state.dead_letters.fetch_add(dead, Relaxed);
        if cfg.fanout {
            publish_effects(client, cfg, effects).await;
        }
        if let Some(stop) = stop {
            return Ok(stop);
        }
    }
    Ok(Stop::Closed)
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}
