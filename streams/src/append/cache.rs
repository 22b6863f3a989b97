//! The writer's conversations: held one command at a time, loaded and
//! refreshed from the subject's tail (never re-read whole per send).

use std::sync::{atomic::Ordering::Relaxed, Arc};

use async_nats::jetstream::stream::RawMessageErrorKind;

use crate::codec::{decode_conv, StoredEvent};
use crate::conversation::ConvState;
use crate::definitions::CONV_STREAM;
use crate::error::StreamsError;
use crate::log::{read_batch, Batch, DIRECT_BATCH_MAX};
use crate::seen::SeenCommands;
use crate::writer_cache::WriterCache;

use super::{Appender, COLD_FOLD_EVENTS_MAX};
use crate::signing::WriterKeys;

pub(super) struct Cached {
    pub(super) state: ConvState,
    /// (member + blacklist count, their bytes) when last measured: the
    /// list is measured again only when it changed.
    pub(super) membership_bytes: (usize, usize),
    pub(super) loaded: bool,
    /// The writer of the latest event folded in (`Im-Writer`).
    pub(super) last_writer: String,
    /// The command ids folded so far, for answering retries.
    pub(super) seen: SeenCommands,
}

impl Cached {
    /// The memory this entry holds, ids at their actual length. O(the
    /// recent-message index), plus O(members) when the list changed.
    pub(super) fn approx_bytes(&mut self) -> usize {
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
pub(super) struct Held<'a> {
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

impl Appender {
    pub(super) fn entry(&self, conv_id: &str) -> Arc<tokio::sync::Mutex<Cached>> {
        self.cache.entry(conv_id, || Cached {
            state: ConvState::empty(conv_id),
            membership_bytes: (0, 0),
            loaded: false,
            last_writer: String::new(),
            seen: SeenCommands::new(),
        })
    }

    /// The conversation, held (commands to it wait meanwhile).
    pub(super) async fn hold<'a>(
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
    pub(super) async fn lock_loaded<'a>(
        &'a self,
        entry: &'a Arc<tokio::sync::Mutex<Cached>>,
        conv_id: &'a str,
        subject: &str,
    ) -> Result<Held<'a>, StreamsError> {
        let mut cached = self.hold(entry, conv_id).await;
        if !cached.loaded {
            self.load(subject, conv_id, &mut cached).await?;
            cached.loaded = true;
        }
        Ok(cached)
    }

    /// Takes up a conversation this writer does not hold: a long one from
    /// the `members` projection's snapshot and the tail after it (the
    /// first command costs the tail, not the history), a short one — or
    /// any when no projector answers — from its first event, which also
    /// fills the exactly-once filter (`seen.rs`).
    async fn load(
        &self,
        subject: &str,
        conv_id: &str,
        cached: &mut Cached,
    ) -> Result<(), StreamsError> {
        let (last, conv_seq) = self.last_of(subject).await?;
        if self.snapshots && conv_seq > COLD_FOLD_EVENTS_MAX && cached.state.version == 0 {
            match crate::snapshot::fetch(&self.client, self.topology, conv_id).await {
                Ok(Some(state)) if state.version <= last => {
                    self.counters.snapshots.fetch_add(1, Relaxed);
                    cached.seen = SeenCommands::after_snapshot(state.version);
                    cached.state = state;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(conv_id, error = %e, "no snapshot: reading the whole subject");
                }
            }
        }
        self.refresh(subject, cached, Some(last)).await
    }

    /// The subject's next message at or after `from_seq`, read from the
    /// leader, as a batch of one.
    pub(super) async fn leader_next(
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
            Err(e) => Err(StreamsError::unavailable("reading the tail", e)),
        }
    }

    /// The stream sequence of the subject's last event (0 if none).
    pub(super) async fn last_seq_of(&self, subject: &str) -> Result<u64, StreamsError> {
        Ok(self.last_of(subject).await?.0)
    }

    /// The stream sequence and the `Im-Conv-Seq` header of the subject's
    /// last message ((0, 0) if none).
    async fn last_of(&self, subject: &str) -> Result<(u64, u64), StreamsError> {
        match self
            .conv_stream
            .raw_message_builder()
            .last_by_subject(subject)
            .send()
            .await
        {
            Ok(msg) => {
                let conv_seq = msg
                    .headers
                    .get(crate::codec::HDR_CONV_SEQ)
                    .and_then(|v| v.as_str().parse().ok())
                    .unwrap_or(0);
                Ok((msg.sequence, conv_seq))
            }
            Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => Ok((0, 0)),
            Err(e) => Err(StreamsError::unavailable("reading the tail", e)),
        }
    }

    /// Folds the subject's events after `state.version` up to `target` (the
    /// subject's last sequence when not known). Reading to a fixed target,
    /// not "until nothing more", keeps a writer from chasing the tail of a
    /// conversation another writer keeps appending to.
    pub(super) async fn refresh(
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
            let read = (batch.events.len() + batch.undecodable.len()) as u64;
            self.counters.events_read.fetch_add(read, Relaxed);
            let named = batch
                .events
                .iter()
                .map(|e| (e.stream_seq, e.signature.as_deref()))
                .collect::<Vec<_>>();
            // A copy (a few keys): the writer's other conversations do not
            // wait on this batch's checks.
            let keys = self.keys.lock().await.prepare(named).await?.clone();
            for stored in batch.events {
                self.fold_into(cached, &keys, stored);
            }
            for (stream_seq, why) in batch.undecodable {
                self.step_over(subject, stream_seq, &why);
            }
            cached.state.version = cached.state.version.max(last);
        }
        Ok(())
    }

    /// Folds one stored event into the cache, or steps over it when it is
    /// not part of the conversation (`validity.rs`): it moves the CAS
    /// version, never the chain.
    pub(super) fn fold_into(&self, cached: &mut Cached, keys: &WriterKeys, stored: StoredEvent) {
        match crate::validity::fold(&mut cached.state, keys, &stored) {
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

    pub(super) fn step_over(&self, subject: &str, stream_seq: u64, why: &dyn std::fmt::Display) {
        self.counters.stepped_over.fetch_add(1, Relaxed);
        tracing::error!(subject, stream_seq, %why, "not part of the conversation: stepped over");
    }
}
