//! `members`: conv -> members (role, mute-until), blacklist, and the
//! conversation record with its version; user -> conversations. It also
//! keeps what else the rules decide on — the recent-message index and the
//! chain head — so a conversation's whole rules state (`ConvState`) can be
//! read back at its version (`rules_state`): the projector's judge starts
//! from it, and a cold writer asks for it instead of reading the history.

use im_schema::v1::{self, conv_event::Kind};
use im_streams::conversation::MESSAGE_INDEX_MAX;
use im_streams::conversation::{ConvKind, ConvState, MemberState, MessageMeta, Role};

use super::{membership, Effect, FoldCtx, Input, Projection};
use crate::keys::{key, last_part, prefix, prefix_end, seq, seq_suffix};
use crate::store::{Keyspace, StoreError};
use crate::tx::Tx;

/// The projection's name, which the judge looks its rows up by.
pub const NAME: &str = "members";

pub const CONVERSATION: u8 = b'c';
pub const USER_CONV: u8 = b'u';
/// `i<conv>\0<conv_seq>` -> RecentMessage: the rules' index of the
/// `MESSAGE_INDEX_MAX` most recent messages.
pub const RECENT: u8 = b'i';
/// `n<conv>` -> how many `RECENT` rows the conversation has (u32, BE) and
/// the oldest one's conv_seq (u64, BE).
pub const RECENT_COUNT: u8 = b'n';

pub struct Members;

fn conv_key(conv: &str) -> Vec<u8> {
    key(CONVERSATION, &[conv.as_bytes()])
}

impl Projection for Members {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply(
        &self,
        tx: &mut Tx,
        input: &Input,
        ctx: &mut FoldCtx,
    ) -> Result<Vec<Effect>, StoreError> {
        let Input::Conv(stored) = input else {
            return Ok(Vec::new());
        };
        let ev = &stored.event;
        let conv = ev.conversation_id.as_str();
        let change = membership::fold(tx, ev, ctx)?;
        let mut rec = tx
            .get_msg::<v1::ConversationRecord>(&conv_key(conv))?
            .unwrap_or_else(|| v1::ConversationRecord {
                conversation_id: conv.to_string(),
                ..Default::default()
            });
        if let Some(Kind::Created(c)) = &ev.kind {
            rec.kind = c.kind;
            rec.title = c.title.clone();
        }
        rec.version = stored.stream_seq;
        rec.last_seq = ev.conv_seq;
        rec.last_activity_ms = rec.last_activity_ms.max(ev.at_ms);
        rec.member_count = (rec.member_count as usize + change.joined.len())
            .saturating_sub(change.left.len()) as u32;
        tx.put_msg(conv_key(conv), &rec);
        for u in &change.joined {
            tx.put(key(USER_CONV, &[u.as_bytes(), conv.as_bytes()]), Vec::new());
        }
        for u in &change.left {
            tx.delete(key(USER_CONV, &[u.as_bytes(), conv.as_bytes()]));
        }
        fold_recent(tx, ev)?;
        super::people::fold(tx, stored)?;
        Ok(Vec::new())
    }
}

fn recent_key(conv: &str, conv_seq: u64) -> Vec<u8> {
    key(RECENT, &[conv.as_bytes(), &seq(conv_seq)])
}

fn recent_count_key(conv: &str) -> Vec<u8> {
    key(RECENT_COUNT, &[conv.as_bytes()])
}

/// Keeps the recent-message index as `im_rules::conversation::apply` keeps
/// it: a message is added (the oldest dropped past the bound), a recall
/// marks its target. O(1) writes per event.
fn fold_recent(tx: &mut Tx, ev: &v1::ConvEvent) -> Result<(), StoreError> {
    let conv = ev.conversation_id.as_str();
    match &ev.kind {
        Some(Kind::MessageSent(_)) => {
            let row = v1::RecentMessage {
                sender: ev.actor.clone(),
                client_msg_id: ev.client_msg_id.clone(),
                sent_at_ms: ev.at_ms,
                recalled: false,
            };
            tx.put_msg(recent_key(conv, ev.conv_seq), &row);
            let count_key = recent_count_key(conv);
            let (count, oldest) = match tx.get(&count_key)? {
                Some(v) if v.len() == 12 => (
                    u32::from_be_bytes(v[..4].try_into().expect("4 bytes")),
                    u64::from_be_bytes(v[4..].try_into().expect("8 bytes")),
                ),
                _ => (0, ev.conv_seq),
            };
            let (count, oldest) = if count as usize >= MESSAGE_INDEX_MAX {
                let old = recent_key(conv, oldest);
                tx.delete(old.clone());
                let mut after = old;
                after.push(0);
                let end = prefix_end(&prefix(RECENT, &[conv.as_bytes()]));
                let next = tx.first_in(&after, &end)?.map(|(k, _)| seq_suffix(&k));
                (count, next.unwrap_or(ev.conv_seq))
            } else {
                (count + 1, oldest)
            };
            let mut v = count.to_be_bytes().to_vec();
            v.extend_from_slice(&oldest.to_be_bytes());
            tx.put(count_key, v);
        }
        Some(Kind::MessageRecalled(r)) => {
            let k = recent_key(conv, r.target_conv_seq);
            if let Some(mut row) = tx.get_msg::<v1::RecentMessage>(&k)? {
                row.recalled = true;
                tx.put_msg(k, &row);
            }
        }
        _ => {}
    }
    Ok(())
}

/// The conversation's rules state at the version its rows reflect: what
/// `decide` and the judge work from. None when this keyspace did not apply
/// its creation (no event of it, or a keyspace folded from a later
/// sequence, whose rows hold only part of its state).
pub fn rules_state(tx: &Tx, conv: &str) -> Result<Option<ConvState>, StoreError> {
    let Some(rec) = tx.get_msg::<v1::ConversationRecord>(&conv_key(conv))? else {
        return Ok(None);
    };
    if rec.kind == v1::ConversationKind::Unspecified as i32 {
        return Ok(None);
    }
    let head = crate::chain::head(tx, conv)?.ok_or_else(|| StoreError::Corrupt {
        key: format!("H{conv}"),
        detail: "a conversation record without its chain head".into(),
    })?;
    let mut state = ConvState::empty(conv);
    state.kind = Some(ConvKind::from_wire(rec.kind));
    if let Some(row) = tx.get_msg::<v1::PeopleRow>(&key(super::people::ROW, &[conv.as_bytes()]))? {
        state.people = im_streams::people::People::from_row(&row);
    }
    state.title = rec.title;
    state.conv_seq = head.conv_seq;
    state.version = rec.version;
    state.last_hash = head.hash;
    for m in membership::list(tx, conv)? {
        let member = MemberState {
            role: Role::from_wire(m.role),
            muted_until_ms: m.muted_until_ms,
        };
        state.members.insert(m.user_id, member);
    }
    state.blacklist = membership::blacklist(tx, conv)?.into_iter().collect();
    for (k, v) in tx.scan(&prefix(RECENT, &[conv.as_bytes()]))? {
        let row: v1::RecentMessage = crate::store::decode_value(&k, &v)?;
        let meta = MessageMeta {
            sender: row.sender,
            client_msg_id: row.client_msg_id,
            sent_at_ms: row.sent_at_ms,
            recalled: row.recalled,
        };
        state.messages.insert(seq_suffix(&k), meta);
    }
    Ok(Some(state))
}

/// The conversation record, members and blacklist.
/// Members in one answer, at most: 1,000 records (~100 KB) stay far under
/// a NATS message's limit whatever the group's size (100,000 members are
/// 100 pages).
pub const MEMBERS_PAGE_MAX: usize = 1_000;

/// A page of a conversation's members, by user id after `after` (the
/// blacklist with the first page only).
pub fn members_of(
    ks: &dyn Keyspace,
    conv: &str,
    after: &str,
    limit: usize,
) -> Result<Option<v1::MembersResult>, StoreError> {
    let tx = Tx::new(ks);
    let Some(conversation) = tx.get_msg::<v1::ConversationRecord>(&conv_key(conv))? else {
        return Ok(None);
    };
    let limit = if limit == 0 {
        MEMBERS_PAGE_MAX
    } else {
        limit.min(MEMBERS_PAGE_MAX)
    };
    let (members, more) = membership::page(&tx, conv, after, limit)?;
    let next_after = match (more, members.last()) {
        (true, Some(last)) => last.user_id.clone(),
        _ => String::new(),
    };
    Ok(Some(v1::MembersResult {
        conversation: Some(conversation),
        members,
        blacklist: if after.is_empty() {
            membership::blacklist(&tx, conv)?
        } else {
            Vec::new()
        },
        next_after,
    }))
}

/// Every member's id (none for an unknown conversation).
pub fn user_ids_of(ks: &dyn Keyspace, conv: &str) -> Result<Vec<String>, StoreError> {
    membership::user_ids(&Tx::new(ks), conv)
}

/// A user's membership record, if a member.
pub fn role_of(
    ks: &dyn Keyspace,
    conv: &str,
    user: &str,
) -> Result<Option<v1::MemberRecord>, StoreError> {
    membership::get(&Tx::new(ks), conv, user)
}

/// The conversations a user is a member of (in this instance's partitions).
pub fn conversations_of(
    ks: &dyn Keyspace,
    user: &str,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let p = prefix(USER_CONV, &[user.as_bytes()]);
    Ok(ks
        .range(&p, &prefix_end(&p), false, limit)?
        .into_iter()
        .map(|(k, _)| last_part(&k))
        .collect())
}

/// Conversations of one user looked at for its large groups, at most: a
/// user in more is rare, and their gateway then misses the groups past it
/// (they still sync them; live deliveries of those come as the group's
/// next membership change or a reconnect re-reads).
pub const GROUPS_SCAN_MAX: usize = 10_000;

/// A large group's routing state for `users` (those of them who are
/// members), or None for an unknown conversation.
pub fn group_state(
    ks: &dyn Keyspace,
    conv: &str,
    users: &[String],
    large_above: usize,
) -> Result<Option<v1::GroupState>, StoreError> {
    let tx = Tx::new(ks);
    let Some(rec) = tx.get_msg::<v1::ConversationRecord>(&conv_key(conv))? else {
        return Ok(None);
    };
    let mut members = Vec::new();
    for u in users {
        if membership::get(&tx, conv, u)?.is_some() {
            members.push(u.clone());
        }
    }
    Ok(Some(v1::GroupState {
        conversation_id: conv.to_string(),
        members_seq: membership::members_seq(&tx, conv)?,
        last_seq: rec.last_seq,
        position: 0,
        members,
        large: rec.member_count as usize > large_above,
    }))
}

/// The user's conversations above `large_above` members that `in_scope`
/// keeps (one partition's).
pub fn groups_of(
    ks: &dyn Keyspace,
    user: &str,
    large_above: usize,
    in_scope: &dyn Fn(&str) -> bool,
) -> Result<Vec<v1::GroupState>, StoreError> {
    let mut out = Vec::new();
    let one = [user.to_string()];
    for conv in conversations_of(ks, user, GROUPS_SCAN_MAX)? {
        if !in_scope(&conv) {
            continue;
        }
        if let Some(g) = group_state(ks, &conv, &one, large_above)? {
            if g.large {
                out.push(g);
            }
        }
    }
    Ok(out)
}
