//! The sender: hands each user's notifications to the push gateway in
//! order, one request per user at a time, at most `SENDS_IN_FLIGHT_MAX`
//! at once; a failed one is tried again after an exponential backoff with
//! jitter (the user's later ones wait behind it, so order holds), up to
//! `attempts_max`, then buried as a dead letter. A row leaves the outbox
//! only once the gateway took it: at least once, under one
//! `Idempotency-Key`. A token the gateway refuses (410, or named in
//! `rejected`) ends its registration by an event on the user's log.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use im_projectors::projections::unread;
use im_projectors::query::QueryContext;
use im_projectors::store::{Keyspace, StoreError};
use im_schema::v1;
use im_streams::append::{AppendOutcome, Appender};
use im_streams::conversation::{Action, Command};
use rand::Rng;
use sha2::Digest;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::outbox::{self, Waiting};
use crate::stats::{now_ms, Stats};
use crate::webhook::{self, Answer};
use crate::NotifierConfig;

/// Requests to the push gateway at once (one per user at a time): enough
/// to keep a gateway tens of milliseconds away busy, few enough that a
/// slow one holds little.
pub const SENDS_IN_FLIGHT_MAX: usize = 32;
/// Notifications held in memory waiting, and their bytes (a row carries
/// its user's devices, up to 16 tokens of 4 KB): past either the rest
/// wait in the store's outbox and are read as these go.
pub const HELD_MAX: usize = 100_000;
pub const HELD_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Bytes of a gateway's answer read: `{"rejected": [...]}` of at most
/// `PUSH_DEVICES_MAX` tokens of 4 KB.
pub const ANSWER_BYTES_MAX: usize = 80 * 1024;
/// How long an unregistration (an append) may take before it is left for
/// the next refusal of the same token.
pub const UNREGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the sender looks at the store without being told (a store
/// restarted under it).
pub const LOOK_EVERY: Duration = Duration::from_secs(1);

/// How often the sender looks at every queue for its next wake-up and its
/// figures (a backlog holds up to `HELD_MAX` users).
pub const RECOMPUTE_EVERY: Duration = Duration::from_millis(50);

struct UserQueue {
    items: VecDeque<Waiting>,
    attempts: u32,
    next_at: Instant,
    busy: bool,
}

pub struct Sender {
    pub cfg: Arc<NotifierConfig>,
    pub http: reqwest::Client,
    pub appender: Option<Arc<Appender>>,
    pub stats: Arc<Stats>,
    queues: BTreeMap<String, UserQueue>,
    held: usize,
    held_bytes: usize,
    /// The last outbox seq read from the store.
    loaded_to: u64,
    /// The user last started: the next start looks after them first.
    last_started: String,
    /// The store the queues were read from (a restarted projector opens
    /// another: they are read from it again).
    store: Option<Arc<QueryContext>>,
    /// The next wake-up as last computed, and when it was.
    wake: (Option<Instant>, Instant),
}

/// Whose attempt each task is: a task that panics still frees its user.
type Whose = HashMap<tokio::task::Id, String>;

impl Sender {
    pub fn new(
        cfg: Arc<NotifierConfig>,
        http: reqwest::Client,
        appender: Option<Arc<Appender>>,
        stats: Arc<Stats>,
    ) -> Self {
        Sender {
            cfg,
            http,
            appender,
            stats,
            queues: BTreeMap::new(),
            held: 0,
            held_bytes: 0,
            loaded_to: 0,
            last_started: String::new(),
            store: None,
            wake: (None, Instant::now()),
        }
    }

    /// Reads the outbox on from where it stopped, up to what the decider
    /// committed, while there is room.
    fn load(&mut self, ks: &dyn Keyspace, committed: u64) -> Result<(), StoreError> {
        while self.loaded_to < committed && self.held < HELD_MAX && self.held_bytes < HELD_BYTES_MAX
        {
            let want = (HELD_MAX - self.held).min(1_000);
            let rows = outbox::waiting(ks, self.loaded_to + 1, want)?;
            if rows.is_empty() {
                self.loaded_to = committed;
                break;
            }
            for w in rows {
                if w.seq > committed {
                    return Ok(());
                }
                self.loaded_to = w.seq;
                self.held += 1;
                self.held_bytes += w.bytes();
                self.queues
                    .entry(w.user().to_string())
                    .or_insert_with(|| UserQueue {
                        items: VecDeque::new(),
                        attempts: 0,
                        next_at: Instant::now(),
                        busy: false,
                    })
                    .items
                    .push_back(w);
            }
        }
        Ok(())
    }

    pub async fn run(
        mut self,
        mut committed: watch::Receiver<u64>,
        contexts: watch::Receiver<Option<Arc<QueryContext>>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut inflight: JoinSet<Answer> = JoinSet::new();
        let mut whose = Whose::new();
        loop {
            let ctx = contexts.borrow().clone();
            if let Some(ctx) = &ctx {
                let upto = *committed.borrow_and_update();
                self.step(ctx, upto, &mut inflight, &mut whose);
            }
            let full = inflight.len() >= SENDS_IN_FLIGHT_MAX;
            // A ready user is started above unless every slot is taken or
            // the store is restarting: then an attempt's end, news or the
            // next look wakes the loop.
            let wake = self.next_wake().filter(|_| !full && ctx.is_some());
            tokio::select! {
                _ = committed.changed() => {}
                Some(done) = inflight.join_next_with_id(), if !inflight.is_empty() => {
                    let (id, answer) = match done {
                        Ok((id, answer)) => (id, Some(answer)),
                        Err(e) => (e.id(), None),
                    };
                    if let Some(user) = whose.remove(&id) {
                        let ctx = contexts.borrow().clone();
                        self.finish(ctx.as_deref(), &user, answer);
                    }
                }
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
                _ = tokio::time::sleep(LOOK_EVERY) => {}
                _ = stop.changed() => return,
            }
        }
    }

    fn step(
        &mut self,
        ctx: &Arc<QueryContext>,
        committed: u64,
        inflight: &mut JoinSet<Answer>,
        whose: &mut Whose,
    ) {
        if !self.store.as_ref().is_some_and(|s| Arc::ptr_eq(s, ctx)) {
            // Another store: what was held is read from it again (attempts
            // in flight end on users no longer held).
            self.queues.clear();
            (self.held, self.held_bytes, self.loaded_to) = (0, 0, 0);
            self.store = Some(ctx.clone());
        }
        let Some(ks) = ctx.projection(crate::queue::NAME).map(|s| s.ks()) else {
            return;
        };
        if let Err(e) = self.load(ks.as_ref(), committed) {
            tracing::warn!(error = %e, "reading the outbox");
        }
        let unread = ctx.projection(unread::NAME).map(|s| s.ks());
        self.start_ready(ks.as_ref(), unread.as_deref(), inflight, whose);
    }

    /// When the first user not being tried may be tried, if any, looked up
    /// (with the figures) at most every `RECOMPUTE_EVERY`.
    fn next_wake(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let again = self.wake.1 + RECOMPUTE_EVERY;
        if now < again {
            return self.wake.0.map(|t| t.max(again));
        }
        let next = self
            .queues
            .values()
            .filter(|q| !q.busy && !q.items.is_empty())
            .map(|q| q.next_at)
            .min();
        self.wake = (next, now);
        self.publish_stats();
        next
    }

    /// Starts ready users' first notifications, from the user after the
    /// last one started (so none waits behind the alphabet), up to
    /// `SENDS_IN_FLIGHT_MAX`.
    fn start_ready(
        &mut self,
        ks: &dyn Keyspace,
        unread: Option<&dyn Keyspace>,
        inflight: &mut JoinSet<Answer>,
        whose: &mut Whose,
    ) {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let free = SENDS_IN_FLIGHT_MAX.saturating_sub(inflight.len());
        if free == 0 {
            return;
        }
        let now = Instant::now();
        let after = self.last_started.clone();
        // A few more than the free slots: a head may be dropped instead.
        let order: Vec<String> = self
            .queues
            .range::<String, _>((Excluded(&after), Unbounded))
            .chain(
                self.queues
                    .range::<String, _>((Unbounded, Included(&after))),
            )
            .filter(|(_, q)| !q.busy && q.next_at <= now)
            .map(|(u, _)| u.clone())
            .take(free * 4)
            .collect();
        for user in order {
            if inflight.len() >= SENDS_IN_FLIGHT_MAX {
                return;
            }
            let Some(head) = self.first_still_wanted(ks, unread, &user) else {
                continue;
            };
            let q = self.queues.get_mut(&user).expect("listed");
            q.busy = true;
            self.last_started = user.clone();
            let (cfg, http, appender, stats) = (
                self.cfg.clone(),
                self.http.clone(),
                self.appender.clone(),
                self.stats.clone(),
            );
            let keys = self.store.as_ref().and_then(|s| s.content.clone());
            let task = inflight.spawn(async move {
                let answer = attempt(&cfg, (&http, keys.as_deref()), &head).await;
                if let Some(appender) = appender {
                    unregister_refused(&appender, &head, &answer, &stats).await;
                }
                answer
            });
            whose.insert(task.id(), user);
        }
    }

    /// The user's first notification that still wakes them: one read in
    /// the meantime (a retry or a backlog can hold it minutes), or older
    /// than `late_max`, is dropped here.
    fn first_still_wanted(
        &mut self,
        ks: &dyn Keyspace,
        unread: Option<&dyn Keyspace>,
        user: &str,
    ) -> Option<Waiting> {
        let late_max = self.cfg.late_max.as_millis() as i64;
        loop {
            let head = self.queues.get(user)?.items.front()?.clone();
            let n = head.notification();
            let read = unread
                .and_then(|u| unread::row_of(u, user, &n.conversation_id).ok().flatten())
                .is_some_and(|r| r.last_read_seq >= n.last_conv_seq);
            let late = now_ms() - n.at_ms > late_max;
            if !read && !late {
                return Some(head);
            }
            let counter = if read {
                &self.stats.read_meanwhile
            } else {
                &self.stats.late
            };
            Stats::add(counter, 1);
            if let Err(e) = outbox::remove(ks, &head) {
                tracing::warn!(error = %e, "the outbox could not be written");
                let backoff_base = self.cfg.backoff_base;
                if let Some(q) = self.queues.get_mut(user) {
                    q.next_at = Instant::now() + backoff_base;
                }
                return None;
            }
            self.done(user);
        }
    }

    /// The user's first notification is out of the outbox.
    fn done(&mut self, user: &str) {
        let Some(q) = self.queues.get_mut(user) else {
            return;
        };
        if let Some(w) = q.items.pop_front() {
            self.held -= 1;
            self.held_bytes = self.held_bytes.saturating_sub(w.bytes());
            Stats::sub(&self.stats.outbox, 1);
        }
        q.attempts = 0;
        q.next_at = Instant::now();
        if q.items.is_empty() && !q.busy {
            self.queues.remove(user);
        }
    }

    /// Moves a user's queue on after an attempt (`None`: its task
    /// panicked; no store: it is restarting; either way, tried again).
    fn finish(&mut self, ctx: Option<&QueryContext>, user: &str, answer: Option<Answer>) {
        let (backoff_base, attempts_max) = (self.cfg.backoff_base, self.cfg.attempts_max);
        let ks = ctx
            .and_then(|c| c.projection(crate::queue::NAME))
            .map(|s| s.ks());
        let Some(q) = self.queues.get_mut(user) else {
            return;
        };
        q.busy = false;
        let Some(head) = q.items.front().cloned() else {
            return;
        };
        let (Some(ks), Some(answer)) = (ks, answer) else {
            q.next_at = Instant::now() + backoff_base;
            return;
        };
        let written = match &answer {
            Answer::Taken { .. } | Answer::Gone => {
                let taken = matches!(answer, Answer::Taken { .. }) as u64;
                Stats::add(&self.stats.sent, taken);
                outbox::remove(ks.as_ref(), &head)
            }
            Answer::Retry(why) if q.attempts + 1 < attempts_max => {
                q.attempts += 1;
                q.next_at = Instant::now() + backoff(&self.cfg, q.attempts);
                Stats::add(&self.stats.retries, 1);
                tracing::debug!(user, attempts = q.attempts, reason = %why, "push gateway: trying again later");
                return;
            }
            Answer::Retry(why) | Answer::Refused(why) => {
                let mut dead = head.clone();
                dead.row.attempts = q.attempts + 1;
                dead.row.last_error = why.clone();
                tracing::warn!(user, id = %head.notification().id, reason = %why, "notification given up: a dead letter");
                let buried = outbox::bury(ks.as_ref(), &dead, now_ms());
                if buried.is_ok() {
                    Stats::add(&self.stats.dead, 1);
                    Stats::add(&self.stats.dead_stored, 1);
                    self.trim_dead(ks.as_ref());
                }
                buried
            }
        };
        match written {
            Ok(()) => self.done(user),
            Err(e) => {
                tracing::warn!(error = %e, "the outbox could not be written: trying again");
                if let Some(q) = self.queues.get_mut(user) {
                    q.next_at = Instant::now() + backoff_base;
                }
            }
        }
    }

    /// Past `DEAD_STORED_MAX` the oldest dead letters go.
    fn trim_dead(&self, ks: &dyn Keyspace) {
        let stored = self.stats.dead_stored.load(Ordering::Relaxed);
        let excess = stored.saturating_sub(outbox::DEAD_STORED_MAX) as usize;
        if excess == 0 {
            return;
        }
        match outbox::drop_oldest_dead(ks, excess) {
            Ok(n) => Stats::sub(&self.stats.dead_stored, n),
            Err(e) => tracing::warn!(error = %e, "old dead letters not dropped"),
        }
    }

    fn publish_stats(&self) {
        let oldest = self
            .queues
            .values()
            .filter_map(|q| q.items.front().map(|w| w.row.decided_ms))
            .min()
            .unwrap_or(0);
        self.stats
            .oldest_waiting_ms
            .store(oldest, Ordering::Relaxed);
    }
}

/// The wait before attempt `n + 1`: the base doubled per attempt, capped,
/// drawn between half and all of it.
pub fn backoff(cfg: &NotifierConfig, attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(20);
    let full = cfg
        .backoff_base
        .saturating_mul(1u32 << doublings)
        .min(cfg.backoff_max);
    full.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// One request: the body (its sealed text and name opened now), its
/// signature, the gateway's answer.
async fn attempt(
    cfg: &NotifierConfig,
    (http, keys): (&reqwest::Client, Option<&im_streams::content::ContentKeys>),
    w: &Waiting,
) -> Answer {
    let mut n = w.notification().clone();
    if let Err(e) = crate::opening::open_notification(keys, &mut n).await {
        return Answer::Retry(format!("content keys: {e}"));
    }
    let n = &n;
    let body = webhook::body(cfg.format, n);
    let signature = webhook::sign(&cfg.secret, now_ms() / 1000, &body);
    let sent = http
        .post(cfg.url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(webhook::IDEMPOTENCY_HEADER, &n.id)
        .header(webhook::SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await;
    let mut response = match sent {
        Ok(r) => r,
        Err(e) => return Answer::Retry(describe(&e)),
    };
    let status = response.status().as_u16();
    let mut answer = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        if answer.len() + chunk.len() > ANSWER_BYTES_MAX {
            break;
        }
        answer.extend_from_slice(&chunk);
    }
    webhook::answer(status, &answer)
}

/// What went wrong with a request, without the URL (which may carry a
/// credential in its query).
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else {
        let mut text = "request failed".to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        text
    }
}

/// Ends the registrations whose tokens the gateway refused, by events on
/// the user's log (the notifier writes as the user's agent, as a gateway
/// does; the event names the token, so a newer registration stays).
async fn unregister_refused(appender: &Appender, w: &Waiting, answer: &Answer, stats: &Stats) {
    let Some(n) = &w.row.notification else { return };
    let refused: Vec<&v1::PushRegistered> = n
        .devices
        .iter()
        .filter_map(|d| d.registration.as_ref())
        .filter(|r| match answer {
            Answer::Gone => true,
            Answer::Taken { rejected } => rejected.contains(&r.token),
            _ => false,
        })
        .collect();
    for r in refused {
        let Ok(log) = im_streams::ids::user_log_id(&n.user_id) else {
            return;
        };
        let token_id = &hex::encode(sha2::Sha256::digest(r.token.as_bytes()))[..16];
        let cmd = Command {
            actor: n.user_id.clone(),
            // The same refusal retried is one event.
            client_msg_id: format!("push-gone-{}-{token_id}", r.device_id),
            action: Action::UnregisterPush(v1::PushUnregistered {
                device_id: r.device_id.clone(),
                token: r.token.clone(),
                reason: v1::PushUnregisterReason::Gone as i32,
            }),
        };
        let done =
            tokio::time::timeout(UNREGISTER_TIMEOUT, appender.execute(&log, &cmd, &n.id)).await;
        match done {
            Ok(Ok(AppendOutcome::Stored { .. })) => Stats::add(&stats.unregistered, 1),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(user = %n.user_id, error = %e, "a refused token's registration not ended")
            }
            Err(_) => {
                tracing::warn!(user = %n.user_id, "ending a refused token's registration timed out")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_its_base_to_its_limit_with_jitter() {
        let cfg = NotifierConfig {
            kek: Default::default(),
            instance: "n".into(),
            data_dir: "d".into(),
            url: "https://push.example/".parse().unwrap(),
            format: crate::webhook::Format::Webhook,
            secret: vec![0; 16],
            ca_file: None,
            preview: crate::window::Preview::Sender,
            debounce: Duration::from_secs(3),
            late_max: Duration::from_secs(3600),
            attempts_max: 16,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            signing_key_file: None,
        };
        for (attempts, full_ms) in [
            (0, 500),
            (1, 500),
            (2, 1_000),
            (4, 4_000),
            (8, 60_000),
            (40, 60_000),
        ] {
            for _ in 0..50 {
                let d = backoff(&cfg, attempts).as_millis() as u64;
                assert!(
                    (full_ms / 2..=full_ms).contains(&d),
                    "attempt {attempts}: {d} ms"
                );
            }
        }
    }
}
