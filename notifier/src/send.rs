//! The sender: hands each user's notifications to the push gateway in
//! order, one request per user at a time, at most `SENDS_IN_FLIGHT_MAX`
//! at once; a failed one is tried again after an exponential backoff with
//! jitter (the user's later ones wait behind it, so order holds), up to
//! `attempts_max`, then buried as a dead letter. A row leaves the outbox
//! only once the gateway took it: at least once, under one
//! `Idempotency-Key`. A token the gateway refuses (410, or named in
//! `rejected`) ends its registration by an event on the user's log.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use im_projectors::query::QueryContext;
use im_schema::v1;
use im_streams::append::{AppendOutcome, Appender};
use im_streams::conversation::{Action, Command};
use rand::Rng;
use sha2::Digest;
use tokio::sync::{mpsc, watch};
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
/// Notifications held in memory waiting (~1 KB each); past it the decider
/// waits, and messages wait in the store's queue.
pub const HELD_MAX: usize = 100_000;
/// Bytes of a gateway's answer read: `{"rejected": [...]}` of at most
/// `PUSH_DEVICES_MAX` tokens of 4 KB.
pub const ANSWER_BYTES_MAX: usize = 80 * 1024;
/// How long an unregistration (an append) may take before it is left for
/// the next refusal of the same token.
pub const UNREGISTER_TIMEOUT: Duration = Duration::from_secs(10);

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
}

/// The outcome of one attempt.
struct Attempt {
    user: String,
    answer: Answer,
}

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
        }
    }

    fn hold(&mut self, rows: Vec<Waiting>) {
        for w in rows {
            self.held += 1;
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

    pub async fn run(
        mut self,
        initial: Vec<Waiting>,
        mut incoming: mpsc::Receiver<Vec<Waiting>>,
        contexts: watch::Receiver<Option<Arc<QueryContext>>>,
        mut stop: watch::Receiver<bool>,
    ) {
        self.hold(initial);
        let mut inflight: JoinSet<Attempt> = JoinSet::new();
        loop {
            self.start_ready(&mut inflight);
            self.publish_stats();
            let wake = self.next_wake();
            tokio::select! {
                Some(rows) = incoming.recv(), if self.held < HELD_MAX => self.hold(rows),
                Some(done) = inflight.join_next() => {
                    if let Ok(a) = done {
                        let ctx = contexts.borrow().clone();
                        self.finish(ctx.as_deref(), a);
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
                _ = stop.changed() => return,
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let later = Instant::now() + Duration::from_secs(1);
        self.queues
            .values()
            .filter(|q| !q.busy)
            .map(|q| q.next_at)
            .min()
            .map_or(later, |t| t.min(later))
    }

    fn start_ready(&mut self, inflight: &mut JoinSet<Attempt>) {
        let now = Instant::now();
        for (user, q) in self.queues.iter_mut() {
            if inflight.len() >= SENDS_IN_FLIGHT_MAX {
                return;
            }
            if q.busy || q.next_at > now {
                continue;
            }
            let Some(head) = q.items.front().cloned() else {
                continue;
            };
            q.busy = true;
            let (cfg, http, appender, stats) = (
                self.cfg.clone(),
                self.http.clone(),
                self.appender.clone(),
                self.stats.clone(),
            );
            let user = user.clone();
            inflight.spawn(async move {
                let answer = attempt(&cfg, &http, &head).await;
                if let Some(appender) = appender {
                    unregister_refused(&appender, &head, &answer, &stats).await;
                }
                Attempt { user, answer }
            });
        }
    }

    /// Moves a user's queue on after an attempt.
    fn finish(&mut self, ctx: Option<&QueryContext>, a: Attempt) {
        let Some(q) = self.queues.get_mut(&a.user) else {
            return;
        };
        q.busy = false;
        let Some(head) = q.items.front().cloned() else {
            return;
        };
        let ks = ctx
            .and_then(|c| c.projection(crate::queue::NAME))
            .map(|s| s.ks());
        let Some(ks) = ks else {
            // The store is restarting: try again shortly.
            q.next_at = Instant::now() + self.cfg.backoff_base;
            return;
        };
        let done = match &a.answer {
            Answer::Taken { .. } | Answer::Gone => {
                Stats::add(
                    &self.stats.sent,
                    matches!(a.answer, Answer::Taken { .. }) as u64,
                );
                outbox::remove(ks.as_ref(), &head)
            }
            Answer::Retry(why) if q.attempts + 1 < self.cfg.attempts_max => {
                q.attempts += 1;
                q.next_at = Instant::now() + backoff(&self.cfg, q.attempts);
                Stats::add(&self.stats.retries, 1);
                tracing::debug!(user = %a.user, attempts = q.attempts, reason = %why, "push gateway: trying again later");
                return;
            }
            Answer::Retry(why) | Answer::Refused(why) => {
                let mut dead = head.clone();
                dead.row.attempts = q.attempts + 1;
                dead.row.last_error = why.clone();
                Stats::add(&self.stats.dead, 1);
                tracing::warn!(user = %a.user, id = %dead.row.notification.as_ref().map_or("", |n| n.id.as_str()), reason = %why, "notification given up: a dead letter");
                outbox::bury(ks.as_ref(), &dead, now_ms())
            }
        };
        match done {
            Ok(()) => {
                q.items.pop_front();
                q.attempts = 0;
                q.next_at = Instant::now();
                self.held -= 1;
                if q.items.is_empty() {
                    self.queues.remove(&a.user);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the outbox could not be written: trying again");
                q.next_at = Instant::now() + self.cfg.backoff_base;
            }
        }
    }

    fn publish_stats(&self) {
        self.stats.outbox.store(self.held as u64, Ordering::Relaxed);
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
    let full = cfg
        .backoff_base
        .saturating_mul(1u32.checked_shl(attempts.min(20) - 1).unwrap_or(u32::MAX))
        .min(cfg.backoff_max);
    full.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// One request: the body, its signature, the gateway's answer.
async fn attempt(cfg: &NotifierConfig, http: &reqwest::Client, w: &Waiting) -> Answer {
    let Some(n) = &w.row.notification else {
        return Answer::Refused("an empty outbox row".into());
    };
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
