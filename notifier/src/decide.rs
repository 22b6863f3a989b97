//! The decider: reads the queue the `notify` fold keeps, gathers it into
//! debounce windows (`window.rs`), and once a window is due decides who
//! it wakes from the rows `members` and `unread` keep in the same store
//! and the presence buckets; it writes their notifications into the
//! outbox and takes the window's queue rows out in ONE commit, under the
//! projection's batch lock, then hands them to the sender.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use im_projectors::keys::prefix_end;
use im_projectors::projections::{members, people, unread};
use im_projectors::query::QueryContext;
use im_projectors::store::{decode_value, Keyspace, StoreError, Write};
use im_projectors::tx::Tx;
use im_schema::v1;
use im_streams::people::push::is_quiet;
use tokio::sync::{mpsc, oneshot, watch};

use crate::outbox::{self, Waiting};
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
/// Presence reads in flight for one window (two bucket reads per member
/// not skipped before).
pub const PRESENCE_READS_IN_FLIGHT: usize = 16;

/// A control command and where its answer goes.
pub type Control = (v1::NotifyControl, oneshot::Sender<v1::NotifyControlResult>);

pub struct Decider {
    pub cfg: Arc<NotifierConfig>,
    pub presence: Presence,
    pub stats: Arc<Stats>,
    pub to_sender: mpsc::Sender<Vec<Waiting>>,
    pub next_seq: u64,
    pub windows: Windows,
}

#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the {0} projection is not running")]
    Missing(&'static str),
    #[error("the sender stopped")]
    SenderGone,
}

fn ks_of(ctx: &QueryContext, name: &'static str) -> Result<Arc<dyn Keyspace>, DecideError> {
    Ok(ctx.projection(name).ok_or(DecideError::Missing(name))?.ks())
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
            match self.round(&ctx).await {
                Ok(()) => {}
                Err(DecideError::SenderGone) => return,
                Err(e) => tracing::warn!(error = %e, "deciding notifications"),
            }
        }
    }

    async fn round(&mut self, ctx: &QueryContext) -> Result<(), DecideError> {
        let ks = ks_of(ctx, NAME)?;
        self.load(ks.as_ref())?;
        let debounce = self.cfg.debounce.as_millis() as i64;
        let now = now_ms();
        let due = self.windows.take_due(now, debounce, WINDOWS_PER_ROUND_MAX);
        for w in due {
            self.decide(ctx, w, now).await?;
        }
        let s = &self.stats;
        s.pending_messages
            .store(self.windows.messages as u64, Ordering::Relaxed);
        let due_at = self.windows.oldest_opened_ms().map_or(0, |t| t + debounce);
        s.oldest_due_ms
            .store(if due_at <= now { due_at } else { 0 }, Ordering::Relaxed);
        Ok(())
    }

    /// Adds the queue's rows after those already held, up to `LOADED_MAX`.
    fn load(&mut self, ks: &dyn Keyspace) -> Result<(), StoreError> {
        let room = LOADED_MAX.saturating_sub(self.windows.messages);
        if room == 0 {
            return Ok(());
        }
        let from = queued_key(self.windows.loaded_to + 1);
        let rows = ks.range(&from, &prefix_end(&[QUEUED]), false, room)?;
        let debounce = self.cfg.debounce.as_millis() as i64;
        for (k, v) in rows {
            let stream_seq = im_projectors::keys::seq_suffix(&k);
            let msg: v1::NotifyQueued = decode_value(&k, &v)?;
            self.windows.add(Queued { stream_seq, msg }, debounce);
        }
        Ok(())
    }

    /// Decides one window: its notifications in, its queue rows out.
    async fn decide(&mut self, ctx: &QueryContext, w: Window, now: i64) -> Result<(), DecideError> {
        let state = ctx.projection(NAME).ok_or(DecideError::Missing(NAME))?;
        let ks = state.ks();
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
        let w = refreshed(ks.as_ref(), w)?;
        let late = w
            .messages
            .last()
            .is_some_and(|q| now - q.msg.at_ms > self.cfg.late_max.as_millis() as i64);
        let rows = match (w.messages.is_empty(), late) {
            (true, _) => Vec::new(),
            (false, true) => {
                Stats::add(&self.stats.late, 1);
                Vec::new()
            }
            (false, false) => self.notifications(ctx, &w, now).await?,
        };
        let (mut writes, waiting, next) = outbox::enqueue(rows, self.next_seq);
        writes.extend(taken);
        {
            let _batch = state.batch_lock.lock().await;
            ks.commit(writes)?;
        }
        self.next_seq = next;
        if !waiting.is_empty() {
            self.to_sender
                .send(waiting)
                .await
                .map_err(|_| DecideError::SenderGone)?;
        }
        Ok(())
    }

    /// Each member's notification for a window, of those it wakes.
    async fn notifications(
        &self,
        ctx: &QueryContext,
        w: &Window,
        now: i64,
    ) -> Result<Vec<v1::NotifyOutboxRow>, DecideError> {
        let members_ks = ks_of(ctx, members::NAME)?;
        let unread_ks = ks_of(ctx, "unread")?;
        let tx = Tx::new(members_ks.as_ref());
        let mut candidates = Vec::new();
        for user in members::user_ids_of(members_ks.as_ref(), &w.conv)? {
            let row = people::user_row(&tx, &user)?.unwrap_or_default();
            let read = unread::for_user(unread_ks.as_ref(), &user, Some(&w.conv))?;
            let m = Member {
                quiet: is_quiet(&row, &w.conv, now),
                devices: row.push,
                read_up_to: read.conversations.first().map_or(0, |c| c.last_read_seq),
                user,
                ..Default::default()
            };
            match skip_before_presence(w, &m) {
                Some(skip) => self.stats.skip(skip),
                None => candidates.push(m),
            }
        }
        let online = self.online(&candidates, w.opened_ms(), now).await;
        let title = title_of(members_ks.as_ref(), &w.conv)?;
        let mut names: HashMap<String, String> = HashMap::new();
        for q in &w.messages {
            if !names.contains_key(&q.msg.sender) {
                let name = people::user_row(&tx, &q.msg.sender)?
                    .and_then(|r| r.profile)
                    .map(|p| p.display_name)
                    .unwrap_or_default();
                names.insert(q.msg.sender.clone(), name);
            }
        }
        let name_of = |u: &str| names.get(u).cloned().unwrap_or_default();
        let place = Place {
            title: &title,
            name_of: &name_of,
        };
        let mut rows = Vec::new();
        for (mut m, online) in candidates.into_iter().zip(online) {
            m.online = online;
            if !online {
                m.badge = unread::for_user(unread_ks.as_ref(), &m.user, None)?.total;
            }
            match notification_for(w, &m, &place, self.cfg.preview) {
                Ok(n) => rows.push(v1::NotifyOutboxRow {
                    notification: Some(n),
                    decided_ms: now,
                    ..Default::default()
                }),
                Err(skip) => self.stats.skip(skip),
            }
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

    /// Lists the dead letters, or moves them back to their queues.
    async fn control(
        &mut self,
        ctx: &QueryContext,
        cmd: v1::NotifyControl,
    ) -> Result<v1::NotifyControlResult, DecideError> {
        let state = ctx.projection(NAME).ok_or(DecideError::Missing(NAME))?;
        let ks = state.ks();
        let limit = (cmd.limit as usize).min(outbox::DEAD_LETTERS_LISTED_MAX);
        let listed = if cmd.replay {
            outbox::DEAD_LETTERS_SCAN_MAX
        } else {
            limit
        };
        let (dead, total) = outbox::dead_letters(ks.as_ref(), listed)?;
        let mut result = v1::NotifyControlResult {
            dead_letters: dead.iter().take(limit).map(|d| d.row.clone()).collect(),
            total,
            stats: Some(self.stats.snapshot()),
            ..Default::default()
        };
        if cmd.replay && !dead.is_empty() {
            let (writes, waiting, next) = outbox::revive(dead, self.next_seq);
            {
                let _batch = state.batch_lock.lock().await;
                ks.commit(writes)?;
            }
            self.next_seq = next;
            result.replayed = waiting.len() as u64;
            self.to_sender
                .send(waiting)
                .await
                .map_err(|_| DecideError::SenderGone)?;
        }
        Ok(result)
    }
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
