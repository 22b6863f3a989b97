//! What the notifier counts, read by its metrics (`metrics.rs`).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::window::Skip;

#[derive(Default)]
pub struct Stats {
    /// Notifications the push gateway took.
    pub sent: AtomicU64,
    /// Attempts that failed and were tried again later.
    pub retries: AtomicU64,
    /// Notifications given up (dead letters made).
    pub dead: AtomicU64,
    /// Registrations ended because the gateway refused their token.
    pub unregistered: AtomicU64,
    /// Members a decided window woke nobody of, by reason.
    pub skipped: [AtomicU64; 5],
    /// Notifications dropped before sending: read in the meantime.
    pub read_meanwhile: AtomicU64,
    /// Windows decided, and notifications about to be sent, too late to
    /// wake anyone (`late_max`).
    pub late: AtomicU64,
    /// Queued messages held in undecided windows.
    pub pending_messages: AtomicU64,
    /// Notifications decided and not yet taken (in the store's outbox).
    pub outbox: AtomicU64,
    /// Dead letters in the store.
    pub dead_stored: AtomicU64,
    /// When the oldest undecided window was due, ms (0: none).
    pub oldest_due_ms: AtomicI64,
    /// When the oldest notification not yet taken was decided, ms (0: none).
    pub oldest_waiting_ms: AtomicI64,
}

pub const SKIPS: [Skip; 5] = [
    Skip::Own,
    Skip::Read,
    Skip::NoDevice,
    Skip::Quiet,
    Skip::Online,
];

impl Stats {
    pub fn skip(&self, s: Skip) {
        let i = SKIPS
            .iter()
            .position(|x| *x == s)
            .expect("every skip is listed");
        self.skipped[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(n))
        });
    }

    /// Seconds the notifier is behind at `now_ms`: since the oldest window
    /// it has not decided was due, or the oldest notification it has not
    /// handed over was decided.
    pub fn lag_seconds(&self, now_ms: i64) -> f64 {
        [&self.oldest_due_ms, &self.oldest_waiting_ms]
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .filter(|t| *t > 0)
            .map(|t| (now_ms - t).max(0) as f64 / 1000.0)
            .fold(0.0, f64::max)
    }
}

impl Stats {
    /// What the control subject reports (the ops page).
    pub fn snapshot(&self) -> im_schema::v1::NotifyStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        im_schema::v1::NotifyStats {
            outbox: get(&self.outbox),
            pending_messages: get(&self.pending_messages),
            lag_ms: (self.lag_seconds(now_ms()) * 1000.0) as u64,
            sent: get(&self.sent),
            retries: get(&self.retries),
            dead_letters_made: get(&self.dead),
            unregistered: get(&self.unregistered),
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
