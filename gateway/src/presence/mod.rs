//! Presence: who is online, and when they were last. Ephemeral, never in
//! the log. Each gateway keeps the lines of its own connected users in the
//! `im_presence` bucket (`entry.rs`), refreshed every third of the TTL, so
//! a crashed gateway's users age out; "last seen" goes to `im_last_seen`.
//! Every gateway watches the bucket and pushes a change of a user to its
//! own connected users who share a conversation with them (`contacts.rs`).
//! `GET /v1/presence` reads the buckets for the caller's contacts.

pub mod contacts;
pub mod entry;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{Operation, Store};
use futures::StreamExt;
use im_schema::v1::{self, envelope::Payload};
use im_streams::definitions::{LAST_SEEN_BUCKET, PRESENCE_BUCKET, PRESENCE_TTL};

use crate::cmd::heartbeat::now_ms;
use crate::AppState;

/// How often this gateway refreshes its users' lines.
pub const REFRESH_EVERY: Duration = Duration::from_secs(PRESENCE_TTL.as_secs() / 3);
/// Bound on one bucket write, so that a connect never waits long on it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Tries of one compare-and-set write when other gateways write the same
/// user's entry at the same moment (a user on several gateways).
const CAS_TRIES_MAX: usize = 5;
/// Refresh writes in flight at once.
const REFRESHES_IN_FLIGHT: usize = 32;
/// Users whose contacts are looked up at once per refresh: each lookup is
/// a fan-out of queries to the projectors.
const CONTACT_LOOKUPS_IN_FLIGHT: usize = 4;
/// New contacts whose current state a user is told of when they start
/// being watched (on connect, or in a new conversation); beyond it, a
/// client asks `GET /v1/presence`.
const NEW_CONTACTS_TOLD_MAX: usize = 100;
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

    /// Sets (or removes) this gateway's line in `user`'s entry; removing
    /// the last line deletes the entry, which watchers see as offline.
    async fn write_line(&self, user: &str, present: bool) {
        let write = async {
            for _ in 0..CAS_TRIES_MAX {
                let current = self.entries.entry(user).await?;
                let (old, revision) = match &current {
                    Some(e) if e.operation == Operation::Put => {
                        (entry::decode(&e.value), e.revision)
                    }
                    Some(e) => (entry::Entry::new(), e.revision),
                    None => (entry::Entry::new(), 0),
                };
                let new = entry::with_line(old, &self.gateway, present, now_ms(), TTL_MS);
                let done = match (new.is_empty(), revision) {
                    (true, 0) => return Ok(()),
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
                };
                if done {
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
        if !present || self.is_local(user) {
            let seen = now_ms().to_string().into_bytes().into();
            let put = self.last_seen.put(user, seen);
            if let Ok(Err(e)) = tokio::time::timeout(WRITE_TIMEOUT, put).await {
                tracing::warn!(user, error = %e, "last seen not written");
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
        futures::stream::iter(asks).buffered(16).collect().await
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

/// A device of `user` connected here: the first one puts the user's line
/// and starts telling them of their contacts' changes.
pub async fn connected(state: &Arc<AppState>, user: &str) {
    let p = &state.presence;
    let first = {
        let mut local = lock(&p.local);
        let l = local.entry(user.to_string()).or_insert(Local {
            devices: 0,
            contacts: None,
        });
        l.devices += 1;
        l.devices == 1
    };
    if !first {
        return;
    }
    p.write_line(user, true).await;
    let (state, user) = (state.clone(), user.to_string());
    tokio::spawn(async move { watch_contacts(&state, &user).await });
}

async fn watch_contacts(state: &AppState, user: &str) {
    let contacts = match contacts::of(state, user).await {
        Ok(c) => c,
        Err(code) => {
            tracing::debug!(user, ?code, "contacts not known: no presence pushes");
            return;
        }
    };
    let p = &state.presence;
    let added: Vec<String> = {
        let mut local = lock(&p.local);
        let Some(l) = local.get_mut(user) else { return };
        let old = l.contacts.replace((Instant::now(), contacts.clone()));
        let mut watchers = lock(&p.watchers);
        if let Some((_, old)) = &old {
            unwatch(
                &mut watchers,
                &mut lock(&p.known),
                user,
                old.difference(&contacts),
            );
        }
        for c in contacts.iter() {
            watchers
                .entry(c.clone())
                .or_default()
                .insert(user.to_string());
        }
        let is_new = |c: &&String| old.as_ref().is_none_or(|(_, o)| !o.contains(*c));
        contacts
            .iter()
            .filter(is_new)
            .take(NEW_CONTACTS_TOLD_MAX)
            .cloned()
            .collect()
    };
    // Where new contacts stand now; their changes are pushed from here on.
    for update in p.lookup(added).await {
        push(state, update, std::iter::once(user.to_string())).await;
    }
}

/// `user` stops being told of `contacts`.
fn unwatch<'a>(
    watchers: &mut HashMap<String, HashSet<String>>,
    known: &mut HashMap<String, bool>,
    user: &str,
    contacts: impl Iterator<Item = &'a String>,
) {
    for c in contacts {
        if let Some(w) = watchers.get_mut(c) {
            w.remove(user);
            if w.is_empty() {
                watchers.remove(c);
                known.remove(c);
            }
        }
    }
}

/// A device of `user` left: the last one removes the user's line (its
/// contacts are told "offline") and stops the user's pushes.
pub async fn disconnected(state: &AppState, user: &str) {
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
        unwatch(
            &mut lock(&p.watchers),
            &mut lock(&p.known),
            user,
            contacts.iter(),
        );
    }
    p.write_line(user, false).await;
}

/// Refreshes this gateway's lines and watches the bucket, for as long as
/// the gateway lives.
pub async fn maintain(state: Weak<AppState>) {
    let Some(entries) = state.upgrade().map(|s| s.presence.entries.clone()) else {
        return;
    };
    tokio::spawn(refresh(state.clone()));
    loop {
        match entries.watch_all().await {
            Ok(mut changes) => {
                while let Some(change) = changes.next().await {
                    let Some(state) = state.upgrade() else { return };
                    match change {
                        Ok(e) => changed(&state, &e.key, e.operation, &e.value).await,
                        Err(e) => tracing::warn!(error = %e, "presence watch"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "presence watch not started"),
        }
        if state.strong_count() == 0 {
            return;
        }
        // Retried once a second while NATS is away: one attempt at a time.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn refresh(state: Weak<AppState>) {
    let mut every = tokio::time::interval(REFRESH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(state) = state.upgrade() else { return };
        let (users, stale) = local_users(&state.presence);
        futures::stream::iter(stale)
            .for_each_concurrent(CONTACT_LOOKUPS_IN_FLIGHT, |user| {
                let state = state.clone();
                async move { watch_contacts(&state, &user).await }
            })
            .await;
        futures::stream::iter(users)
            .for_each_concurrent(REFRESHES_IN_FLIGHT, |user| {
                let state = state.clone();
                async move { state.presence.write_line(&user, true).await }
            })
            .await;
    }
}

/// The users connected here, and those whose contacts are due a lookup.
fn local_users(p: &Presence) -> (Vec<String>, Vec<String>) {
    let local = lock(&p.local);
    let due = |l: &Local| {
        l.contacts
            .as_ref()
            .is_none_or(|(at, c)| c.is_empty() || at.elapsed() >= contacts::CONTACTS_TTL)
    };
    let stale = local.iter().filter(|(_, l)| due(l)).map(|(u, _)| u.clone());
    (local.keys().cloned().collect(), stale.collect())
}

/// A change of `user`'s entry: pushed to the users here who watch them,
/// when it changes what they were last told.
async fn changed(state: &AppState, user: &str, op: Operation, value: &[u8]) {
    let p = &state.presence;
    let online = op == Operation::Put && entry::is_online(&entry::decode(value), now_ms(), TTL_MS);
    let watchers: Vec<String> = match lock(&p.watchers).get(user) {
        Some(w) => w.iter().cloned().collect(),
        None => return,
    };
    if lock(&p.known).insert(user.to_string(), online) == Some(online) {
        return;
    }
    let last_seen_ms = match online {
        true => now_ms(),
        false => p.last_seen_ms(user).await,
    };
    let update = v1::PresenceUpdate {
        user_id: user.to_string(),
        online,
        last_seen_ms,
    };
    push(state, update, watchers.into_iter()).await;
}

/// Publishes `update` to each of `to` as a notice (ephemeral).
async fn push(state: &AppState, update: v1::PresenceUpdate, to: impl Iterator<Item = String>) {
    let envelope = crate::cmd::reply(Payload::Presence(update));
    let bytes = bytes::Bytes::from(im_schema::encode(&envelope));
    for w in to {
        if let Ok(subject) = im_streams::subjects::notice_subject(&w) {
            state.metrics.presence_pushes.inc();
            let _ = state.client.publish(subject, bytes.clone()).await;
        }
    }
}
