//! `history`: (conv, conv_seq) -> event, paged both ways. Recalled messages
//! keep their slot (body dropped, `recalled` set); edits keep the latest text
//! and set `edited`. Its commits trigger the fan-out: a delivery leaves only
//! once the event is in history (I12).

use im_schema::v1::{self, conv_event::Kind, message_sent::Body};

use super::{membership, Effect, FoldCtx, Input, Projection};
use crate::keys::{key, prefix, prefix_end, seq};
use crate::store::{Keyspace, StoreError};
use crate::tx::Tx;

pub const ENTRY: u8 = b'h';

/// Most entries one history page returns.
pub const PAGE_MAX: u32 = 200;

pub struct History;

fn entry_key(conv: &str, conv_seq: u64) -> Vec<u8> {
    key(ENTRY, &[conv.as_bytes(), &seq(conv_seq)])
}

fn update_target(
    tx: &mut Tx,
    conv: &str,
    target: u64,
    f: impl FnOnce(&mut v1::HistoryEntry),
) -> Result<(), StoreError> {
    let k = entry_key(conv, target);
    if let Some(mut entry) = tx.get_msg::<v1::HistoryEntry>(&k)? {
        f(&mut entry);
        tx.put_msg(k, &entry);
    }
    Ok(())
}

fn sent_mut(entry: &mut v1::HistoryEntry) -> Option<&mut v1::MessageSent> {
    match entry.event.as_mut()?.kind.as_mut()? {
        Kind::MessageSent(m) => Some(m),
        _ => None,
    }
}

impl Projection for History {
    fn name(&self) -> &'static str {
        "history"
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
        let members_seq = if ctx.effects {
            membership::members_seq(tx, conv)?
        } else {
            0
        };
        let change = membership::fold(tx, ev, ctx)?;
        match &ev.kind {
            Some(Kind::MessageRecalled(r)) => update_target(tx, conv, r.target_conv_seq, |e| {
                e.recalled = true;
                e.edited_sealed = None;
                if let Some(m) = sent_mut(e) {
                    m.body = None;
                    m.meta.clear();
                    m.sealed = None;
                }
            })?,
            Some(Kind::MessageEdited(ed)) => update_target(tx, conv, ed.target_conv_seq, |e| {
                if e.recalled {
                    return;
                }
                e.edited = true;
                e.edited_at_ms = ev.at_ms;
                if ed.sealed.is_some() {
                    e.edited_sealed = ed.sealed.clone();
                } else if let Some(m) = sent_mut(e) {
                    m.body = Some(Body::Text(ed.text.clone()));
                }
            })?,
            _ => {}
        }
        tx.put_msg(
            entry_key(conv, ev.conv_seq),
            &v1::HistoryEntry {
                event: Some(ev.clone()),
                stream_seq: stored.stream_seq,
                ..Default::default()
            },
        );
        if !ctx.effects {
            return Ok(Vec::new());
        }
        let members = ctx.members.get(tx, conv)?;
        let deliver = v1::Deliver {
            conversation_id: conv.to_string(),
            conv_seq: ev.conv_seq,
            stream_seq: stored.stream_seq,
            event: Some(ev.clone()),
            event_type: im_streams::conversation::event_type(ev).to_string(),
            ..Default::default()
        };
        // A people log's creation is no news: the event that made it follows.
        if let Some(Kind::Created(c)) = &ev.kind {
            if !im_streams::conversation::ConvKind::from_wire(c.kind).is_chat() {
                return Ok(Vec::new());
            }
        }
        // A block, a hidden request and their like reach the actor's
        // devices only.
        if !im_streams::people::other_is_told(ev) {
            let users = vec![ev.actor.clone()];
            let deliver = Box::new(deliver);
            return Ok(vec![Effect::Deliver { users, deliver }]);
        }
        let before = (members.len() + change.left.len()).saturating_sub(change.joined.len());
        let (users, deliver) = if members.len() > ctx.large_above {
            // Once on the group subject, whatever its size; personally only
            // to those whose gateways must learn to join it.
            let users = if before > ctx.large_above {
                change.joined
            } else {
                everyone(&members, change.left)
            };
            let deliver = v1::Deliver {
                members_seq,
                group: true,
                ..deliver
            };
            (users, deliver)
        } else {
            (everyone(&members, change.left), deliver)
        };
        Ok(vec![Effect::Deliver {
            users,
            deliver: Box::new(deliver),
        }])
    }
}

/// Everyone who is a member after the event, and whoever it removed (they
/// learn of their removal), the sender included.
fn everyone(members: &[String], left: Vec<String>) -> Vec<String> {
    let mut users = members.to_vec();
    if !left.is_empty() {
        users.extend(left);
        users.sort();
        users.dedup();
    }
    users
}

/// A page of history: from `from_seq` (inclusive; 0 = the start, or the end
/// when going backward), at most `limit` (capped at `PAGE_MAX`).
pub fn page(
    ks: &dyn Keyspace,
    conv: &str,
    from_seq: u64,
    limit: u32,
    backward: bool,
) -> Result<v1::HistoryPage, StoreError> {
    let limit = limit.clamp(1, PAGE_MAX) as usize;
    let conv_prefix = prefix(ENTRY, &[conv.as_bytes()]);
    let (start, end) = if backward {
        let end = if from_seq == 0 {
            prefix_end(&conv_prefix)
        } else {
            entry_key(conv, from_seq.saturating_add(1))
        };
        (conv_prefix.clone(), end)
    } else {
        (entry_key(conv, from_seq.max(1)), prefix_end(&conv_prefix))
    };
    let rows = ks.range(&start, &end, backward, limit + 1)?;
    let mut entries = Vec::with_capacity(limit);
    for (k, v) in rows.iter().take(limit) {
        entries.push(crate::store::decode_value(k, v)?);
    }
    let next_seq = rows
        .get(limit)
        .map(|(k, _)| crate::keys::seq_suffix(k))
        .unwrap_or(0);
    Ok(v1::HistoryPage { entries, next_seq })
}
