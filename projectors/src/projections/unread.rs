//! `unread`: (user, conv) -> last_read_seq and unread count; user -> total.
//!
//! Counts message events by others with conv_seq above both the user's read
//! cursor and the seq at which they joined; recalled messages stop counting.
//! The two streams may be folded in any interleaving (live, rebuild, split
//! partitions) and give the same counts, because each row always equals
//! #{messages s known here : s > max(joined, last_read), sender != user,
//! not recalled}: a read subtracts only messages already folded, and a
//! message at or below a known cursor is never added.

use im_schema::v1::{self, conv_event::Kind, receipt_event};

use super::{membership, Effect, Input, Projection};
use crate::keys::{key, last_part, prefix, prefix_end, seq};
use crate::store::{Keyspace, StoreError};
use crate::tx::Tx;

/// `r<user>\0<conv>` -> UnreadRow (members only).
pub const ROW: u8 = b'r';
/// `x<conv>\0<seq>` -> MessageMark: the messages reads count against.
pub const MARK: u8 = b'x';
/// `q<conv>\0<user>` -> read cursor (u64), kept apart from membership so a
/// cursor folded before the join it follows is not lost.
pub const CURSOR: u8 = b'q';

pub struct Unread;

fn row_key(user: &str, conv: &str) -> Vec<u8> {
    key(ROW, &[user.as_bytes(), conv.as_bytes()])
}

fn mark_key(conv: &str, s: u64) -> Vec<u8> {
    key(MARK, &[conv.as_bytes(), &seq(s)])
}

fn cursor(tx: &Tx, conv: &str, user: &str) -> Result<u64, StoreError> {
    Ok(tx
        .get(&key(CURSOR, &[conv.as_bytes(), user.as_bytes()]))?
        .and_then(|v| v.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

fn counts(row: &v1::UnreadRow, s: u64) -> bool {
    s > row.joined_seq && s > row.last_read_seq
}

impl Unread {
    fn on_conv(&self, tx: &mut Tx, ev: &v1::ConvEvent) -> Result<(), StoreError> {
        let conv = ev.conversation_id.as_str();
        let change = membership::fold(tx, ev)?;
        for u in &change.left {
            tx.delete(row_key(u, conv));
        }
        for u in &change.joined {
            let row = v1::UnreadRow {
                joined_seq: ev.conv_seq,
                last_read_seq: cursor(tx, conv, u)?,
                unread: 0,
            };
            tx.put_msg(row_key(u, conv), &row);
        }
        let (target, delta, sender) = match &ev.kind {
            Some(Kind::MessageSent(_)) => {
                tx.put_msg(
                    mark_key(conv, ev.conv_seq),
                    &v1::MessageMark {
                        sender: ev.actor.clone(),
                        recalled: false,
                    },
                );
                (ev.conv_seq, 1i64, ev.actor.clone())
            }
            Some(Kind::MessageRecalled(r)) => {
                let k = mark_key(conv, r.target_conv_seq);
                match tx.get_msg::<v1::MessageMark>(&k)? {
                    Some(mut mark) if !mark.recalled => {
                        mark.recalled = true;
                        tx.put_msg(k, &mark);
                        (r.target_conv_seq, -1, mark.sender)
                    }
                    _ => return Ok(()),
                }
            }
            _ => return Ok(()),
        };
        for user in membership::user_ids(tx, conv)? {
            if user == sender {
                continue;
            }
            let k = row_key(&user, conv);
            if let Some(mut row) = tx.get_msg::<v1::UnreadRow>(&k)? {
                if counts(&row, target) {
                    row.unread = row.unread.saturating_add_signed(delta);
                    tx.put_msg(k, &row);
                }
            }
        }
        Ok(())
    }

    fn on_read(&self, tx: &mut Tx, conv: &str, user: &str, up_to: u64) -> Result<(), StoreError> {
        let old = cursor(tx, conv, user)?;
        if up_to <= old {
            return Ok(());
        }
        tx.put(
            key(CURSOR, &[conv.as_bytes(), user.as_bytes()]),
            up_to.to_be_bytes().to_vec(),
        );
        let k = row_key(user, conv);
        let Some(mut row) = tx.get_msg::<v1::UnreadRow>(&k)? else {
            return Ok(());
        };
        let from = row.last_read_seq.max(row.joined_seq) + 1;
        if up_to >= from {
            let marks = tx.scan_range(&mark_key(conv, from), &mark_key(conv, up_to + 1))?;
            let read = marks
                .iter()
                .filter_map(|(_, v)| prost::Message::decode(v.as_slice()).ok())
                .filter(|m: &v1::MessageMark| !m.recalled && m.sender != user)
                .count() as u64;
            row.unread = row.unread.saturating_sub(read);
        }
        row.last_read_seq = row.last_read_seq.max(up_to);
        tx.put_msg(k, &row);
        Ok(())
    }
}

impl Projection for Unread {
    fn name(&self) -> &'static str {
        "unread"
    }

    fn reads_receipts(&self) -> bool {
        true
    }

    fn apply(&self, tx: &mut Tx, input: &Input) -> Result<Vec<Effect>, StoreError> {
        match input {
            Input::Conv(stored) => self.on_conv(tx, &stored.event)?,
            Input::Rcpt { event, .. } => {
                if let Some(receipt_event::Kind::Read(r)) = &event.kind {
                    self.on_read(tx, &event.conversation_id, &event.user_id, r.up_to_seq)?;
                }
            }
        }
        Ok(Vec::new())
    }
}

/// A user's unread counts: one conversation, or all of theirs here.
pub fn for_user(
    ks: &dyn Keyspace,
    user: &str,
    conv: Option<&str>,
) -> Result<v1::UnreadResult, StoreError> {
    let rows = match conv {
        Some(c) => {
            let k = row_key(user, c);
            ks.get(&k)?.map(|v| (k, v)).into_iter().collect()
        }
        None => {
            let p = prefix(ROW, &[user.as_bytes()]);
            ks.range(&p, &prefix_end(&p), false, usize::MAX)?
        }
    };
    let mut out = v1::UnreadResult::default();
    for (k, v) in rows {
        let row: v1::UnreadRow = crate::store::decode_value(&k, &v)?;
        out.total += row.unread;
        out.conversations.push(v1::UnreadCount {
            conversation_id: last_part(&k),
            last_read_seq: row.last_read_seq,
            unread: row.unread,
        });
    }
    Ok(out)
}
