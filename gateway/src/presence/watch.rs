//! Who is told of whose presence, and the loops that keep it: refreshing
//! this gateway's lines, looking up its users' contacts again, and
//! watching the bucket to push changes to the users here who watch them.

use std::collections::{HashMap, HashSet};
use std::sync::Weak;
use std::time::Instant;

use async_nats::jetstream::kv::Operation;
use futures::StreamExt;
use im_schema::v1::{self, envelope::Payload};

use super::{contacts, entry, lock, Local, Presence, REFRESH_EVERY, TTL_MS};
use crate::cmd::heartbeat::now_ms;
use crate::AppState;

/// Contacts whose current state a device is told of when it connects (or
/// its user starts watching them, in a new conversation); beyond it, a
/// client asks `GET /v1/presence`.
const TOLD_ON_CONNECT_MAX: usize = 100;
/// How long a failed or ended watch waits before it starts again: one
/// attempt at a time while NATS is away.
const WATCH_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
/// Refresh writes in flight at once.
const REFRESHES_IN_FLIGHT: usize = 32;
/// Users whose contacts are looked up again at once (each lookup also
/// waits for `contacts::LOOKUPS_IN_FLIGHT`).
const CONTACT_REFRESHES_IN_FLIGHT: usize = 4;

/// Looks up `user`'s contacts and watches them; tells the user where the
/// new ones stand (all of them, up to the bound, for a device `connecting`).
pub(super) async fn watch_contacts(state: &AppState, user: &str, connecting: bool) {
    let contacts = match contacts::of(state, user).await {
        Ok(c) => c,
        Err(code) => {
            tracing::debug!(user, ?code, "contacts not known: no presence pushes yet");
            return;
        }
    };
    let p = &state.presence;
    let told: Vec<String> = {
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
        let new = |c: &&String| connecting || old.as_ref().is_none_or(|(_, o)| !o.contains(*c));
        contacts
            .iter()
            .filter(new)
            .take(TOLD_ON_CONNECT_MAX)
            .cloned()
            .collect()
    };
    for update in p.lookup(told).await {
        // A change pushed since the lookup began is newer: it stands.
        let stale = {
            let mut known = lock(&p.known);
            let stale = known
                .get(&update.user_id)
                .is_some_and(|k| *k != update.online);
            if !stale {
                known.insert(update.user_id.clone(), update.online);
            }
            stale
        };
        if !stale {
            push(state, update, std::iter::once(user.to_string())).await;
        }
    }
}

/// `user` stops being told of `contacts`.
pub(super) fn unwatch<'a>(
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

/// Refreshes this gateway's lines, looks its users' contacts up again and
/// watches the bucket, for as long as the gateway lives; each loop apart,
/// so a slow projector (contacts) never holds up a line's refresh.
pub async fn maintain(state: Weak<AppState>) {
    tokio::spawn(refresh_lines(state.clone()));
    tokio::spawn(refresh_contacts(state.clone()));
    let mut from = 0;
    loop {
        let Some(entries) = state.upgrade().map(|s| s.presence.entries.clone()) else {
            return;
        };
        // From the revision after the last one seen: nothing is missed
        // across a restart of the watch.
        let watch = match from {
            0 => entries.watch_all().await,
            rev => entries.watch_all_from_revision(rev + 1).await,
        };
        drop(entries);
        match watch {
            Ok(mut changes) => {
                while let Some(change) = changes.next().await {
                    let Some(state) = state.upgrade() else { return };
                    match change {
                        Ok(e) => {
                            from = e.revision;
                            changed(&state, &e.key, e.operation, &e.value).await;
                        }
                        Err(e) => tracing::warn!(error = %e, "presence watch"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "presence watch not started"),
        }
        tokio::time::sleep(WATCH_RETRY_AFTER).await;
    }
}

async fn refresh_lines(state: Weak<AppState>) {
    let mut every = tokio::time::interval(REFRESH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(state) = state.upgrade() else { return };
        let users: Vec<String> = lock(&state.presence.local).keys().cloned().collect();
        futures::stream::iter(users)
            .for_each_concurrent(REFRESHES_IN_FLIGHT, |user| {
                let state = state.clone();
                async move {
                    state.presence.write_line(&user).await;
                    // Last seen stays near the truth should this gateway die.
                    state.presence.write_last_seen(&user).await;
                }
            })
            .await;
    }
}

async fn refresh_contacts(state: Weak<AppState>) {
    let mut every = tokio::time::interval(REFRESH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(state) = state.upgrade() else { return };
        let due = due_for_lookup(&state.presence);
        futures::stream::iter(due)
            .for_each_concurrent(CONTACT_REFRESHES_IN_FLIGHT, |user| {
                let state = state.clone();
                async move { watch_contacts(&state, &user, false).await }
            })
            .await;
    }
}

/// How soon a user with no contacts is looked up again: their first
/// conversation shows soon, without a user who has none asking the
/// projectors every refresh.
const NO_CONTACTS_AGAIN_AFTER: std::time::Duration = std::time::Duration::from_secs(20);

/// The users here whose contacts are unknown, none for a while (a
/// conversation may not be projected yet), or older than `CONTACTS_TTL`.
fn due_for_lookup(p: &Presence) -> Vec<String> {
    let due = |l: &Local| {
        l.contacts
            .as_ref()
            .is_none_or(|(at, c)| match c.is_empty() {
                true => at.elapsed() >= NO_CONTACTS_AGAIN_AFTER,
                false => at.elapsed() >= contacts::CONTACTS_TTL,
            })
    };
    let local = lock(&p.local);
    local
        .iter()
        .filter(|(_, l)| due(l))
        .map(|(u, _)| u.clone())
        .collect()
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
