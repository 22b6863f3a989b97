//! The append path: cached state per conversation (refreshed from the
//! subject's tail, never re-read whole per send), `decide`, and a publish
//! with `Nats-Expected-Last-Subject-Sequence` and `Nats-Msg-Id`. A conflict
//! (10071/10164) refreshes the tail, re-decides and retries, a bounded number
//! of times; a writer that keeps losing forwards the command to the writer
//! that keeps winning (see `forward.rs`).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Weak,
    },
    time::Duration,
};

use futures::StreamExt;

use async_nats::jetstream::{
    self, context::PublishErrorKind, message::PublishMessage, stream::RawMessageErrorKind,
};
use bytes::Bytes;
use im_schema::v1;
use rand::Rng;

use crate::chain::{check_link, LinkError};
use crate::codec::{
    conv_headers, decode_conv, payload_hash, StoredEvent, HDR_SCHEMA_VERSION, HDR_TRACE_ID,
};
use crate::conversation::{apply, check_receipt, decide, Command, ConvState, Rejection};
use crate::dedupe_index;
use crate::definitions::CONV_STREAM;
use crate::error::StreamsError;
use crate::forward;
use crate::ids::{validate_id, IdKind};
use crate::log::{read_batch, Batch, DIRECT_BATCH_MAX};
use crate::seen::{Known, SeenCommands};
use crate::subjects::Topology;
use crate::writer_cache::{WriterCache, WRITER_CACHE_BYTES_MAX};

/// Conflict retries per command. Each conflict means another writer made
/// progress; with jittered backoff a writer gets its turn within a few
/// rounds even against a saturating peer. Past this the caller gets
/// `Conflict` and may retry the same command safely.
pub const CONFLICT_RETRIES_MAX: u32 = 64;

/// Backoff after a conflict: uniform in [0, min(base * 2^attempt, cap)).
/// Small: a refresh costs one round trip, and a long sleep only lets the
/// other writer move further ahead.
const CONFLICT_BACKOFF_BASE_US: u64 = 200;
const CONFLICT_BACKOFF_CAP_US: u64 = 5_000;

/// Conflicts a command meets before its writer forwards it to the writer
/// that won them. Two: one conflict is normal, a second in a row means the
/// other writer is busy on this conversation.
pub const FORWARD_AFTER_CONFLICTS: u32 = 2;

/// Forwards per command; after these the writer retries by itself.
pub const FORWARDS_MAX: u32 = 3;

/// How long a forwarder waits for the winning writer's reply. Covers a
/// queue of forwarded commands ahead of it; past this it carries on itself.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);

/// Forwarded commands a writer runs at once; more are declined at once (the
/// forwarder carries on by itself), so no writer queues without bound.
pub const FORWARDED_INFLIGHT_MAX: usize = 256;

/// Folds one stored event into a writer's state, or says why it does not
/// extend the conversation: a writer never chains onto such an event.
fn fold_stored(state: &mut ConvState, stored: &StoredEvent) -> Result<(), LinkError> {
    check_link(state.conv_seq, &state.last_hash, &stored.event)?;
    apply(state, &stored.event);
    state.record_position(stored.stream_seq, stored.hash);
    Ok(())
}

/// What happened to a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Durably stored (JetStream's PubAck received). Positions are those of
    /// the command's last event.
    Stored {
        conv_id: String,
        stream_seq: u64,
        conv_seq: u64,
    },
    /// The same (sender, client_msg_id) was stored before; the original ids.
    Duplicate {
        conv_id: String,
        stream_seq: u64,
        conv_seq: u64,
    },
    /// Refused by the rules; nothing was appended.
    Rejected(Rejection),
}

/// How publishing a command's events ended.
enum Published {
    Done(AppendOutcome),
    /// Another writer appended first; the subject's actual last sequence
    /// (0 when the server did not say).
    Conflict {
        actual: u64,
    },
}

/// Ids end up in subjects and headers: refused before anything else.
fn refuse_bad_ids(conv_id: &str, cmd: &Command) -> Option<Rejection> {
    [
        (IdKind::Conversation, "conversation_id", conv_id),
        (IdKind::User, "actor", cmd.actor.as_str()),
        (
            IdKind::ClientMsg,
            "client_msg_id",
            cmd.client_msg_id.as_str(),
        ),
    ]
    .into_iter()
    .find_map(|(kind, field, id)| validate_id(kind, id).err().map(|e| rejected_id(field, e)))
}

/// What happened to a receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiptOutcome {
    Stored { stream_seq: u64, duplicate: bool },
    Rejected(Rejection),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiptKind {
    Delivered,
    Read,
}

struct Cached {
    state: ConvState,
    /// (member + blacklist count, their bytes) when last measured: the
    /// list is measured again only when it changed.
    membership_bytes: (usize, usize),
    loaded: bool,
    /// The writer of the latest event folded in (`Im-Writer`).
    last_writer: String,
    /// The command ids folded so far, for answering retries.
    seen: SeenCommands,
}

impl Cached {
    /// The memory this entry holds, ids at their actual length. O(the
    /// recent-message index), plus O(members) when the list changed.
    fn approx_bytes(&mut self) -> usize {
        let count = self.state.members.len() + self.state.blacklist.len();
        if self.membership_bytes.0 != count {
            self.membership_bytes = (count, self.state.membership_bytes());
        }
        std::mem::size_of::<Self>()
            + self.membership_bytes.1
            + self.state.index_bytes()
            + self.seen.approx_bytes()
            + self.last_writer.capacity()
    }
}

/// A conversation held by one command. When it is let go, its size is
/// accounted, so the cache's byte bound follows every change.
struct Held<'a> {
    guard: tokio::sync::MutexGuard<'a, Cached>,
    entry: &'a Arc<tokio::sync::Mutex<Cached>>,
    cache: &'a WriterCache<Cached>,
    conv_id: &'a str,
}

impl std::ops::Deref for Held<'_> {
    type Target = Cached;
    fn deref(&self) -> &Cached {
        &self.guard
    }
}

impl std::ops::DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut Cached {
        &mut self.guard
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let bytes = self.guard.approx_bytes();
        self.cache.account(self.conv_id, self.entry, bytes);
    }
}

pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

fn system_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One writer: what a gateway holds. Shared as `Arc`; commands to one
/// conversation are serialized within a writer, different conversations run
/// in parallel, and different writers coordinate through CAS (and forwarding
/// for fairness).
pub struct Appender {
    writer_id: String,
    serve_task: tokio::task::AbortHandle,
    client: async_nats::Client,
    js: jetstream::Context,
    conv_stream: jetstream::stream::Stream<()>,
    topology: Topology,
    cache: WriterCache<Cached>,
    clock: Clock,
    conflict_retries_max: u32,
    forwarding: bool,
    counters: Counters,
    #[cfg(feature = "fault-injection")]
    drop_next_ack: std::sync::atomic::AtomicBool,
}

fn rejected_id(field: &'static str, e: impl ToString) -> Rejection {
    crate::conversation::invalid(field, e)
}

/// 10071 (standalone; the text carries the actual sequence) or 10164 (the
/// clustered variant, whose text does not) both mean another writer won.
fn is_conflict(e: &jetstream::context::PublishError) -> bool {
    if e.kind() == PublishErrorKind::WrongLastSequence {
        return true;
    }
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|je| {
            je.error_code() == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
        })
}

/// The actual last subject sequence a conflict reports (0 when it does not:
/// the refresh then asks for the subject's last sequence). The number is in
/// the server's description, which only the error's source carries.
fn conflict_actual_seq(e: &jetstream::context::PublishError) -> u64 {
    std::error::Error::source(e)
        .map(|s| actual_seq_from(&s))
        .filter(|n| *n > 0)
        .unwrap_or_else(|| actual_seq_from(e))
}

/// The number after "wrong last sequence: " in a text, or 0.
fn actual_seq_from(err: &impl std::fmt::Display) -> u64 {
    let text = err.to_string();
    text.split_once("wrong last sequence: ")
        .and_then(|(_, rest)| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|d| d.parse().ok())
        })
        .unwrap_or(0)
}

/// Counters of one writer since it started (for metrics and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppenderStats {
    /// Events stored by this writer's own publishes.
    pub stored: u64,
    /// Publishes refused because another writer appended first.
    pub conflicts: u64,
    /// Commands this writer handed to another writer (answered by it).
    pub forwarded_out: u64,
    /// Commands other writers handed to this one.
    pub forwarded_in: u64,
    /// Commands whose id the writer asked the `dedupe` projection about.
    pub index_lookups: u64,
    /// Lookups the projection could not answer, answered by scanning.
    pub index_scans: u64,
    /// Messages on a conversation's subject that did not extend it.
    pub stepped_over: u64,
}

#[derive(Default)]
struct Counters {
    stored: AtomicU64,
    conflicts: AtomicU64,
    forwarded_out: AtomicU64,
    forwarded_in: AtomicU64,
    index_lookups: AtomicU64,
    index_scans: AtomicU64,
    stepped_over: AtomicU64,
}

/// Options of a writer; the defaults are production's.
#[derive(Clone, Default)]
pub struct AppenderOptions {
    /// Replaces the wall clock (tests of time windows).
    pub clock: Option<Clock>,
    /// Never forward commands to other writers (CAS retries only).
    pub no_forwarding: bool,
    /// Overrides `CONFLICT_RETRIES_MAX`.
    pub conflict_retries_max: Option<u32>,
    /// Overrides `WRITER_CACHE_BYTES_MAX`.
    pub cache_bytes_max: Option<usize>,
}

fn new_writer_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..16)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl Drop for Appender {
    fn drop(&mut self) {
        self.serve_task.abort();
    }
}

impl Appender {
    /// A writer with production defaults.
    pub async fn new(
        client: async_nats::Client,
        topology: Topology,
    ) -> Result<Arc<Self>, StreamsError> {
        Self::with_options(client, topology, AppenderOptions::default()).await
    }

    /// A writer; starts serving forwarded commands on `im.writer.<id>`.
    pub async fn with_options(
        client: async_nats::Client,
        topology: Topology,
        options: AppenderOptions,
    ) -> Result<Arc<Self>, StreamsError> {
        let js = jetstream::new(client.clone());
        let conv_stream = js
            .get_stream_no_info(CONV_STREAM)
            .await
            .map_err(StreamsError::unavailable)?;
        let writer_id = new_writer_id();
        let requests = client
            .subscribe(forward::writer_subject(&writer_id))
            .await
            .map_err(StreamsError::unavailable)?;
        Ok(Arc::new_cyclic(|me: &Weak<Appender>| {
            let serve_task = tokio::spawn(serve_forwarded(me.clone(), client.clone(), requests));
            Appender {
                writer_id,
                serve_task: serve_task.abort_handle(),
                client,
                js,
                conv_stream,
                topology,
                cache: WriterCache::new(options.cache_bytes_max.unwrap_or(WRITER_CACHE_BYTES_MAX)),
                clock: options.clock.unwrap_or_else(|| Arc::new(system_clock_ms)),
                conflict_retries_max: options.conflict_retries_max.unwrap_or(CONFLICT_RETRIES_MAX),
                forwarding: !options.no_forwarding,
                counters: Counters::default(),
                #[cfg(feature = "fault-injection")]
                drop_next_ack: std::sync::atomic::AtomicBool::new(false),
            }
        }))
    }

    /// Counters since this writer started.
    pub fn stats(&self) -> AppenderStats {
        let c = &self.counters;
        AppenderStats {
            stored: c.stored.load(Relaxed),
            conflicts: c.conflicts.load(Relaxed),
            forwarded_out: c.forwarded_out.load(Relaxed),
            forwarded_in: c.forwarded_in.load(Relaxed),
            index_lookups: c.index_lookups.load(Relaxed),
            index_scans: c.index_scans.load(Relaxed),
            stepped_over: c.stepped_over.load(Relaxed),
        }
    }

    /// (conversations, bytes) the writer keeps now; the bytes are upper
    /// bounds, held under `WRITER_CACHE_BYTES_MAX`.
    pub fn cache_usage(&self) -> (usize, usize) {
        self.cache.usage()
    }

    /// This writer's id, carried in the `Im-Writer` header of its events.
    pub fn writer_id(&self) -> &str {
        &self.writer_id
    }

    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// The next publish is stored but its PubAck is "lost": the call returns
    /// `Unavailable` as a timed-out ack would, and the cache is not updated.
    #[cfg(feature = "fault-injection")]
    pub fn drop_next_ack(&self) {
        self.drop_next_ack
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn entry(&self, conv_id: &str) -> Arc<tokio::sync::Mutex<Cached>> {
        self.cache.entry(conv_id, || Cached {
            state: ConvState::empty(conv_id),
            membership_bytes: (0, 0),
            loaded: false,
            last_writer: String::new(),
            seen: SeenCommands::new(),
        })
    }

    /// The conversation's state as of the log's current tail.
    pub async fn current_state(&self, conv_id: &str) -> Result<ConvState, StreamsError> {
        validate_id(IdKind::Conversation, conv_id)
            .map_err(|e| StreamsError::Config(e.to_string()))?;
        let subject = self.topology.conv_subject(conv_id).expect("validated");
        let entry = self.entry(conv_id);
        let mut cached = self.hold(&entry, conv_id).await;
        self.refresh(&subject, &mut cached, None).await?;
        cached.loaded = true;
        Ok(cached.state.clone())
    }

    /// The stream sequence of the conversation's latest event in the log (0
    /// when it has none), read from the stream's leader.
    pub async fn log_position(&self, conv_id: &str) -> Result<u64, StreamsError> {
        let subject = self
            .topology
            .conv_subject(conv_id)
            .map_err(|e| StreamsError::Config(e.to_string()))?;
        self.last_seq_of(&subject).await
    }

    /// Decides and appends one command to a conversation.
    pub async fn execute(
        &self,
        conv_id: &str,
        cmd: &Command,
        trace_id: &str,
    ) -> Result<AppendOutcome, StreamsError> {
        let media = match &cmd.action {
            crate::conversation::Action::Send {
                body: crate::conversation::MessageBody::Media(m),
                ..
            } => Some(m),
            _ => None,
        };
        if let Some(m) = media {
            if let Some(rejection) = self.check_media(&cmd.actor, m).await? {
                return Ok(AppendOutcome::Rejected(rejection));
            }
        }
        let outcome = self
            .execute_inner(conv_id, cmd, trace_id, self.forwarding)
            .await?;
        if let (Some(m), &AppendOutcome::Stored { conv_seq, .. }) = (media, &outcome) {
            let sent = v1::MediaSent {
                media_id: m.media_id.clone(),
                conversation_id: conv_id.to_string(),
                conv_seq,
                sender: cmd.actor.clone(),
                at_ms: (self.clock)(),
            };
            // The message is stored either way; without this record its
            // members are refused the download until a resend, so it is
            // logged loudly.
            if let Err(e) = crate::media::record_sent(&self.js, &sent).await {
                tracing::error!(media_id = %m.media_id, conv_id, error = %e, "media sent record failed");
            }
        }
        Ok(outcome)
    }

    /// A message may carry only media uploaded by its sender, exactly as
    /// recorded at upload.
    async fn check_media(
        &self,
        actor: &str,
        m: &v1::MediaRef,
    ) -> Result<Option<Rejection>, StreamsError> {
        if validate_id(IdKind::ClientMsg, &m.media_id).is_err() {
            return Ok(Some(crate::conversation::invalid(
                "media_id",
                "not a valid id",
            )));
        }
        let Some(up) = crate::media::uploaded(&self.js, &m.media_id).await? else {
            return Ok(Some(crate::conversation::invalid(
                "media_id",
                "no upload has this id",
            )));
        };
        if up.uploader != actor {
            return Ok(Some(crate::conversation::invalid(
                "media_id",
                "this media was not uploaded by the sender",
            )));
        }
        let issued = up.media.unwrap_or_default();
        if (issued.size, &issued.checksum, &issued.mime) != (m.size, &m.checksum, &m.mime) {
            return Ok(Some(crate::conversation::invalid(
                "media",
                "size, checksum or mime differ from the upload",
            )));
        }
        Ok(None)
    }

    async fn execute_inner(
        &self,
        conv_id: &str,
        cmd: &Command,
        trace_id: &str,
        may_forward: bool,
    ) -> Result<AppendOutcome, StreamsError> {
        if let Some(rejection) = refuse_bad_ids(conv_id, cmd) {
            return Ok(AppendOutcome::Rejected(rejection));
        }
        let subject = self.topology.conv_subject(conv_id).expect("validated");
        let msg_id = format!("{}:{}", cmd.actor, cmd.client_msg_id);
        let entry = self.entry(conv_id);
        // Asked without holding the conversation, so the lookups of several
        // commands to one conversation overlap; only ids the writer cannot
        // rule out are asked at all.
        let mut asked_upto = 0;
        let mut cached = self.lock_loaded(&entry, conv_id, &subject).await?;
        if let Known::Ask { upto } = cached.seen.lookup(&msg_id) {
            drop(cached);
            if let Some(original) = self.ask_index(conv_id, cmd, upto).await? {
                return Ok(original);
            }
            asked_upto = upto;
            cached = self.lock_loaded(&entry, conv_id, &subject).await?;
        }
        // A version seen to be the subject's last during this command.
        let mut confirmed = None;
        let (mut attempts, mut conflicts_in_a_row, mut forwards) = (0u32, 0u32, 0u32);
        loop {
            attempts += 1;
            if let Some(original) = self
                .known_original(conv_id, cmd, &msg_id, &cached.seen, &mut asked_upto)
                .await?
            {
                return Ok(original);
            }
            let events = match decide(&cached.state, cmd, (self.clock)()) {
                Ok(events) => events,
                Err(rejection) => {
                    // REJECTED tells the client nothing was appended and a
                    // retry is pointless: only ever said of the latest state.
                    let version = cached.state.version;
                    if confirmed == Some(version) {
                        return Ok(AppendOutcome::Rejected(rejection));
                    }
                    let last = self.last_seq_of(&subject).await?;
                    if last <= version {
                        return Ok(AppendOutcome::Rejected(rejection));
                    }
                    if attempts > self.conflict_retries_max {
                        return Err(StreamsError::Conflict {
                            expected: version,
                            actual: last,
                            attempts,
                        });
                    }
                    self.refresh(&subject, &mut cached, Some(last)).await?;
                    confirmed = Some(last);
                    continue;
                }
            };
            let actual = match self
                .publish_command(conv_id, &subject, &mut cached, events, &msg_id, trace_id)
                .await?
            {
                Published::Done(outcome) => return Ok(outcome),
                Published::Conflict { actual } => actual,
            };
            let expected = cached.state.version;
            conflicts_in_a_row += 1;
            tracing::debug!(conv_id, attempts, expected, actual, "append conflict");
            // The error named the subject's actual last sequence: read to it.
            // Also before giving up, so the caller's retry starts current.
            self.refresh(&subject, &mut cached, Some(actual)).await?;
            if attempts > self.conflict_retries_max {
                return Err(StreamsError::Conflict {
                    expected,
                    actual,
                    attempts,
                });
            }
            let winner = cached.last_writer.clone();
            if may_forward
                && conflicts_in_a_row >= FORWARD_AFTER_CONFLICTS
                && forwards < FORWARDS_MAX
                && !winner.is_empty()
                && winner != self.writer_id
            {
                forwards += 1;
                conflicts_in_a_row = 0;
                // Let go of the conversation while the winner works on it:
                // it may be forwarding to us at the same time.
                drop(cached);
                if let Some(outcome) = self.forward(&winner, conv_id, cmd, trace_id).await {
                    self.counters.forwarded_out.fetch_add(1, Relaxed);
                    return Ok(outcome);
                }
                cached = self.lock_loaded(&entry, conv_id, &subject).await?;
                self.refresh(&subject, &mut cached, None).await?;
                continue;
            }
            let cap = (CONFLICT_BACKOFF_BASE_US << attempts.min(16)).min(CONFLICT_BACKOFF_CAP_US);
            let wait = rand::rng().random_range(0..cap.max(1));
            tokio::time::sleep(Duration::from_micros(wait)).await;
        }
    }

    /// The conversation, held (commands to it wait meanwhile).
    async fn hold<'a>(
        &'a self,
        entry: &'a Arc<tokio::sync::Mutex<Cached>>,
        conv_id: &'a str,
    ) -> Held<'a> {
        Held {
            guard: entry.lock().await,
            entry,
            cache: &self.cache,
            conv_id,
        }
    }

    /// The conversation, held, with its state loaded.
    async fn lock_loaded<'a>(
        &'a self,
        entry: &'a Arc<tokio::sync::Mutex<Cached>>,
        conv_id: &'a str,
        subject: &str,
    ) -> Result<Held<'a>, StreamsError> {
        let mut cached = self.hold(entry, conv_id).await;
        if !cached.loaded {
            self.refresh(subject, &mut cached, None).await?;
            cached.loaded = true;
        }
        Ok(cached)
    }

    /// The original's positions when the command is already in the log up
    /// to the writer's version. Asks the `dedupe` projection only for what
    /// the writer cannot rule out itself and has not asked about yet.
    async fn known_original(
        &self,
        conv_id: &str,
        cmd: &Command,
        msg_id: &str,
        seen: &SeenCommands,
        asked_upto: &mut u64,
    ) -> Result<Option<AppendOutcome>, StreamsError> {
        match seen.lookup(msg_id) {
            Known::Stored {
                stream_seq,
                conv_seq,
            } => Ok(Some(AppendOutcome::Duplicate {
                conv_id: conv_id.to_string(),
                stream_seq,
                conv_seq,
            })),
            Known::Ask { upto } if upto > *asked_upto => {
                let original = self.ask_index(conv_id, cmd, upto).await?;
                *asked_upto = upto;
                Ok(original)
            }
            Known::Ask { .. } | Known::New => Ok(None),
        }
    }

    /// Whether the command is among the conversation's events up to `upto`,
    /// as an outcome: the `dedupe` projection's answer, or, when it cannot
    /// answer, the writer's own bounded scan of the subject.
    async fn ask_index(
        &self,
        conv_id: &str,
        cmd: &Command,
        upto: u64,
    ) -> Result<Option<AppendOutcome>, StreamsError> {
        self.counters.index_lookups.fetch_add(1, Relaxed);
        let (sender, cmid) = (&cmd.actor, &cmd.client_msg_id);
        let found = match dedupe_index::lookup(
            &self.client,
            self.topology,
            conv_id,
            sender,
            cmid,
            upto,
        )
        .await
        {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(conv_id, error = %e, "dedupe index unavailable: scanning the subject");
                self.counters.index_scans.fetch_add(1, Relaxed);
                let subject = self.topology.conv_subject(conv_id).expect("validated");
                dedupe_index::scan(&self.client, &subject, sender, cmid, upto).await?
            }
        };
        Ok(
            found.map(|(stream_seq, conv_seq)| AppendOutcome::Duplicate {
                conv_id: conv_id.to_string(),
                stream_seq,
                conv_seq,
            }),
        )
    }

    /// Publishes a command's events in order at the cached version, each
    /// chained to the one before; folds each into the cache once acked.
    async fn publish_command(
        &self,
        conv_id: &str,
        subject: &str,
        cached: &mut Cached,
        events: Vec<v1::ConvEvent>,
        primary_msg_id: &str,
        trace_id: &str,
    ) -> Result<Published, StreamsError> {
        let count = events.len();
        for (i, mut event) in events.into_iter().enumerate() {
            let state = &mut cached.state;
            // Chain each event to the one before it, including earlier
            // events of this same command.
            event.conv_seq = state.conv_seq + 1;
            event.prev_hash = state.last_hash.to_vec();
            let payload = Bytes::from(im_schema::encode(&event));
            let last = i + 1 == count;
            let msg_id = if last {
                primary_msg_id.to_string()
            } else {
                format!("{primary_msg_id}:{i}")
            };
            let publish = PublishMessage::build()
                .payload(payload.clone())
                .headers(conv_headers(&event, trace_id, &self.writer_id))
                .message_id(&msg_id)
                .expected_last_subject_sequence(state.version);
            let ack = match self.js.send_publish(subject.to_string(), publish).await {
                Ok(fut) => fut.await,
                Err(e) => Err(e),
            };
            match ack {
                Ok(ack) if ack.duplicate => {
                    // Stored before (a retry whose first ack was lost).
                    self.refresh(subject, cached, None).await?;
                    if last {
                        let original = self.original(conv_id, subject, ack.sequence).await?;
                        return Ok(Published::Done(original));
                    }
                    // An earlier event of this command was stored before:
                    // re-decide from the state that includes it.
                    return Ok(Published::Conflict {
                        actual: cached.state.version,
                    });
                }
                Ok(ack) => {
                    #[cfg(feature = "fault-injection")]
                    if self
                        .drop_next_ack
                        .swap(false, std::sync::atomic::Ordering::SeqCst)
                    {
                        return Err(StreamsError::Unavailable(
                            "publish ack lost (injected fault)".into(),
                        ));
                    }
                    apply(state, &event);
                    state.record_position(ack.sequence, payload_hash(&payload));
                    self.counters.stored.fetch_add(1, Relaxed);
                    cached.last_writer.clone_from(&self.writer_id);
                    let conv_seq = cached.state.conv_seq;
                    cached.seen.record(&msg_id, ack.sequence, conv_seq);
                    if last {
                        return Ok(Published::Done(AppendOutcome::Stored {
                            conv_id: conv_id.to_string(),
                            stream_seq: ack.sequence,
                            conv_seq,
                        }));
                    }
                }
                Err(e) if is_conflict(&e) => {
                    self.counters.conflicts.fetch_add(1, Relaxed);
                    return Ok(Published::Conflict {
                        actual: conflict_actual_seq(&e),
                    });
                }
                Err(e) => return Err(StreamsError::unavailable(e)),
            }
        }
        unreachable!("decide returns at least one event")
    }

    /// Hands a command to another writer; `None` when it is gone, busy,
    /// slow or declines (the caller carries on by itself).
    async fn forward(
        &self,
        writer: &str,
        conv_id: &str,
        cmd: &Command,
        trace_id: &str,
    ) -> Option<AppendOutcome> {
        let request = forward::to_request(conv_id, cmd, trace_id);
        let reply = tokio::time::timeout(
            FORWARD_TIMEOUT,
            self.client.request(
                forward::writer_subject(writer),
                im_schema::encode(&request).into(),
            ),
        )
        .await;
        let msg = match reply {
            Ok(Ok(msg)) => msg,
            Ok(Err(e)) => {
                tracing::debug!(conv_id, writer, error = %e, "forward failed");
                return None;
            }
            Err(_) => {
                tracing::debug!(conv_id, writer, "forward timed out");
                return None;
            }
        };
        let reply: v1::WriteReply = im_schema::decode(&msg.payload).ok()?;
        forward::from_reply(conv_id, &reply)
    }

    /// The original ids of a duplicate, from the stored event itself.
    async fn original(
        &self,
        conv_id: &str,
        subject: &str,
        stream_seq: u64,
    ) -> Result<AppendOutcome, StreamsError> {
        let msg = self
            .conv_stream
            .get_raw_message(stream_seq)
            .await
            .map_err(StreamsError::unavailable)?;
        if msg.subject.as_str() != subject {
            // The same client_msg_id was used for another conversation.
            return Ok(AppendOutcome::Rejected(rejected_id(
                "client_msg_id",
                "already used for another conversation",
            )));
        }
        let stored = decode_conv(&msg)?;
        Ok(AppendOutcome::Duplicate {
            conv_id: conv_id.to_string(),
            stream_seq,
            conv_seq: stored.event.conv_seq,
        })
    }

    /// The subject's next message at or after `from_seq`, read from the
    /// leader, as a batch of one.
    async fn leader_next(
        &self,
        subject: &str,
        from_seq: u64,
    ) -> Result<Option<Batch>, StreamsError> {
        match self
            .conv_stream
            .raw_message_builder()
            .sequence(from_seq)
            .next_by_subject(subject)
            .send()
            .await
        {
            Ok(msg) => {
                let (mut events, mut undecodable) = (Vec::new(), Vec::new());
                match decode_conv(&msg) {
                    Ok(stored) => events.push(stored),
                    Err(e) => undecodable.push((msg.sequence, e)),
                }
                Ok(Some(Batch {
                    events,
                    undecodable,
                    pending: 0,
                }))
            }
            Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => Ok(None),
            Err(e) => Err(StreamsError::unavailable(e)),
        }
    }

    /// The stream sequence of the subject's last event (0 if none).
    async fn last_seq_of(&self, subject: &str) -> Result<u64, StreamsError> {
        match self
            .conv_stream
            .raw_message_builder()
            .last_by_subject(subject)
            .send()
            .await
        {
            Ok(msg) => Ok(msg.sequence),
            Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => Ok(0),
            Err(e) => Err(StreamsError::unavailable(e)),
        }
    }

    /// Folds the subject's events after `state.version` up to `target` (the
    /// subject's last sequence when not known). Reading to a fixed target,
    /// not "until nothing more", keeps a writer from chasing the tail of a
    /// conversation another writer keeps appending to.
    async fn refresh(
        &self,
        subject: &str,
        cached: &mut Cached,
        target: Option<u64>,
    ) -> Result<(), StreamsError> {
        let target = match target {
            Some(t) if t > 0 => t,
            _ => self.last_seq_of(subject).await?,
        };
        // Bounded: each round reads at least one message, or stops.
        while cached.state.version < target {
            let from = cached.state.version + 1;
            let mut batch =
                read_batch(&self.client, CONV_STREAM, subject, from, DIRECT_BATCH_MAX).await?;
            if batch.last_seq() == 0 {
                // Direct gets may be served by a replica that has not caught
                // up; the leader's answer is authoritative.
                match self.leader_next(subject, from).await? {
                    Some(b) => batch = b,
                    None => break,
                }
            }
            let last = batch.last_seq();
            for stored in batch.events {
                self.fold_into(cached, stored);
            }
            for (stream_seq, why) in batch.undecodable {
                self.step_over(subject, stream_seq, &why);
            }
            cached.state.version = cached.state.version.max(last);
        }
        Ok(())
    }

    /// Folds one stored event into the cache, or steps over it when it does
    /// not extend the conversation (see `chain.rs`): it moves the CAS
    /// version, never the chain.
    fn fold_into(&self, cached: &mut Cached, stored: StoredEvent) {
        match fold_stored(&mut cached.state, &stored) {
            Ok(()) => {
                if !stored.writer.is_empty() {
                    cached.last_writer.clone_from(&stored.writer);
                }
                let conv_seq = cached.state.conv_seq;
                cached
                    .seen
                    .record(&stored.msg_id, stored.stream_seq, conv_seq);
            }
            Err(why) => {
                self.step_over(&stored.subject, stored.stream_seq, &why);
                cached.state.version = stored.stream_seq;
            }
        }
    }

    fn step_over(&self, subject: &str, stream_seq: u64, why: &dyn std::fmt::Display) {
        self.counters.stepped_over.fetch_add(1, Relaxed);
        tracing::error!(subject, stream_seq, %why, "not part of the conversation: stepped over");
    }

    /// Appends a cumulative delivery or read cursor (no CAS: readers take the
    /// maximum). Checked against the log's latest state: members only, and
    /// never past the conversation's last seq.
    pub async fn append_receipt(
        &self,
        conv_id: &str,
        user: &str,
        device_id: &str,
        kind: ReceiptKind,
        up_to_seq: u64,
        trace_id: &str,
    ) -> Result<ReceiptOutcome, StreamsError> {
        for (k, field, id) in [
            (IdKind::Conversation, "conversation_id", conv_id),
            (IdKind::User, "user_id", user),
            (IdKind::Device, "device_id", device_id),
        ] {
            if let Err(e) = validate_id(k, id) {
                return Ok(ReceiptOutcome::Rejected(rejected_id(field, e)));
            }
        }
        let state = self.current_state(conv_id).await?;
        if let Err(r) = check_receipt(&state, user, up_to_seq) {
            return Ok(ReceiptOutcome::Rejected(r));
        }
        let now_ms = (self.clock)();
        let (kind_tag, event_kind) = match kind {
            ReceiptKind::Delivered => (
                "delivered",
                v1::receipt_event::Kind::Delivered(v1::Delivered { up_to_seq }),
            ),
            ReceiptKind::Read => (
                "read",
                v1::receipt_event::Kind::Read(v1::Read { up_to_seq }),
            ),
        };
        let event = v1::ReceiptEvent {
            conversation_id: conv_id.to_string(),
            user_id: user.to_string(),
            device_id: device_id.to_string(),
            at_ms: now_ms,
            schema_version: im_schema::SCHEMA_VERSION,
            kind: Some(event_kind),
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(crate::codec::HDR_EVENT_TYPE, kind_tag);
        headers.insert(
            HDR_SCHEMA_VERSION,
            im_schema::SCHEMA_VERSION.to_string().as_str(),
        );
        if !trace_id.is_empty() {
            headers.insert(HDR_TRACE_ID, trace_id);
        }
        let publish = PublishMessage::build()
            .payload(Bytes::from(im_schema::encode(&event)))
            .headers(headers)
            // Per conversation: the same cursor value in two conversations
            // is two receipts.
            .message_id(format!(
                "{conv_id}:{user}:{device_id}:{kind_tag}:{up_to_seq}"
            ));
        let subject = self.topology.rcpt_subject(conv_id).expect("validated");
        let ack = self
            .js
            .send_publish(subject, publish)
            .await
            .map_err(StreamsError::unavailable)?
            .await
            .map_err(StreamsError::unavailable)?;
        Ok(ReceiptOutcome::Stored {
            stream_seq: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}

/// Serves commands other writers forward to this one, each through the
/// normal (never re-forwarding) path, at most `FORWARDED_INFLIGHT_MAX` at once.
async fn serve_forwarded(
    me: Weak<Appender>,
    client: async_nats::Client,
    mut requests: async_nats::Subscriber,
) {
    let inflight = Arc::new(tokio::sync::Semaphore::new(FORWARDED_INFLIGHT_MAX));
    while let Some(msg) = requests.next().await {
        let Some(reply_to) = msg.reply.clone() else {
            continue;
        };
        let Some(app) = me.upgrade() else { break };
        let Ok(permit) = inflight.clone().try_acquire_owned() else {
            let busy = im_schema::encode(&forward::declined("busy"));
            let _ = client.publish(reply_to, busy.into()).await;
            continue;
        };
        let client = client.clone();
        app.counters.forwarded_in.fetch_add(1, Relaxed);
        tokio::spawn(async move {
            let _permit = permit;
            let reply = match im_schema::decode::<v1::WriteRequest>(&msg.payload) {
                Err(e) => forward::declined(e),
                Ok(req) => match forward::from_request(&req) {
                    Err(r) => forward::to_reply(&AppendOutcome::Rejected(r)),
                    // The forwarder stops waiting after `FORWARD_TIMEOUT`;
                    // so does this, releasing the conversation.
                    Ok(cmd) => match tokio::time::timeout(
                        FORWARD_TIMEOUT,
                        app.execute_inner(&req.conversation_id, &cmd, &req.trace_id, false),
                    )
                    .await
                    {
                        Ok(Ok(outcome)) => forward::to_reply(&outcome),
                        Ok(Err(e)) => forward::declined(e),
                        Err(_) => forward::declined("timed out"),
                    },
                },
            };
            let _ = client
                .publish(reply_to, im_schema::encode(&reply).into())
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actual_sequence_is_read_from_the_error_text() {
        assert_eq!(actual_seq_from(&"wrong last sequence: 42"), 42);
        assert_eq!(
            actual_seq_from(&"publish failed: wrong last sequence: 7"),
            7
        );
        assert_eq!(actual_seq_from(&"no digits"), 0);
    }
}
