//! `members`: conv -> members (role, mute-until), blacklist, and the
//! conversation record with its version; user -> conversations.

use im_schema::v1::{self, conv_event::Kind};

use super::{membership, Effect, FoldCtx, Input, Projection};
use crate::keys::{key, last_part, prefix, prefix_end};
use crate::store::{Keyspace, StoreError};
use crate::tx::Tx;

pub const CONVERSATION: u8 = b'c';
pub const USER_CONV: u8 = b'u';

pub struct Members;

fn conv_key(conv: &str) -> Vec<u8> {
    key(CONVERSATION, &[conv.as_bytes()])
}

impl Projection for Members {
    fn name(&self) -> &'static str {
        "members"
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
        Ok(Vec::new())
    }
}

/// The conversation record, members and blacklist.
pub fn members_of(ks: &dyn Keyspace, conv: &str) -> Result<Option<v1::MembersResult>, StoreError> {
    let tx = Tx::new(ks);
    let Some(conversation) = tx.get_msg::<v1::ConversationRecord>(&conv_key(conv))? else {
        return Ok(None);
    };
    Ok(Some(v1::MembersResult {
        conversation: Some(conversation),
        members: membership::list(&tx, conv)?,
        blacklist: membership::blacklist(&tx, conv)?,
    }))
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
