//! `receipts`: (conv, user) -> delivered and read cursors (maxima, so
//! duplicates and replays are harmless), answering "delivered to / read by
//! whom" for any seq. Cursor changes go to the conversation's other members.

use im_schema::v1::{self, receipt_event};

use super::{membership, Effect, FoldCtx, Input, Projection};
use crate::keys::key;
use crate::store::{Keyspace, StoreError};
use crate::tx::Tx;

/// `R<conv>\0<user>` -> ReceiptCursors.
pub const CURSORS: u8 = b'R';

pub struct Receipts;

fn cursors_key(conv: &str, user: &str) -> Vec<u8> {
    key(CURSORS, &[conv.as_bytes(), user.as_bytes()])
}

impl Projection for Receipts {
    fn name(&self) -> &'static str {
        "receipts"
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
        let event = match input {
            Input::Conv(stored) => {
                membership::fold(tx, &stored.event, ctx)?;
                return Ok(Vec::new());
            }
            Input::Rcpt { event, .. } => event,
        };
        let (conv, user) = (event.conversation_id.as_str(), event.user_id.as_str());
        let k = cursors_key(conv, user);
        let mut c = tx.get_msg::<v1::ReceiptCursors>(&k)?.unwrap_or_default();
        let (kind, up_to) = match &event.kind {
            Some(receipt_event::Kind::Delivered(d)) => (v1::ReceiptKind::Delivered, d.up_to_seq),
            Some(receipt_event::Kind::Read(r)) => (v1::ReceiptKind::Read, r.up_to_seq),
            None => return Ok(Vec::new()),
        };
        let before = c;
        // Read implies delivered.
        c.delivered_seq = c.delivered_seq.max(up_to);
        if kind == v1::ReceiptKind::Read {
            c.read_seq = c.read_seq.max(up_to);
        }
        if c == before {
            return Ok(Vec::new());
        }
        tx.put_msg(k, &c);
        if !ctx.effects {
            return Ok(Vec::new());
        }
        let members = ctx.members.get(tx, conv)?;
        // A large group's members are not told each other's receipts: that
        // would cost per member for every read (the sender's own message
        // status comes from their reads of it, not from a broadcast).
        if members.len() > ctx.large_above {
            return Ok(Vec::new());
        }
        let users = members.iter().filter(|u| *u != user).cloned().collect();
        Ok(vec![Effect::Receipt {
            users,
            update: v1::ReceiptUpdate {
                conversation_id: conv.to_string(),
                user_id: user.to_string(),
                device_id: event.device_id.clone(),
                kind: kind as i32,
                up_to_seq: up_to,
            },
        }])
    }
}

/// Each member's cursors, and who has `seq` delivered / read.
pub fn for_seq(ks: &dyn Keyspace, conv: &str, at: u64) -> Result<v1::ReceiptsResult, StoreError> {
    let tx = Tx::new(ks);
    let mut out = v1::ReceiptsResult::default();
    for user in membership::user_ids(&tx, conv)? {
        let c = tx
            .get_msg::<v1::ReceiptCursors>(&cursors_key(conv, &user))?
            .unwrap_or_default();
        if c.delivered_seq >= at {
            out.delivered_to.push(user.clone());
        }
        if c.read_seq >= at {
            out.read_by.push(user.clone());
        }
        out.members.push(v1::UserCursors {
            user_id: user,
            delivered_seq: c.delivered_seq,
            read_seq: c.read_seq,
        });
    }
    Ok(out)
}
