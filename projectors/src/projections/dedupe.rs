//! `dedupe`: (sender, client_msg_id, conv) -> (conv, conv_seq, stream_seq),
//! so a retry outside JetStream's duplicate window still gets the original
//! ack. The conversation is part of the key so that partitions never share
//! a key (the same client_msg_id in two conversations is two entries).

use im_schema::v1;

use super::{Effect, FoldCtx, Input, Projection};
use crate::keys::key;
use crate::store::{Keyspace, StoreError};
use crate::tx::Tx;

pub const RECORD: u8 = b'd';

pub struct Dedupe;

fn record_key(sender: &str, client_msg_id: &str, conv: &str) -> Vec<u8> {
    key(
        RECORD,
        &[sender.as_bytes(), client_msg_id.as_bytes(), conv.as_bytes()],
    )
}

impl Projection for Dedupe {
    fn name(&self) -> &'static str {
        "dedupe"
    }

    fn apply(
        &self,
        tx: &mut Tx,
        input: &Input,
        _ctx: &mut FoldCtx,
    ) -> Result<Vec<Effect>, StoreError> {
        let Input::Conv(stored) = input else {
            return Ok(Vec::new());
        };
        let ev = &stored.event;
        // Only a command's last event says it was stored: earlier ones carry
        // a `:<i>` suffix on their msg id (an event restored without one
        // counts as last), so a half-stored command is never called stored.
        if !stored.msg_id.is_empty() && !is_primary(&stored.msg_id, ev) {
            return Ok(Vec::new());
        }
        tx.put_msg(
            record_key(&ev.actor, &ev.client_msg_id, &ev.conversation_id),
            &v1::DedupeRecord {
                conversation_id: ev.conversation_id.clone(),
                conv_seq: ev.conv_seq,
                stream_seq: stored.stream_seq,
            },
        );
        Ok(Vec::new())
    }
}

/// Whether `msg_id` is the `<actor>:<client_msg_id>` a command's last event
/// carries.
fn is_primary(msg_id: &str, ev: &v1::ConvEvent) -> bool {
    msg_id
        .strip_prefix(ev.actor.as_str())
        .and_then(|rest| rest.strip_prefix(':'))
        == Some(ev.client_msg_id.as_str())
}

pub fn lookup(
    ks: &dyn Keyspace,
    sender: &str,
    client_msg_id: &str,
    conv: &str,
) -> Result<Option<v1::DedupeRecord>, StoreError> {
    Tx::new(ks).get_msg(&record_key(sender, client_msg_id, conv))
}
