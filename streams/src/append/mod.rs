//! The append path: cached state per conversation (refreshed from the
//! subject's tail, never re-read whole per send), `decide`, and a publish
//! with `Nats-Expected-Last-Subject-Sequence` and `Nats-Msg-Id`. A conflict
//! (10071/10164) refreshes the tail, re-decides and retries, a bounded number
//! of times; a writer that keeps losing forwards the command to the writer
//! that keeps winning (`forwarding.rs`; the messages it sends, `forward.rs`).
//! One file per concern: the conversations held and refreshed (`cache`),
//! the CAS publish (`cas`), whether a command is already stored
//! (`dedupe`), forwarding, media checks and receipts.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Weak,
    },
    time::Duration,
};

use async_nats::jetstream::{self};
use im_schema::v1;
use rand::Rng;

use crate::conversation::{decide, Command, ConvState, Rejection};
use crate::definitions::CONV_STREAM;
use crate::error::{OrUnavailable, StreamsError};
use crate::ids::{validate_id, IdKind};
use crate::seal::seal;
use crate::seen::Known;
use crate::subjects::Topology;
use crate::writer_cache::{WriterCache, WRITER_CACHE_BYTES_MAX};

mod cache;
mod cas;
mod dedupe;
mod forward;
mod forwarding;
mod media_check;
mod outcome;
mod people;
mod reach;
mod receipts;

pub use outcome::AppendOutcome;

use cache::Cached;
use forwarding::serve_forwarded;

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

/// Events a cold writer folds from a conversation's start rather than ask
/// a projector for its snapshot: four batched reads, and a conversation
/// this short gets a complete exactly-once filter (`seen.rs`); a longer one
/// starts from the snapshot and asks the `dedupe` projection about ids
/// from before it.
pub const COLD_FOLD_EVENTS_MAX: u64 = 1_024;

/// While no writer key is registered, how long a writer trusts that answer
/// before asking the bucket again: the first registration is then seen
/// within this, without a round trip per tail read.
pub const KEYS_RECHECK_EVERY: Duration = Duration::from_millis(250);

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
    signer: Option<Arc<crate::signing::EventSigner>>,
    /// The registered keys, to check the events other writers appended.
    keys: tokio::sync::Mutex<crate::signing::KeyRing>,
    serve_task: tokio::task::AbortHandle,
    client: async_nats::Client,
    js: jetstream::Context,
    conv_stream: jetstream::stream::Stream<()>,
    topology: Topology,
    cache: WriterCache<Cached>,
    clock: Clock,
    conflict_retries_max: u32,
    forwarding: bool,
    /// Whether a cold writer starts long conversations from a snapshot.
    snapshots: bool,
    content: Option<Arc<crate::content::ContentKeys>>,
    /// The deployment encrypts content and this writer has no keys: it
    /// must append nothing with content (it would be in clear).
    clear_forbidden: bool,
    counters: Counters,
    #[cfg(feature = "fault-injection")]
    drop_next_ack: std::sync::atomic::AtomicBool,
}

fn rejected_id(field: &'static str, e: impl ToString) -> Rejection {
    crate::conversation::invalid(field, e)
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
    /// Messages on a conversation's subject that were not part of it.
    pub stepped_over: u64,
    /// Messages read from conversations' subjects (loads and refreshes).
    pub events_read: u64,
    /// Conversations taken up from a projector's snapshot.
    pub snapshots: u64,
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
    events_read: AtomicU64,
    snapshots: AtomicU64,
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
    /// Signs every event appended (`signing.rs`).
    pub signer: Option<Arc<crate::signing::EventSigner>>,
    /// Cold loads read every conversation from its first event (the
    /// baseline `imctl bench` measures snapshots against).
    pub no_snapshots: bool,
    /// Where the deployment encrypts content: the data keys every event's
    /// content is sealed under before it is positioned (`content/`).
    pub content: Option<Arc<crate::content::ContentKeys>>,
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
        let keys_js = js.clone();
        let conv_stream = js
            .get_stream_no_info(CONV_STREAM)
            .await
            .or_unavailable("writer subscription")?;
        let clear_forbidden =
            options.content.is_none() && crate::content::bucket_exists(&js).await?;
        let writer_id = new_writer_id();
        let requests = client
            .subscribe(forward::writer_subject(&writer_id))
            .await
            .or_unavailable("writer subscription")?;
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
                snapshots: !options.no_snapshots,
                signer: options.signer,
                content: options.content,
                clear_forbidden,
                keys: tokio::sync::Mutex::new(crate::signing::KeyRing::new(
                    keys_js,
                    KEYS_RECHECK_EVERY,
                )),
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
            events_read: c.events_read.load(Relaxed),
            snapshots: c.snapshots.load(Relaxed),
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

    /// The conversation's state as of the log's current tail.
    pub async fn current_state(&self, conv_id: &str) -> Result<ConvState, StreamsError> {
        let subject = self.topology.conv_subject(conv_id)?;
        let entry = self.entry(conv_id);
        let mut cached = self.hold(&entry, conv_id).await;
        self.refresh(&subject, &mut cached, None).await?;
        cached.loaded = true;
        Ok(cached.state.clone())
    }

    /// The stream sequence of the conversation's latest event in the log (0
    /// when it has none), read from the stream's leader.
    pub async fn log_position(&self, conv_id: &str) -> Result<u64, StreamsError> {
        let subject = self.topology.conv_subject(conv_id)?;
        self.last_seq_of(&subject).await
    }

    /// The stream sequence of IM_CONV's latest event: a position no write
    /// has reached yet is past it.
    pub async fn log_end(&self) -> Result<u64, StreamsError> {
        let info = self
            .conv_stream
            .get_info()
            .await
            .map_err(|e| StreamsError::unavailable("reading the log's end", e))?;
        Ok(info.state.last_sequence)
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
            crate::conversation::Action::UpdateProfile {
                avatar: Some(m), ..
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

    /// REJECTED tells the client nothing was appended and a retry is
    /// pointless: it is only ever said of the subject's latest state. The
    /// refusal when the cached state is that (`confirmed` during this
    /// command, or read now); else None, the tail folded in, to decide again.
    async fn on_latest(
        &self,
        subject: &str,
        cached: &mut Cached,
        (confirmed, attempts): (&mut Option<u64>, u32),
        rejection: Rejection,
    ) -> Result<Option<AppendOutcome>, StreamsError> {
        let version = cached.state.version;
        if *confirmed == Some(version) {
            return Ok(Some(AppendOutcome::Rejected(rejection)));
        }
        let last = self.last_seq_of(subject).await?;
        if last <= version {
            return Ok(Some(AppendOutcome::Rejected(rejection)));
        }
        if attempts > self.conflict_retries_max {
            return Err(StreamsError::Conflict {
                expected: version,
                actual: last,
                attempts,
            });
        }
        self.refresh(subject, cached, Some(last)).await?;
        *confirmed = Some(last);
        Ok(None)
    }

    /// Seals the events' content where the deployment encrypts it.
    async fn seal_content(&self, events: &mut [v1::ConvEvent]) -> Result<(), StreamsError> {
        let with_content =
            |e: &v1::ConvEvent| e.kind.as_ref().is_some_and(im_rules::content::has_content);
        match &self.content {
            Some(keys) => crate::content::seal_events(keys, events).await,
            None if self.clear_forbidden && events.iter().any(with_content) => {
                Err(StreamsError::Config(
                    "this deployment encrypts message content and this writer has no \
                     key-encryption key (IM_KEK_FILE): nothing appended"
                        .into(),
                ))
            }
            None => Ok(()),
        }
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
        // The version whose targets' logs were checked (`reach.rs`).
        let mut reach_checked = None;
        let (mut attempts, mut conflicts_in_a_row, mut forwards) = (0u32, 0u32, 0u32);
        loop {
            attempts += 1;
            if let Some(original) = self
                .known_original(conv_id, cmd, &msg_id, &cached.seen, &mut asked_upto)
                .await?
            {
                return Ok(original);
            }
            let decided = decide(&cached.state, cmd, (self.clock)());
            let decided = match decided {
                Ok(events) if reach_checked != Some(cached.state.version) => {
                    reach_checked = Some(cached.state.version);
                    match self.refuse_reach_of(&cached.state, cmd).await? {
                        Some(refused) => Err(refused),
                        None => Ok(events),
                    }
                }
                other => other,
            };
            let sealed = match decided {
                Ok(mut events) => {
                    self.seal_content(&mut events).await?;
                    seal(&cached.state, events)
                }
                Err(rejection) => {
                    let latest = (&mut confirmed, attempts);
                    match self
                        .on_latest(&subject, &mut cached, latest, rejection)
                        .await?
                    {
                        Some(refused) => return Ok(refused),
                        None => continue,
                    }
                }
            };
            let actual = match self
                .publish_command(conv_id, &subject, &mut cached, sealed, &msg_id, trace_id)
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
}
