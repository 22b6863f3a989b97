//! Presence: who is online, and when they were last. Ephemeral, never in
//! the log (I29). Each gateway keeps the lines of its own connected users
//! in the `im_presence` bucket (`entry.rs`), refreshed every third of the
//! TTL, so a crashed gateway's users age out; "last seen" goes to
//! `im_last_seen`. Every gateway watches the bucket and pushes a change of
//! a user to its own connected users who share a conversation with them
//! (a direct one, or a group of at most `contacts::GROUP_MEMBERS_MAX`:
//! `contacts.rs`, `watch.rs`). `GET /v1/presence` reads the buckets for
//! the caller's contacts.

pub mod contacts;
pub use im_streams::presence as entry;
mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{Operation, Store};
use futures::StreamExt;
use im_schema::v1;
use im_streams::definitions::{LAST_SEEN_BUCKET, PRESENCE_BUCKET, PRESENCE_TTL};

pub use watch::maintain;

use crate::cmd::heartbeat::now_ms;
use crate::AppState;

/// How often this gateway refreshes its users' lines.
pub const REFRESH_EVERY: Duration = Duration::from_secs(PRESENCE_TTL.as_secs() / 3);
/// Bound on one bucket write, so that a connect never waits long on it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Tries of one compare-and-set write when other gateways write the same
/// user's entry at the same moment (a user on several gateways).
const CAS_TRIES_MAX: usize = 5;
/// How long a user whose last device left stays online: long enough for a
/// page reload or a quick reconnect, short next to the refresh period.
const OFFLINE_GRACE: Duration = Duration::from_secs(2);
/// Bucket reads in flight for one lookup (up to `QUERY_USERS_MAX` users).
const READS_IN_FLIGHT: usize = 16;
/// Users one `GET /v1/presence` may ask about.
pub const QUERY_USERS_MAX: usize = 100;

/// One user connected here: devices, and whose presence they are told of
/// (looked up again every `CONTACTS_TTL`, so new conversations count).
struct Local {
    devices: u32,
    contacts: Option<(Instant, contacts::Contacts)>,
}

pub struct Presence {
    entries: Store,
    last_seen: Store,
    /// This gateway's line in an entry: unique per process.
    gateway: String,
    local: Mutex<HashMap<String, Local>>,
    /// Contact -> the users connected here who are told of their changes.
    watchers: Mutex<HashMap<String, HashSet<String>>>,
    /// The last state pushed per watched contact (only those watched).
    known: Mutex<HashMap<String, bool>>,
    pub contacts: contacts::ContactCache,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

const TTL_MS: i64 = PRESENCE_TTL.as_millis() as i64;

impl Presence {
    pub async fn open(client: &async_nats::Client) -> Result<Self, im_streams::StreamsError> {
        let js = async_nats::jetstream::new(client.clone());
        let open = |name| im_streams::definitions::open_bucket(&js, name);
        Ok(Presence {
            entries: open(PRESENCE_BUCKET).await?,
            last_seen: open(LAST_SEEN_BUCKET).await?,
            gateway: format!("gw-{}", hex::encode(rand::random::<[u8; 6]>())),
            local: Mutex::default(),
            watchers: Mutex::default(),
            known: Mutex::default(),
            contacts: contacts::ContactCache::default(),
        })
    }

    /// Makes this gateway's line in `user`'s entry say what is true when
    /// it is written: present while the user has a device here, else gone
    /// (the last line gone deletes the entry, which watchers see as
    /// offline). Reading the truth at each attempt, not from the caller,
    /// makes racing writes (a connect and a disconnect, a refresh) end in
    /// the current state whatever their order.
    async fn write_line(&self, user: &str) {
        let write = async {
            for _ in 0..CAS_TRIES_MAX {
                let present = self.is_local(user);
                if !present {
                    // Last seen first: a watcher told "offline" reads it.
                    self.write_last_seen(user).await;
                }
                if self.cas_line(user, present).await? {
                    return Ok(());
                }
            }
            Err::<(), async_nats::Error>("the entry kept changing".into())
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(user, error = %e, "presence not written"),
            Err(_) => tracing::warn!(user, "presence write timed out"),
        }
    }

    /// One compare-and-set of the line; whether it took.
    async fn cas_line(&self, user: &str, present: bool) -> Result<bool, async_nats::Error> {
        let (old, revision) = match self.entries.entry(user).await? {
            Some(e) if e.operation == Operation::Put => (entry::decode(&e.value), e.revision),
            Some(e) => (entry::Entry::new(), e.revision),
            None => (entry::Entry::new(), 0),
        };
        let new = entry::with_line(old, &self.gateway, present, now_ms(), TTL_MS);
        Ok(match (new.is_empty(), revision) {
            (true, 0) => true,
            (true, rev) => self
                .entries
                .delete_expect_revision(user, Some(rev))
                .await
                .is_ok(),
            (false, rev) => self
                .entries
                .update(user, entry::encode(&new), rev)
                .await
                .is_ok(),
        })
    }

    async fn write_last_seen(&self, user: &str) {
        let seen = now_ms().to_string().into_bytes().into();
        if let Err(e) = self.last_seen.put(user, seen).await {
            tracing::warn!(user, error = %e, "last seen not written");
        }
    }

    /// `user` wrote into a conversation: with no contacts known yet (their
    /// first conversation), they are looked up at the next refresh rather
    /// than after the wait for users who have none.
    pub fn wrote(&self, user: &str) {
        let mut local = lock(&self.local);
        if let Some(l) = local.get_mut(user) {
            if l.contacts.as_ref().is_some_and(|(_, c)| c.is_empty()) {
                l.contacts = None;
            }
        }
    }

    fn is_local(&self, user: &str) -> bool {
        lock(&self.local).contains_key(user)
    }

    /// What the buckets say of `users`.
    pub async fn lookup(&self, users: impl IntoIterator<Item = String>) -> Vec<v1::PresenceUpdate> {
        let asks = users.into_iter().map(|user| async move {
            let online = match self.entries.entry(&user).await {
                Ok(Some(e)) if e.operation == Operation::Put => {
                    entry::is_online(&entry::decode(&e.value), now_ms(), TTL_MS)
                }
                _ => false,
            };
            let last_seen_ms = match online {
                true => now_ms(),
                false => self.last_seen_ms(&user).await,
            };
            v1::PresenceUpdate {
                user_id: user,
                online,
                last_seen_ms,
            }
        });
        futures::stream::iter(asks)
            .buffered(READS_IN_FLIGHT)
            .collect()
            .await
    }

    async fn last_seen_ms(&self, user: &str) -> i64 {
        match self.last_seen.get(user).await {
            Ok(Some(v)) => std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            _ => 0,
        }
    }
}

/// A device of `user` connected here, until dropped: however its
/// connection ends (closed, failed, its task cancelled), the device is
/// counted off.
pub struct Device {
    state: Arc<AppState>,
    user: String,
}

impl Drop for Device {
    fn drop(&mut self) {
        let (state, user) = (self.state.clone(), std::mem::take(&mut self.user));
        // No runtime: the process is ending, and its lines age out.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { disconnected(&state, &user).await });
        }
    }
}

/// A device of `user` connected here: the first one puts the user's line;
/// every one is told where the user's contacts stand (`watch.rs`). The
/// bucket work runs apart: the connection does not wait for it.
/// `user`'s contacts changed (a contact made or ended, a block): looked
/// up again now if they are connected here, not at the next refresh, so a
/// block hides presence at once on this gateway (on others within
/// `contacts::CONTACTS_TTL`, I29).
pub async fn contacts_changed(state: &AppState, user: &str) {
    state.presence.contacts.forget(user);
    let here = lock(&state.presence.local).contains_key(user);
    if here {
        watch::watch_contacts(state, user, false).await;
    }
}

pub fn connected(state: &Arc<AppState>, user: &str) -> Device {
    let first = {
        let mut local = lock(&state.presence.local);
        let l = local.entry(user.to_string()).or_insert(Local {
            devices: 0,
            contacts: None,
        });
        l.devices += 1;
        l.devices == 1
    };
    let (s, u) = (state.clone(), user.to_string());
    tokio::spawn(async move {
        if first {
            s.presence.write_line(&u).await;
        }
        watch::watch_contacts(&s, &u, true).await;
    });
    Device {
        state: state.clone(),
        user: user.to_string(),
    }
}

/// The last device of `user` here left: the line goes (its contacts are
/// told "offline") and the user's pushes stop.
async fn disconnected(state: &AppState, user: &str) {
    let p = &state.presence;
    let gone = {
        let mut local = lock(&p.local);
        let Some(l) = local.get_mut(user) else { return };
        l.devices -= 1;
        match l.devices {
            0 => local.remove(user),
            _ => None,
        }
    };
    let Some(gone) = gone else { return };
    if let Some((_, contacts)) = gone.contacts {
        watch::unwatch(
            &mut lock(&p.watchers),
            &mut lock(&p.known),
            user,
            contacts.iter(),
        );
    }
    // A reload or a reconnect comes back within this: the line then never
    // goes, and no one sees the user blink offline.
    tokio::time::sleep(OFFLINE_GRACE).await;
    p.write_line(user).await;
}
