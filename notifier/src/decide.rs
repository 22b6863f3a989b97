//! The decider: reads the queue the `notify` fold keeps, gathers it into
//! debounce windows (`window.rs`), and decides a window once its debounce
//! has passed AND its projector has folded everything appended until
//! then (the watermark below): its later messages and the receipts that
//! cancel it are in the rows before it is decided, after a restart or a
//! backlog as in steady state. Who it wakes comes from the rows `members`
//! and `unread` keep in the same store and the presence buckets; the
//! notifications go into the outbox and the window's queue rows come out
//! under the projection's batch lock, then the sender is told.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use im_projectors::keys::prefix_end;
use im_projectors::projections::{members, people, unread};
use im_projectors::query::QueryContext;
use im_projectors::runner::ProjectionState;
use im_projectors::store::{decode_value, Keyspace, StoreError, Write};
use im_projectors::tx::Tx;
use im_schema::v1;
use im_streams::people::push::is_quiet;
use tokio::sync::{mpsc, oneshot, watch};

use crate::outbox;
use crate::presence::Presence;
use crate::queue::{index_key, queued_key, NAME, QUEUED};
use crate::stats::{now_ms, Stats};
use crate::window::{
    notification_for, skip_before_presence, Member, Place, Queued, Window, Windows,
};
use crate::NotifierConfig;

/// How often due windows are looked for: adds at most this to a debounce.
pub const DECIDE_EVERY: Duration = Duration::from_millis(200);
/// Queued messages held in windows at once (~300 bytes each): past it the
/// rest wait in the store until windows are decided.
pub const LOADED_MAX: usize = 100_000;
/// Windows decided per round, so a control command or a stop waits for
/// at most this many.
pub const WINDOWS_PER_ROUND_MAX: usize = 1_000;
/// Members decided and committed at once: a window of a 100,000-member
/// group is written in parts of this many (a crash between parts decides
/// the window again: the same ids, which the receiver drops).
pub const MEMBERS_PER_COMMIT: usize = 1_000;
/// Presence reads in flight for one part (two bucket reads per member not
/// skipped before).
pub const PRESENCE_READS_IN_FLIGHT: usize = 16;
/// Rows the outbox may hold in the store before windows wait: a push
/// gateway down for long fills it; messages then wait in the queue and
/// (past `late_max`) wake no one.
pub const OUTBOX_STORED_MAX: u64 = 1_000_000;
/// A message's recorded time comes from its writer's clock before the
/// append: one timed before a window's end may be appended a little after.
pub const APPEND_GRACE_MS: i64 = 500;
/// Stream ends remembered until folded (one per round): at most a minute
/// of rounds; past it the oldest is dropped (the watermark waits longer).
pub const OBSERVATIONS_MAX: usize = 300;

/// A control command and where its answer goes.
pub type Control = (v1::NotifyControl, oneshot::Sender<v1::NotifyControlResult>);

pub struct Decider {
    pub cfg: Arc<NotifierConfig>,
    pub presence: Presence,
    pub stats: Arc<Stats>,
    /// The last outbox seq committed (the sender loads up to it).
    pub committed: watch::Sender<u64>,
    pub js: async_nats::jetstream::Context,
    pub next_seq: u64,
    pub windows: Windows,
    /// (when, IM_CONV's and IM_RCPT's last seqs then), oldest first.
    pub observed: VecDeque<(i64, u64, u64)>,
    /// Everything appended before this time is folded.
    pub folded_until_ms: i64,
    /// The store the state above is of (a restarted projector opens
    /// another: everything is read from it again).
    pub store: Option<Arc<QueryContext>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the {0} projection is not running")]
    Missing(&'static str),
    #[error("reading the streams' ends: {0}")]
    Streams(#[source] im_streams::error::BoxError),
}

fn state_of(ctx: &QueryContext, name: &'static str) -> Result<Arc<ProjectionState>, DecideError> {
    ctx.projection(name)
        .cloned()
        .ok_or(DecideError::Missing(name))
}

/// Runs `f` on a blocking thread (sled reads and commits, counting): the
/// async workers may be a gateway's too (`imctl up`).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

impl Decider {
    pub async fn run(
        mut self,
        contexts: watch::Receiver<Option<Arc<QueryContext>>>,
        mut control: mpsc::Receiver<Control>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(DECIDE_EVERY) => {}
                Some((cmd, answer)) = control.recv() => {
                    let ctx = contexts.borrow().clone();
                    let result = match ctx {
                        Some(ctx) => self.control(&ctx, cmd).await,
                        None => Err(DecideError::Missing(NAME)),
                    };
                    let _ = answer.send(result.unwrap_or_else(|e| v1::NotifyControlResult {
                        error: e.to_string(),
                        ..Default::default()
                    }));
                    continue;
                }
                _ = stop.changed() => return,
            }
            let Some(ctx) = contexts.borrow().clone() else {
                continue;
            };
            if !self.store.as_ref().is_some_and(|s| Arc::ptr_eq(s, &ctx)) {
                if let Err(e) = self.reopened(&ctx).await {
                    tracing::warn!(error = %e, "counting the outbox of a reopened store");
                    continue;
                }
            }
            match self.round(&ctx).await {
                Ok(()) => {}
                Err(e @ DecideError::Streams(_)) => {
                    tracing::warn!(error = %e, "deciding notifications: trying again");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "deciding notifications: windows read again");
                    // What was taken out of memory and not committed is
                    // read from the store again.
                    self.windows = Windows::default();
                }
            }
        }
    }

    /// A store this decider has not read (the first, or a restarted
    /// projector's): its windows, watermark and counts from scratch.
    async fn reopened(&mut self, ctx: &Arc<QueryContext>) -> Result<(), DecideError> {
        let ks = state_of(ctx, NAME)?.ks();
        let (stored, dead, next) = blocking(move || {
            Ok((
                outbox::count(ks.as_ref(), outbox::OUTBOX)?,
                outbox::count(ks.as_ref(), outbox::DEAD)?,
                outbox::next_seq(ks.as_ref())?,
            ))
        })
        .await?;
        self.stats.outbox.store(stored, Ordering::Relaxed);
        self.stats.dead_stored.store(dead, Ordering::Relaxed);
        self.next_seq = next;
        self.committed.send_replace(next - 1);
        self.windows = Windows::default();
        self.observed.clear();
        self.folded_until_ms = 0;
        self.store = Some(ctx.clone());
        Ok(())
    }

    async fn round(&mut self, ctx: &QueryContext) -> Result<(), DecideError> {
        let state = state_of(ctx, NAME)?;
        // The watermark first: what it says is folded is then all in the
        // queue read below.
        self.watermark(ctx).await?;
        let unloaded = self.load(state.ks()).await?;
        let debounce = self.cfg.debounce.as_millis() as i64;
        let now = now_ms();
        // A window due at or after the first message left in the store
        // (past `LOADED_MAX`) may take it: it waits.
        let before_unloaded = unloaded.map_or(i64::MAX, |at| at - 1);
        let decidable = now
            .min(self.folded_until_ms - APPEND_GRACE_MS)
            .min(before_unloaded);
        let room = self.stats.outbox.load(Ordering::Relaxed) < OUTBOX_STORED_MAX;
        let max = if room { WINDOWS_PER_ROUND_MAX } else { 0 };
        for w in self.windows.take_due(decidable, debounce, max) {
            self.decide(ctx, &state, w, now).await?;
        }
        self.stats
            .pending_messages
            .store(self.windows.messages as u64, Ordering::Relaxed);
        let due_at = self.windows.oldest_opened_ms().map_or(0, |t| t + debounce);
        let late = if due_at != 0 && due_at <= now {
            due_at
        } else {
            0
        };
        self.stats.oldest_due_ms.store(late, Ordering::Relaxed);
        Ok(())
    }

    /// Moves `folded_until_ms` on: the time of the latest observation of
    /// the streams' ends that every projection here has folded past.
    async fn watermark(&mut self, ctx: &QueryContext) -> Result<(), DecideError> {
        let last = |name: &'static str| {
            let js = self.js.clone();
            async move {
                let mut s = js
                    .get_stream(name)
                    .await
                    .map_err(|e| DecideError::Streams(e.into()))?;
                let info = s.info().await.map_err(|e| DecideError::Streams(e.into()))?;
                Ok::<u64, DecideError>(info.state.last_sequence)
            }
        };
        let at = now_ms();
        let (conv, rcpt) = (
            last(im_streams::definitions::CONV_STREAM).await?,
            last(im_streams::definitions::RCPT_STREAM).await?,
        );
        // Full: the oldest are kept (they are what moves the watermark
        // next); newer ones are noted again once there is room.
        if self.observed.len() < OBSERVATIONS_MAX {
            self.observed.push_back((at, conv, rcpt));
        }
        let applied = |name| -> Result<(u64, u64), DecideError> {
            let a = *state_of(ctx, name)?.applied.borrow();
            Ok((a.conv, a.rcpt))
        };
        let (notify, members, unread) = (
            applied(NAME)?,
            applied(members::NAME)?,
            applied(unread::NAME)?,
        );
        let conv_done = notify.0.min(members.0).min(unread.0);
        while let Some(&(at, c, r)) = self.observed.front() {
            if c > conv_done || r > unread.1 {
                break;
            }
            self.folded_until_ms = self.folded_until_ms.max(at);
            self.observed.pop_front();
        }
        Ok(())
    }

    /// Adds the queue's rows after those already held, up to
    /// `LOADED_MAX`; the time of the first one left in the store, if any.
    async fn load(&mut self, ks: Arc<dyn Keyspace>) -> Result<Option<i64>, StoreError> {
        let room = LOADED_MAX.saturating_sub(self.windows.messages);
        let from = queued_key(self.windows.loaded_to + 1);
        let rows = blocking(move || {
            let rows = ks.range(&from, &prefix_end(&[QUEUED]), false, room + 1)?;
            rows.into_iter()
                .map(|(k, v)| {
                    let stream_seq = im_projectors::keys::seq_suffix(&k);
                    Ok(Queued {
                        stream_seq,
                        msg: decode_value(&k, &v)?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .await?;
        let debounce = self.cfg.debounce.as_millis() as i64;
        let mut rows = rows.into_iter();
        for q in rows.by_ref().take(room) {
            self.windows.add(q, debounce);
        }
        Ok(rows.next().map(|q| q.msg.at_ms))
    }

    /// Writes under the `notify` batch lock (a fold never writes a taken
    /// queue row back), with `rows` put in the outbox; tells the sender.
    async fn commit(
        &mut self,
        state: &ProjectionState,
        rows: Vec<v1::NotifyOutboxRow>,
        mut writes: Vec<Write>,
    ) -> Result<(), DecideError> {
        let n = rows.len() as u64;
        let (outbox_writes, next) = outbox::enqueue(rows, self.next_seq);
        writes.extend(outbox_writes);
        let ks = state.ks();
        {
            let _batch = state.batch_lock.lock().await;
            blocking(move || ks.commit(writes)).await?;
        }
        self.next_seq = next;
        Stats::add(&self.stats.outbox, n);
        self.committed.send_replace(next - 1);
        Ok(())
    }

    /// Decides one window: its notifications in, its queue rows out.
    async fn decide(
        &mut self,
        ctx: &QueryContext,
        state: &ProjectionState,
        w: Window,
        now: i64,
    ) -> Result<(), DecideError> {
        let taken: Vec<Write> = w
            .messages
            .iter()
            .flat_map(|q| {
                [
                    (queued_key(q.stream_seq), None),
                    (index_key(&w.conv, q.msg.conv_seq), None),
                ]
            })
            .collect();
        let ks = state.ks();
        let w = blocking(move || refreshed(ks.as_ref(), w)).await?;
        let late = w
            .messages
            .last()
            .is_some_and(|q| now - q.msg.at_ms > self.cfg.late_max.as_millis() as i64);
        if late {
            Stats::add(&self.stats.late, 1);
        }
        if !w.messages.is_empty() && !late {
            let (members_ks, conv) = (state_of(ctx, members::NAME)?.ks(), w.conv.clone());
            let users = blocking(move || members::user_ids_of(members_ks.as_ref(), &conv)).await?;
            for part in users.chunks(MEMBERS_PER_COMMIT) {
                let rows = self.notifications(ctx, &w, part.to_vec(), now).await?;
                self.commit(state, rows, Vec::new()).await?;
            }
        }
        self.commit(state, Vec::new(), taken).await
    }

    /// The notifications of a window for some of its members.
    async fn notifications(
        &self,
        ctx: &QueryContext,
        w: &Window,
        users: Vec<String>,
        now: i64,
    ) -> Result<Vec<v1::NotifyOutboxRow>, DecideError> {
        let (members_ks, unread_ks) = (
            state_of(ctx, members::NAME)?.ks(),
            state_of(ctx, unread::NAME)?.ks(),
        );
        let (window, quiet_at) = (w.clone(), now);
        let (ks, uks) = (members_ks.clone(), unread_ks.clone());
        let (candidates, skipped) =
            blocking(move || facts(&*ks, &*uks, &window, users, quiet_at)).await?;
        for s in skipped {
            self.stats.skip(s);
        }
        let online = self.online(&candidates, w.opened_ms(), now).await;
        let window = w.clone();
        let preview = self.cfg.preview;
        let (rows, skipped) = blocking(move || {
            let tx = Tx::new(members_ks.as_ref());
            let title = title_of(members_ks.as_ref(), &window.conv)?;
            let mut names = HashMap::new();
            for q in &window.messages {
                if !names.contains_key(&q.msg.sender) {
                    let profile = people::user_row(&tx, &q.msg.sender)?.and_then(|r| r.profile);
                    let name = crate::opening::name_of(&q.msg.sender, profile);
                    names.insert(q.msg.sender.clone(), name);
                }
            }
            let name_of = |u: &str| names.get(u).cloned().unwrap_or_default();
            let place = Place {
                title: &title,
                name_of: &name_of,
            };
            let (mut rows, mut skipped) = (Vec::new(), Vec::new());
            for (mut m, online) in candidates.into_iter().zip(online) {
                m.online = online;
                if !online {
                    m.badge = unread::for_user(unread_ks.as_ref(), &m.user, None)?.total;
                }
                match notification_for(&window, &m, &place, preview) {
                    Ok(n) => rows.push(v1::NotifyOutboxRow {
                        notification: Some(n),
                        decided_ms: now,
                        ..Default::default()
                    }),
                    Err(skip) => skipped.push(skip),
                }
            }
            Ok((rows, skipped))
        })
        .await?;
        for s in skipped {
            self.stats.skip(s);
        }
        Ok(rows)
    }

    /// Which of `members` had a device connected since `since_ms`.
    async fn online(&self, members: &[Member], since_ms: i64, now: i64) -> Vec<bool> {
        let presence = &self.presence;
        let asks: Vec<_> = members
            .iter()
            .map(|m| {
                let user = m.user.clone();
                async move { presence.connected_since(&user, since_ms, now).await }
            })
            .collect();
        futures::StreamExt::collect(futures::StreamExt::buffered(
            futures::stream::iter(asks),
            PRESENCE_READS_IN_FLIGHT,
        ))
        .await
    }

    /// The counts, the dead letters listed, or moved back to the outbox.
    async fn control(
        &mut self,
        ctx: &QueryContext,
        cmd: v1::NotifyControl,
    ) -> Result<v1::NotifyControlResult, DecideError> {
        let mut result = v1::NotifyControlResult {
            total: self.stats.dead_stored.load(Ordering::Relaxed),
            ..Default::default()
        };
        let limit = (cmd.limit as usize).min(outbox::DEAD_LETTERS_LISTED_MAX);
        let scan = if cmd.replay {
            outbox::DEAD_LETTERS_SCAN_MAX
        } else {
            limit
        };
        if scan > 0 {
            let state = state_of(ctx, NAME)?;
            let ks = state.ks();
            let dead = blocking(move || outbox::dead_letters(ks.as_ref(), scan)).await?;
            result.dead_letters = dead
                .iter()
                .take(limit)
                .map(|d| outbox::redacted(d.row.clone()))
                .collect();
            if cmd.replay && !dead.is_empty() {
                let (rows, taken) = outbox::revive(&dead);
                self.commit(&state, rows, taken).await?;
                Stats::sub(&self.stats.dead_stored, dead.len() as u64);
                result.replayed = dead.len() as u64;
            }
        }
        result.stats = Some(self.stats.snapshot());
        Ok(result)
    }
}

/// What is known of each of `users` without presence; those skipped
/// already, with why.
fn facts(
    members_ks: &dyn Keyspace,
    unread_ks: &dyn Keyspace,
    w: &Window,
    users: Vec<String>,
    now: i64,
) -> Result<(Vec<Member>, Vec<crate::window::Skip>), StoreError> {
    let tx = Tx::new(members_ks);
    let (mut candidates, mut skipped) = (Vec::new(), Vec::new());
    for user in users {
        let row = people::user_row(&tx, &user)?.unwrap_or_default();
        // Nothing before their join is theirs to be told of.
        let read_up_to = unread::row_of(unread_ks, &user, &w.conv)?
            .map_or(0, |r| r.joined_seq.max(r.last_read_seq));
        let m = Member {
            quiet: is_quiet(&row, &w.conv, now),
            devices: row.push,
            read_up_to,
            user,
            ..Default::default()
        };
        match skip_before_presence(w, &m) {
            Some(skip) => skipped.push(skip),
            None => candidates.push(m),
        }
    }
    Ok((candidates, skipped))
}

/// The window as the queue holds it now: a recalled message gone, an
/// edited one with its new text.
fn refreshed(ks: &dyn Keyspace, mut w: Window) -> Result<Window, StoreError> {
    let mut kept = Vec::with_capacity(w.messages.len());
    for mut q in w.messages {
        let k = queued_key(q.stream_seq);
        if let Some(v) = ks.get(&k)? {
            q.msg = decode_value(&k, &v)?;
            kept.push(q);
        }
    }
    w.messages = kept;
    Ok(w)
}

/// A group's title (a direct conversation has none).
fn title_of(ks: &dyn Keyspace, conv: &str) -> Result<String, StoreError> {
    Ok(members::members_of(ks, conv, "", 1)?
        .and_then(|m| m.conversation)
        .map(|c| c.title)
        .unwrap_or_default())
}
