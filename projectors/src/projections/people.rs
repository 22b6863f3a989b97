//! The people rows `members` keeps: per user or pair log, `p<log>` (the
//! people rules state, and a user's profile); per user and pair log,
//! `k<user>\0<log>` (how that user stands with the other: a contact, a
//! request either way, a block either way). Both name their log, and each
//! depends on that log's events only (`conv_of_key`). O(1) writes per
//! event: a pair's event rewrites its two users' entries.

use im_schema::v1::{self, conv_event::Kind};
use im_streams::codec::StoredEvent;
use im_streams::ids::{is_people_log, pair_log_id, user_log_id};
use im_streams::people::{self, Contact, People};

use crate::keys::{key, prefix, prefix_end};
use crate::store::{Keyspace, StoreError};
use crate::tx::Tx;

/// `p<log>` -> PeopleRow.
pub const ROW: u8 = b'p';
/// `k<user>\0<partition>\0<pair log>` -> ContactEntry.
pub const CONTACT: u8 = b'k';

/// Profiles one query asks for, at most: a page of a member list or a
/// conversation list (the clients' batch), within one NATS message.
pub const PROFILES_PER_QUERY_MAX: usize = 100;

/// Entries one contacts answer holds per partition, at most: ~60 bytes
/// each, 300 KB, under a NATS message's limit; a user with more contacts,
/// requests and blocks sees the first by peer id.
pub const CONTACTS_SCAN_MAX: usize = 5_000;

fn row_key(log: &str) -> Vec<u8> {
    key(ROW, &[log.as_bytes()])
}

/// `k<user>\0<partition>\0<log>`: a user's entries of one partition are
/// one range, so a partition's query reads its own and no other's.
fn contact_key(user: &str, partition: u32, log: &str) -> Vec<u8> {
    key(
        CONTACT,
        &[user.as_bytes(), &partition.to_be_bytes(), log.as_bytes()],
    )
}

/// The partition of a stored event, from its subject (`im.conv.<p>.<id>`).
fn partition_of(stored: &StoredEvent) -> u32 {
    stored
        .subject
        .split('.')
        .nth(2)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// Folds a people log's event into its rows (nothing for a chat's).
pub fn fold(tx: &mut Tx, stored: &StoredEvent) -> Result<(), StoreError> {
    let ev = &stored.event;
    let log = ev.conversation_id.as_str();
    if !is_people_log(log) {
        return Ok(());
    }
    let mut row = tx
        .get_msg::<v1::PeopleRow>(&row_key(log))?
        .unwrap_or_default();
    let mut state = People::from_row(&row);
    let before = state.contact.clone();
    people::fold(&mut state, ev);
    let profile = std::mem::take(&mut row.profile);
    let (since, updated) = (row.since_ms, row.profile_updated_ms);
    let (push, dnd_until_ms, muted) = (
        std::mem::take(&mut row.push),
        row.dnd_until_ms,
        std::mem::take(&mut row.muted),
    );
    row = state.to_row();
    row.profile = profile;
    (row.push, row.dnd_until_ms, row.muted) = (push, dnd_until_ms, muted);
    if let Some(kind) = &ev.kind {
        people::push::fold_row(&mut row, kind, ev.at_ms);
    }
    row.since_ms = if state.contact != before {
        ev.at_ms
    } else {
        since
    };
    row.profile_updated_ms = updated;
    match &ev.kind {
        Some(Kind::ProfileUpdated(p)) => {
            row.profile = Some(p.clone());
            row.profile_updated_ms = ev.at_ms;
        }
        // The profile's keys are gone: its sealed bytes go too.
        Some(Kind::UserErased(_)) => {
            row.profile = None;
            row.profile_updated_ms = ev.at_ms;
        }
        _ => {}
    }
    tx.put_msg(row_key(log), &row);
    if log.starts_with(im_streams::ids::PAIR_LOG_PREFIX) {
        let users = super::membership::user_ids(tx, log)?;
        let at = (partition_of(stored), log);
        for (user, other) in [(0, 1), (1, 0)] {
            if let (Some(u), Some(o)) = (users.get(user), users.get(other)) {
                write_entry(tx, at, (u, o), &state, row.since_ms);
            }
        }
    }
    Ok(())
}

/// How `user` stands with `other`, kept while there is anything to show.
fn write_entry(
    tx: &mut Tx,
    (partition, log): (u32, &str),
    (user, other): (&str, &str),
    p: &People,
    since_ms: i64,
) {
    let state = match &p.contact {
        Contact::Contacts => v1::ContactState::Contact,
        Contact::Pending { from, .. } if from == user => v1::ContactState::Outgoing,
        // A request asked while blocked is never shown to the blocker.
        Contact::Pending { hidden: false, .. } => v1::ContactState::Incoming,
        _ => v1::ContactState::None,
    };
    let blocked = p.blocked_by.contains(user);
    let blocked_by_them = p.blocked_by.contains(other);
    if state == v1::ContactState::None && !blocked && !blocked_by_them {
        tx.delete(contact_key(user, partition, log));
        return;
    }
    // Since when they stand as shown; an entry that shows no contact (a
    // block) tells no time, which would reveal a hidden request's.
    let since_ms = if state == v1::ContactState::None {
        0
    } else {
        since_ms
    };
    let entry = v1::ContactEntry {
        user_id: other.to_string(),
        state: state as i32,
        blocked,
        since_ms,
        blocked_by_them,
    };
    tx.put_msg(contact_key(user, partition, log), &entry);
}

/// The profiles (and their privacy) of those of `users` who set one.
pub fn profiles(ks: &dyn Keyspace, users: &[String]) -> Result<v1::ProfilesResult, StoreError> {
    let tx = Tx::new(ks);
    let mut out = v1::ProfilesResult::default();
    for user in users.iter().take(PROFILES_PER_QUERY_MAX) {
        let Ok(log) = user_log_id(user) else { continue };
        let Some(row) = tx.get_msg::<v1::PeopleRow>(&row_key(&log))? else {
            continue;
        };
        let p = row.profile.unwrap_or_default();
        out.profiles.push(v1::Profile {
            user_id: user.clone(),
            display_name: p.display_name,
            avatar: p.avatar,
            status: p.status,
            updated_ms: row.profile_updated_ms,
            sealed: p.sealed,
        });
        out.privacy.push(row.privacy.unwrap_or_default());
        out.notify.push(v1::NotifySettings {
            devices: row.push,
            dnd_until_ms: row.dnd_until_ms,
            muted: row.muted,
        });
    }
    Ok(out)
}

/// `user`'s contact entries in `partition` (all: None), by peer, at most
/// `CONTACTS_SCAN_MAX`; `truncated` when there are more.
pub fn contacts_of(
    ks: &dyn Keyspace,
    user: &str,
    partition: Option<u32>,
) -> Result<v1::ContactsResult, StoreError> {
    let p = match partition {
        Some(n) => prefix(CONTACT, &[user.as_bytes(), &n.to_be_bytes()]),
        None => prefix(CONTACT, &[user.as_bytes()]),
    };
    let rows = ks.range(&p, &prefix_end(&p), false, CONTACTS_SCAN_MAX + 1)?;
    let truncated = rows.len() > CONTACTS_SCAN_MAX;
    let mut entries = Vec::with_capacity(rows.len());
    for (k, v) in rows.iter().take(CONTACTS_SCAN_MAX) {
        entries.push(crate::store::decode_value::<v1::ContactEntry>(k, v)?);
    }
    // Keys are by pair log; people read them by peer.
    entries.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    Ok(v1::ContactsResult { entries, truncated })
}

/// The rows of `users`' own logs and of their pair logs with `actor`, of
/// those logs `in_scope` keeps that have any.
pub fn reach_rows(
    ks: &dyn Keyspace,
    actor: &str,
    users: &[String],
    in_scope: &dyn Fn(&str) -> bool,
) -> Result<Vec<v1::PeopleLogRow>, StoreError> {
    let tx = Tx::new(ks);
    let mut out = Vec::new();
    for user in users {
        let (Ok(own), Ok(pair)) = (user_log_id(user), pair_log_id(actor, user)) else {
            continue;
        };
        for log in [own, pair] {
            if !in_scope(&log) {
                continue;
            }
            if let Some(mut row) = tx.get_msg::<v1::PeopleRow>(&row_key(&log))? {
                // No rule reads the profile or the notification settings
                // (push tokens are the user's alone): thousands would not
                // fit a message.
                row.profile = None;
                row.push.clear();
                row.muted.clear();
                row.dnd_until_ms = 0;
                out.push(v1::PeopleLogRow {
                    log_id: log,
                    row: Some(row),
                });
            }
        }
    }
    Ok(out)
}

/// A user's own row (profile, privacy, push devices, mutes), if they ever
/// wrote to their log.
pub fn user_row(tx: &Tx, user: &str) -> Result<Option<v1::PeopleRow>, StoreError> {
    let Ok(log) = user_log_id(user) else {
        return Ok(None);
    };
    tx.get_msg(&row_key(&log))
}
