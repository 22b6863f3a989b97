//! Membership rows every conversation-aware projection keeps in its own
//! keyspace (`m<conv>\0<user>` -> MemberRecord, `b<conv>\0<user>` ->
//! blacklisted), so each can be rebuilt alone.

use im_schema::v1::{self, conv_event::Kind};

use crate::keys::{key, last_part, prefix};
use crate::store::StoreError;
use crate::tx::Tx;

pub const MEMBER: u8 = b'm';
pub const BLACKLIST: u8 = b'b';
/// `K<conv>` -> the conversation kind (one byte): blacklisting removes a
/// group member but only blocks in a direct conversation.
pub const KIND: u8 = b'K';
/// `S<conv>` -> the conv_seq of its last membership change (8 bytes BE):
/// the chain a large group's deliveries carry (`Deliver.members_seq`).
pub const MEMBERS_SEQ: u8 = b'S';

/// The conv_seq of the conversation's last membership change (0: none).
pub fn members_seq(tx: &Tx, conv: &str) -> Result<u64, StoreError> {
    Ok(tx
        .get(&key(MEMBERS_SEQ, &[conv.as_bytes()]))?
        .and_then(|v| v.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

/// The conversation's kind, once created.
pub fn conversation_kind(tx: &Tx, conv: &str) -> Result<Option<v1::ConversationKind>, StoreError> {
    Ok(tx
        .get(&key(KIND, &[conv.as_bytes()]))?
        .and_then(|v| v.first().copied())
        .map(|b| {
            v1::ConversationKind::try_from(i32::from(b)).unwrap_or(v1::ConversationKind::Group)
        }))
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub joined: Vec<String>,
    pub left: Vec<String>,
}

fn member_key(conv: &str, user: &str) -> Vec<u8> {
    key(MEMBER, &[conv.as_bytes(), user.as_bytes()])
}

pub fn get(tx: &Tx, conv: &str, user: &str) -> Result<Option<v1::MemberRecord>, StoreError> {
    tx.get_msg(&member_key(conv, user))
}

/// The members of a conversation, by user id.
pub fn list(tx: &Tx, conv: &str) -> Result<Vec<v1::MemberRecord>, StoreError> {
    tx.scan(&prefix(MEMBER, &[conv.as_bytes()]))?
        .into_iter()
        .map(|(k, v)| crate::store::decode_value(&k, &v))
        .collect()
}

/// Up to `limit` members after the user id `after` (empty: from the
/// first), and whether more follow.
pub fn page(
    tx: &Tx,
    conv: &str,
    after: &str,
    limit: usize,
) -> Result<(Vec<v1::MemberRecord>, bool), StoreError> {
    let all = prefix(MEMBER, &[conv.as_bytes()]);
    let start = if after.is_empty() {
        all.clone()
    } else {
        let mut k = member_key(conv, after);
        k.push(0);
        k
    };
    let rows = tx.ks_range(&start, &crate::keys::prefix_end(&all), limit + 1)?;
    let more = rows.len() > limit;
    let members = rows
        .into_iter()
        .take(limit)
        .map(|(k, v)| crate::store::decode_value(&k, &v))
        .collect::<Result<_, _>>()?;
    Ok((members, more))
}

pub fn user_ids(tx: &Tx, conv: &str) -> Result<Vec<String>, StoreError> {
    Ok(list(tx, conv)?.into_iter().map(|m| m.user_id).collect())
}

pub fn blacklist(tx: &Tx, conv: &str) -> Result<Vec<String>, StoreError> {
    Ok(tx
        .scan(&prefix(BLACKLIST, &[conv.as_bytes()]))?
        .into_iter()
        .map(|(k, _)| last_part(&k))
        .collect())
}

fn join(tx: &mut Tx, conv: &str, user: &str, role: i32, seq: u64, change: &mut Change) {
    tx.put_msg(
        member_key(conv, user),
        &v1::MemberRecord {
            user_id: user.to_string(),
            role,
            muted_until_ms: 0,
            joined_seq: seq,
        },
    );
    change.joined.push(user.to_string());
}

fn leave(tx: &mut Tx, conv: &str, user: &str, change: &mut Change) -> Result<(), StoreError> {
    if get(tx, conv, user)?.is_some() {
        tx.delete(member_key(conv, user));
        change.left.push(user.to_string());
    }
    Ok(())
}

fn update(
    tx: &mut Tx,
    conv: &str,
    user: &str,
    f: impl FnOnce(&mut v1::MemberRecord),
) -> Result<(), StoreError> {
    if let Some(mut m) = get(tx, conv, user)? {
        f(&mut m);
        tx.put_msg(member_key(conv, user), &m);
    }
    Ok(())
}

/// Folds one conversation event into the membership rows and reports the
/// change to the members cache.
pub fn fold(
    tx: &mut Tx,
    ev: &v1::ConvEvent,
    ctx: &mut super::FoldCtx,
) -> Result<Change, StoreError> {
    let change = fold_rows(tx, ev)?;
    // Every event that names members joining or leaving moves the chain,
    // changed rows or not: gateways move it on the same events
    // (`gateway/src/dispatch/groups.rs`, `membership_change`).
    let names_members = matches!(
        ev.kind,
        Some(
            Kind::Created(_)
                | Kind::MemberAdded(_)
                | Kind::MembersAdded(_)
                | Kind::MemberRemoved(_)
                | Kind::MemberLeft(_)
                | Kind::Blacklisted(_)
        )
    );
    if names_members {
        tx.put(
            key(MEMBERS_SEQ, &[ev.conversation_id.as_bytes()]),
            ev.conv_seq.to_be_bytes().to_vec(),
        );
    }
    ctx.members.changed(&ev.conversation_id, &change);
    Ok(change)
}

fn fold_rows(tx: &mut Tx, ev: &v1::ConvEvent) -> Result<Change, StoreError> {
    let conv = ev.conversation_id.as_str();
    let mut change = Change::default();
    let Some(kind) = &ev.kind else {
        return Ok(change);
    };
    match kind {
        Kind::Created(c) => {
            tx.put(key(KIND, &[conv.as_bytes()]), vec![c.kind as u8]);
            for m in &c.members {
                join(tx, conv, &m.user_id, m.role, ev.conv_seq, &mut change);
            }
        }
        Kind::MemberAdded(a) => join(tx, conv, &a.user_id, a.role, ev.conv_seq, &mut change),
        Kind::MembersAdded(a) => {
            for m in &a.members {
                join(tx, conv, &m.user_id, m.role, ev.conv_seq, &mut change);
            }
        }
        Kind::MemberRemoved(r) => leave(tx, conv, &r.user_id, &mut change)?,
        Kind::MemberLeft(_) => leave(tx, conv, &ev.actor, &mut change)?,
        Kind::RoleChanged(r) => update(tx, conv, &r.user_id, |m| m.role = r.role)?,
        Kind::OwnershipTransferred(t) => {
            update(tx, conv, &ev.actor, |m| m.role = v1::Role::Admin as i32)?;
            update(tx, conv, &t.user_id, |m| m.role = v1::Role::Owner as i32)?;
        }
        Kind::Muted(m) => update(tx, conv, &m.user_id, |r| r.muted_until_ms = m.until_ms)?,
        Kind::Unmuted(u) => update(tx, conv, &u.user_id, |r| r.muted_until_ms = 0)?,
        Kind::Blacklisted(b) => {
            tx.put(
                key(BLACKLIST, &[conv.as_bytes(), b.user_id.as_bytes()]),
                Vec::new(),
            );
            // In a group, blacklisting removes; in a direct conversation it
            // is a block and both stay members.
            if conversation_kind(tx, conv)? != Some(v1::ConversationKind::Direct) {
                leave(tx, conv, &b.user_id, &mut change)?;
            }
        }
        Kind::Unblacklisted(u) => {
            tx.delete(key(BLACKLIST, &[conv.as_bytes(), u.user_id.as_bytes()]));
        }
        Kind::MessageSent(_) | Kind::MessageRecalled(_) | Kind::MessageEdited(_) => {}
        Kind::ProfileUpdated(_)
        | Kind::PushRegistered(_)
        | Kind::PushUnregistered(_)
        | Kind::NotifyMuted(_)
        | Kind::UserErased(_)
        | Kind::PrivacyChanged(_)
        | Kind::ContactRequested(_)
        | Kind::ContactAccepted(_)
        | Kind::ContactDeclined(_)
        | Kind::ContactRemoved(_)
        | Kind::UserBlocked(_)
        | Kind::UserUnblocked(_) => {}
    }
    Ok(change)
}
