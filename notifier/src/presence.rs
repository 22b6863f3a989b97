//! Whether a member had a device connected when a window opened or since,
//! from what the gateways keep in `im_presence` (and `im_last_seen`):
//! presence is not in the log, so it is known when a window is decided.
//!
//! The notifier watches `im_presence` (its current entries, then every
//! change): who is online, and when each user's last line went. So a
//! decision costs no request; only a window that opened before the watch
//! started (a backlog at start), or while it is restarting or over its
//! bound, asks the buckets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv::{Operation, Store};
use futures::StreamExt;
use im_streams::definitions::{open_bucket, LAST_SEEN_BUCKET, PRESENCE_BUCKET, PRESENCE_TTL};
use im_streams::presence::{decode, is_online, Entry};

use crate::stats::now_ms;

const TTL_MS: i64 = PRESENCE_TTL.as_millis() as i64;

/// Users the watch keeps (online, or gone within the window it must
/// remember): past it the buckets are asked instead, as before the watch.
pub const WATCHED_USERS_MAX: usize = 1_000_000;
/// How long a failed watch waits before it starts again.
pub const WATCH_RETRY: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Known {
    online: HashMap<String, Entry>,
    /// When each user's entry went (their last device left), by the
    /// bucket's clock.
    left: HashMap<String, i64>,
    /// Since when the watch has seen every change (0: not yet, or not
    /// watching): set once its replay of the current entries is done.
    since_ms: i64,
    /// Over its bound: the watch starts afresh.
    overflowed: bool,
    last_pruned_ms: i64,
}

pub struct Presence {
    entries: Store,
    last_seen: Store,
    known: Arc<Mutex<Known>>,
    /// Departures older than this are forgotten: no window that old is
    /// decided (`late_max` and the debounce).
    remember_ms: i64,
}

fn lock(m: &Mutex<Known>) -> std::sync::MutexGuard<'_, Known> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Presence {
    pub async fn open(
        js: &async_nats::jetstream::Context,
        remember: Duration,
    ) -> Result<Self, im_streams::StreamsError> {
        let p = Presence {
            entries: open_bucket(js, PRESENCE_BUCKET).await?,
            last_seen: open_bucket(js, LAST_SEEN_BUCKET).await?,
            known: Arc::default(),
            remember_ms: remember.as_millis() as i64,
        };
        tokio::spawn(watch(p.entries.clone(), p.known.clone(), p.remember_ms));
        Ok(p)
    }

    /// Connected now, or the last device left at or after `since_ms`: the
    /// member saw the window's messages arrive (or synced them). A bucket
    /// that cannot be read counts as "not connected": a notification too
    /// many beats a message nobody is told of.
    pub async fn connected_since(&self, user: &str, since_ms: i64, now_ms: i64) -> bool {
        {
            let k = lock(&self.known);
            if k.since_ms != 0 && since_ms >= k.since_ms {
                if k.online
                    .get(user)
                    .is_some_and(|e| is_online(e, now_ms, TTL_MS))
                {
                    return true;
                }
                return k.left.get(user).is_some_and(|at| *at >= since_ms);
            }
        }
        self.asked(user, since_ms, now_ms).await
    }

    /// The buckets' answer (two reads).
    async fn asked(&self, user: &str, since_ms: i64, now_ms: i64) -> bool {
        if let Ok(Some(e)) = self.entries.entry(user).await {
            if e.operation == Operation::Put && is_online(&decode(&e.value), now_ms, TTL_MS) {
                return true;
            }
        }
        match self.last_seen.get(user).await {
            Ok(Some(v)) => std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .is_some_and(|seen| seen >= since_ms),
            _ => false,
        }
    }
}

/// Keeps `known` up to date, starting again after a failure or past its
/// bound (what it knew is not trusted meanwhile).
async fn watch(entries: Store, known: Arc<Mutex<Known>>, remember_ms: i64) {
    loop {
        let started = now_ms();
        *lock(&known) = Known::default();
        // An empty bucket replays nothing: the watch is current at once.
        let empty = entries.status().await.is_ok_and(|s| s.values() == 0);
        match entries.watch_with_history(">").await {
            Ok(mut w) => {
                if empty {
                    lock(&known).since_ms = started;
                }
                while let Some(Ok(e)) = w.next().await {
                    let mut k = lock(&known);
                    let at = (e.created.unix_timestamp_nanos() / 1_000_000) as i64;
                    seen(&mut k, e.key, e.operation, &e.value, at, remember_ms);
                    if e.delta == 0 && k.since_ms == 0 {
                        k.since_ms = started;
                    }
                    if k.overflowed {
                        break;
                    }
                }
                tracing::warn!("the presence watch ended: starting it again");
            }
            Err(e) => tracing::warn!(error = %e, "the presence watch did not start"),
        }
        lock(&known).since_ms = 0;
        tokio::time::sleep(WATCH_RETRY).await;
    }
}

/// One change of a user's entry, made at `at_ms`.
fn seen(k: &mut Known, user: String, op: Operation, value: &[u8], at_ms: i64, remember_ms: i64) {
    match op {
        Operation::Put => {
            k.left.remove(&user);
            k.online.insert(user, decode(value));
        }
        Operation::Delete | Operation::Purge => {
            k.online.remove(&user);
            k.left.insert(user, at_ms);
        }
    }
    let now = now_ms();
    // Departures no window asks about any more go, at most once a second.
    if k.left.len() > WATCHED_USERS_MAX / 2 && now - k.last_pruned_ms > 1_000 {
        k.left.retain(|_, at| now - *at < remember_ms);
        k.last_pruned_ms = now;
    }
    if k.online.len() + k.left.len() > WATCHED_USERS_MAX {
        // The buckets answer until the watch starts afresh.
        *k = Known {
            overflowed: true,
            ..Default::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn arrivals_and_departures_are_kept() {
        let mut k = Known {
            since_ms: 1,
            ..Default::default()
        };
        let line: Entry = BTreeMap::from([("gw".to_string(), now_ms())]);
        let value = im_streams::presence::encode(&line);
        seen(&mut k, "bo".into(), Operation::Put, &value, 5, 60_000);
        assert!(k.online.contains_key("bo") && !k.left.contains_key("bo"));
        seen(&mut k, "bo".into(), Operation::Delete, b"", 7, 60_000);
        assert!(!k.online.contains_key("bo"));
        assert_eq!(k.left["bo"], 7, "when it happened, not when it was seen");
    }
}
