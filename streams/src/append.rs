//! The append path: cached state per conversation (refreshed from the
//! subject's tail, never re-read whole per send), `decide`, and a publish
//! with `Nats-Expected-Last-Subject-Sequence` and `Nats-Msg-Id`. A conflict
//! (10071/10164) refreshes the tail, re-decides and retries, a bounded number
//! of times; a writer that keeps losing forwards the command to the writer
//! that keeps winning (see `forward.rs`).

use std::{
    num::NonZeroUsize,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex, Weak,
    },
    time::Duration,
};

use futures::StreamExt;

use async_nats::jetstream::{
    self, context::PublishErrorKind, message::PublishMessage, stream::RawMessageErrorKind,
};
use bytes::Bytes;
use im_schema::v1;
use lru::LruCache;
use rand::Rng;

use crate::codec::{
    conv_headers, decode_conv, payload_hash, StoredEvent, HDR_SCHEMA_VERSION, HDR_TRACE_ID,
};
use crate::conversation::{apply, check_receipt, decide, Command, ConvState, Rejection};
use crate::definitions::{CONV_STREAM, RCPT_STREAM};
use crate::error::StreamsError;
use crate::forward;
use crate::ids::{validate_id, IdKind};
use crate::log::{read_batch, DIRECT_BATCH_MAX};
use crate::subjects::Topology;

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

/// Recent command ids a writer remembers per conversation, for answering
/// retries of any command with its original positions (~100 B each).
pub const RECENT_COMMANDS_MAX: usize = 512;

/// Conversations whose state a writer keeps. Each state is bounded
/// (members + `MESSAGE_INDEX_MAX` recent messages), so this bounds memory.
pub const CONV_CACHE_MAX: usize = 2_048;

/// Folds one stored event into a writer's state, refusing a conv_seq gap or
/// a broken hash chain: a writer never extends a log it cannot trust.
fn fold_stored(state: &mut ConvState, stored: StoredEvent) -> Result<(), StreamsError> {
    if stored.event.conv_seq != state.conv_seq + 1 {
        return Err(StreamsError::Corrupt {
            stream_seq: stored.stream_seq,
            detail: format!(
                "conv_seq {} follows {}",
                stored.event.conv_seq, state.conv_seq
            ),
        });
    }
    if stored.event.prev_hash != state.last_hash {
        return Err(StreamsError::Corrupt {
            stream_seq: stored.stream_seq,
            detail: "hash chain broken".into(),
        });
    }
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
    loaded: bool,
    /// The writer of the latest event folded in (`Im-Writer`).
    last_writer: String,
    /// `Nats-Msg-Id` of recent events -> (stream_seq, conv_seq). A command's
    /// last event carries `<actor>:<client_msg_id>` (earlier ones a `:<i>`
    /// suffix), so a retry of any recent command, not only a send, is
    /// answered with its original positions, and a half-stored command is
    /// never mistaken for a stored one.
    recent: std::collections::HashMap<String, (u64, u64)>,
    recent_order: std::collections::VecDeque<String>,
}

impl Cached {
    fn remember(&mut self, msg_id: &str, stream_seq: u64, conv_seq: u64) {
        if msg_id.is_empty() {
            return;
        }
        let key = msg_id.to_string();
        if self
            .recent
            .insert(key.clone(), (stream_seq, conv_seq))
            .is_none()
        {
            self.recent_order.push_back(key);
        }
        while self.recent_order.len() > RECENT_COMMANDS_MAX {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
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
    cache: Mutex<LruCache<String, Arc<tokio::sync::Mutex<Cached>>>>,
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
}

#[derive(Default)]
struct Counters {
    stored: AtomicU64,
    conflicts: AtomicU64,
    forwarded_out: AtomicU64,
    forwarded_in: AtomicU64,
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
                cache: Mutex::new(LruCache::new(
                    NonZeroUsize::new(CONV_CACHE_MAX).expect("non-zero"),
                )),
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
        }
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
        let mut cache = self.cache.lock().expect("cache lock");
        cache
            .get_or_insert(conv_id.to_string(), || {
                Arc::new(tokio::sync::Mutex::new(Cached {
                    state: ConvState::empty(conv_id),
                    loaded: false,
                    last_writer: String::new(),
                    recent: Default::default(),
                    recent_order: Default::default(),
                }))
            })
            .clone()
    }

    /// The conversation's state as of the log's current tail.
    pub async fn current_state(&self, conv_id: &str) -> Result<ConvState, StreamsError> {
        validate_id(IdKind::Conversation, conv_id)
            .map_err(|e| StreamsError::Config(e.to_string()))?;
        let subject = self.topology.conv_subject(conv_id).expect("validated");
        let entry = self.entry(conv_id);
        let mut cached = entry.lock().await;
        self.refresh(&subject, &mut cached, None).await?;
        cached.loaded = true;
        Ok(cached.state.clone())
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
        if let Err(e) = validate_id(IdKind::Conversation, conv_id) {
            return Ok(AppendOutcome::Rejected(rejected_id("conversation_id", e)));
        }
        // Ids end up in a header: refuse them before anything else.
        if let Err(e) = validate_id(IdKind::User, &cmd.actor) {
            return Ok(AppendOutcome::Rejected(rejected_id("actor", e)));
        }
        if let Err(e) = validate_id(IdKind::ClientMsg, &cmd.client_msg_id) {
            return Ok(AppendOutcome::Rejected(rejected_id("client_msg_id", e)));
        }
        let subject = self.topology.conv_subject(conv_id).expect("validated");
        let entry = self.entry(conv_id);
        let mut cached = entry.lock().await;
        if !cached.loaded {
            self.refresh(&subject, &mut cached, None).await?;
            cached.loaded = true;
        }
        let primary_msg_id = format!("{}:{}", cmd.actor, cmd.client_msg_id);
        let (mut attempts, mut conflicts_in_a_row, mut forwards) = (0u32, 0u32, 0u32);
        loop {
            attempts += 1;
            // A retry of a recent command, answered without touching the server.
            if let Some(&(stream_seq, conv_seq)) = cached.recent.get(&primary_msg_id) {
                return Ok(AppendOutcome::Duplicate {
                    conv_id: conv_id.to_string(),
                    stream_seq,
                    conv_seq,
                });
            }
            let now_ms = (self.clock)();
            let events = match decide(&cached.state, cmd, now_ms) {
                Ok(events) => events,
                Err(rejection) => return Ok(AppendOutcome::Rejected(rejection)),
            };
            let count = events.len();
            let mut conflict_at = None;
            for (i, mut event) in events.into_iter().enumerate() {
                let state = &mut cached.state;
                // Chain each event to the one before it, including earlier
                // events of this same command.
                event.conv_seq = state.conv_seq + 1;
                event.prev_hash = state.last_hash.to_vec();
                let payload = Bytes::from(im_schema::encode(&event));
                let msg_id = if i + 1 == count {
                    primary_msg_id.clone()
                } else {
                    format!("{primary_msg_id}:{i}")
                };
                let publish = PublishMessage::build()
                    .payload(payload.clone())
                    .headers(conv_headers(&event, trace_id, &self.writer_id))
                    .message_id(&msg_id)
                    .expected_last_subject_sequence(state.version);
                let ack = match self.js.send_publish(subject.clone(), publish).await {
                    Ok(fut) => fut.await,
                    Err(e) => Err(e),
                };
                match ack {
                    Ok(ack) if ack.duplicate => {
                        // Stored before (a retry whose first ack was lost).
                        self.refresh(&subject, &mut cached, None).await?;
                        if i + 1 == count {
                            return self.original(conv_id, &subject, ack.sequence).await;
                        }
                        // An earlier event of this command was stored before:
                        // re-decide from the state that includes it.
                        conflict_at = Some(cached.state.version);
                        break;
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
                        cached.remember(&msg_id, ack.sequence, conv_seq);
                        if i + 1 == count {
                            return Ok(AppendOutcome::Stored {
                                conv_id: conv_id.to_string(),
                                stream_seq: ack.sequence,
                                conv_seq: cached.state.conv_seq,
                            });
                        }
                    }
                    Err(e) if is_conflict(&e) => {
                        self.counters.conflicts.fetch_add(1, Relaxed);
                        conflict_at = Some(conflict_actual_seq(&e));
                        break;
                    }
                    Err(e) => return Err(StreamsError::unavailable(e)),
                }
            }
            let actual = conflict_at.unwrap_or_default();
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
                cached = entry.lock().await;
                self.refresh(&subject, &mut cached, None).await?;
                continue;
            }
            let cap = (CONFLICT_BACKOFF_BASE_US << attempts.min(16)).min(CONFLICT_BACKOFF_CAP_US);
            let wait = rand::rng().random_range(0..cap.max(1));
            tokio::time::sleep(Duration::from_micros(wait)).await;
        }
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

    /// The subject's next event at or after `from_seq`, read from the leader.
    async fn leader_next(
        &self,
        subject: &str,
        from_seq: u64,
    ) -> Result<Option<StoredEvent>, StreamsError> {
        match self
            .conv_stream
            .raw_message_builder()
            .sequence(from_seq)
            .next_by_subject(subject)
            .send()
            .await
        {
            Ok(msg) => Ok(Some(decode_conv(&msg)?)),
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
    /// subject's last sequence when not known), checking that conv_seq is
    /// gapless and the hash chain intact. Reading to a fixed target, not
    /// "until nothing more", keeps a writer from chasing the tail of a
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
        // Bounded: each round folds at least one event, or stops.
        while cached.state.version < target {
            let batch = read_batch(
                &self.client,
                CONV_STREAM,
                subject,
                cached.state.version + 1,
                DIRECT_BATCH_MAX,
            )
            .await?;
            let mut events = batch.events;
            if events.is_empty() {
                // Direct gets may be served by a replica that has not caught
                // up; the leader's answer is authoritative.
                match self.leader_next(subject, cached.state.version + 1).await? {
                    Some(stored) => events.push(stored),
                    None => break,
                }
            }
            for stored in events {
                if !stored.writer.is_empty() {
                    cached.last_writer.clone_from(&stored.writer);
                }
                let (msg_id, stream_seq, conv_seq) = (
                    stored.msg_id.clone(),
                    stored.stream_seq,
                    stored.event.conv_seq,
                );
                fold_stored(&mut cached.state, stored)?;
                cached.remember(&msg_id, stream_seq, conv_seq);
            }
        }
        Ok(())
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
                    Ok(cmd) => match app
                        .execute_inner(&req.conversation_id, &cmd, &req.trace_id, false)
                        .await
                    {
                        Ok(outcome) => forward::to_reply(&outcome),
                        Err(e) => forward::declined(e),
                    },
                },
            };
            let _ = client
                .publish(reply_to, im_schema::encode(&reply).into())
                .await;
        });
    }
}

/// The receipts stream name, for readers.
pub const RECEIPTS_STREAM: &str = RCPT_STREAM;

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
