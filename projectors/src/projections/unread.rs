//! `unread`: what each member has not read, counted when asked.
//!
//! Per message one row is written whatever the group's size: a mark
//! `x<conv>\0<seq>` (sender, recalled). Per member, rows change only when
//! they join, leave or read: `r<user>\0<conv>` (joined_seq, last_read_seq)
//! and the read cursor `q<conv>\0<user>`, kept apart from membership so a
//! cursor folded before the join it follows is not lost. A count is the
//! number of marks after max(joined, last read), not by the user, not
//! recalled, exact up to `UNREAD_CAP` (then "at least": clients show
//! "99+"). Both streams may be folded in any interleaving (live, rebuild,
//! split partitions) and give the same rows.

use im_schema::v1::{self, conv_event::Kind, receipt_event};

use super::{membership, Effect, FoldCtx, Input, Projection};
use crate::keys::{key, last_part, prefix, prefix_end, seq};
use crate::store::{Keyspace, StoreError};
use crate::tx::Tx;

/// The projection's name.
pub const NAME: &str = "unread";

/// `r<user>\0<conv>` -> UnreadRow (members only).
pub const ROW: u8 = b'r';
/// `x<conv>\0<seq>` -> MessageMark: the messages counts are made of.
pub const MARK: u8 = b'x';
/// `q<conv>\0<user>` -> read cursor (u64).
pub const CURSOR: u8 = b'q';

/// Unread messages counted exactly; past it a count says "at least this".
/// What a badge shows (99+), and what bounds a count's reads.
pub const UNREAD_CAP: u64 = 99;

/// Marks one count reads at most: the user's own and recalled messages do
/// not count, so a few more than the cap are read before giving up.
pub const UNREAD_SCAN_MAX: usize = 4 * (UNREAD_CAP as usize + 1);

/// A user's conversations one answer looks at (here and in `convlist`):
/// bounds a query's reads; past it the total is "at least".
pub const CONVERSATIONS_SCAN_MAX: usize = 10_000;

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

impl Unread {
    fn on_conv(
        &self,
        tx: &mut Tx,
        ev: &v1::ConvEvent,
        ctx: &mut FoldCtx,
    ) -> Result<(), StoreError> {
        let conv = ev.conversation_id.as_str();
        // A user's or a pair's log has nothing to read.
        if im_streams::ids::is_people_log(conv) {
            return Ok(());
        }
        let change = membership::fold(tx, ev, ctx)?;
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
        match &ev.kind {
            Some(Kind::MessageSent(_)) => tx.put_msg(
                mark_key(conv, ev.conv_seq),
                &v1::MessageMark {
                    sender: ev.actor.clone(),
                    recalled: false,
                },
            ),
            Some(Kind::MessageRecalled(r)) => {
                let k = mark_key(conv, r.target_conv_seq);
                if let Some(mut mark) = tx.get_msg::<v1::MessageMark>(&k)? {
                    mark.recalled = true;
                    tx.put_msg(k, &mark);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn on_read(&self, tx: &mut Tx, conv: &str, user: &str, up_to: u64) -> Result<(), StoreError> {
        if up_to <= cursor(tx, conv, user)? {
            return Ok(());
        }
        tx.put(
            key(CURSOR, &[conv.as_bytes(), user.as_bytes()]),
            up_to.to_be_bytes().to_vec(),
        );
        let k = row_key(user, conv);
        if let Some(mut row) = tx.get_msg::<v1::UnreadRow>(&k)? {
            row.last_read_seq = row.last_read_seq.max(up_to);
            tx.put_msg(k, &row);
        }
        Ok(())
    }
}

impl Projection for Unread {
    fn name(&self) -> &'static str {
        NAME
    }

    fn reads_receipts(&self) -> bool {
        true
    }

    fn apply(
        &self,
        tx: &mut Tx,
        input: &Input,
        ctx: &mut FoldCtx,
    ) -> Result<Vec<Effect>, StoreError> {
        match input {
            Input::Conv(stored) => self.on_conv(tx, &stored.event, ctx)?,
            Input::Rcpt { event, .. } => {
                if let Some(receipt_event::Kind::Read(r)) = &event.kind {
                    self.on_read(tx, &event.conversation_id, &event.user_id, r.up_to_seq)?;
                }
            }
        }
        Ok(Vec::new())
    }
}

/// A count: exact when `capped` is false, else "at least `unread`".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub unread: u64,
    pub capped: bool,
}

/// What `user` has not read in `conv`, given their row.
fn count(
    ks: &dyn Keyspace,
    conv: &str,
    user: &str,
    row: &v1::UnreadRow,
) -> Result<Count, StoreError> {
    let from = row.joined_seq.max(row.last_read_seq) + 1;
    let p = prefix(MARK, &[conv.as_bytes()]);
    let marks = ks.range(
        &mark_key(conv, from),
        &prefix_end(&p),
        false,
        UNREAD_SCAN_MAX,
    )?;
    let mut n = 0u64;
    for (k, v) in &marks {
        let mark: v1::MessageMark = crate::store::decode_value(k, v)?;
        if mark.recalled || mark.sender == user {
            continue;
        }
        n += 1;
        if n > UNREAD_CAP {
            return Ok(Count {
                unread: UNREAD_CAP,
                capped: true,
            });
        }
    }
    Ok(Count {
        unread: n,
        capped: marks.len() == UNREAD_SCAN_MAX,
    })
}

/// Where `user` stands in `conv` (joined at, read up to), if a member.
pub fn row_of(
    ks: &dyn Keyspace,
    user: &str,
    conv: &str,
) -> Result<Option<v1::UnreadRow>, StoreError> {
    Tx::new(ks).get_msg(&row_key(user, conv))
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
            ks.range(&p, &prefix_end(&p), false, CONVERSATIONS_SCAN_MAX)?
        }
    };
    let truncated = rows.len() == CONVERSATIONS_SCAN_MAX;
    let mut out = v1::UnreadResult {
        total_capped: truncated,
        ..Default::default()
    };
    for (k, v) in rows {
        let row: v1::UnreadRow = crate::store::decode_value(&k, &v)?;
        let conv = last_part(&k);
        let c = count(ks, &conv, user, &row)?;
        out.total += c.unread;
        out.total_capped |= c.capped;
        out.conversations.push(v1::UnreadCount {
            conversation_id: conv,
            last_read_seq: row.last_read_seq,
            unread: c.unread,
            capped: c.capped,
        });
    }
    Ok(out)
}
