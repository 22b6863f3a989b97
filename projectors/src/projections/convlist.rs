//! `convlist`: user -> conversations ordered by last activity, with the
//! last message's preview. Unread counts are joined in at query time from the
//! `unread` projection.

use im_schema::v1::{self, conv_event::Kind, message_sent::Body};

use super::{membership, Effect, Input, Projection};
use crate::keys::{key, last_part, prefix, prefix_end, seq};
use crate::store::{Keyspace, StoreError};
use crate::tx::Tx;

/// `s<conv>` -> the conversation's current entry, copied to each member.
pub const SUMMARY: u8 = b's';
/// `a<user>\0<conv>` -> ConvListEntry.
pub const ENTRY: u8 = b'a';
/// `o<user>\0<MAX - last_activity>\0<conv>`: most recent first.
pub const ORDER: u8 = b'o';

/// Preview length in characters: enough for a list row.
pub const PREVIEW_CHARS_MAX: usize = 100;

/// Most items one page returns.
pub const PAGE_MAX: u32 = 200;

pub struct ConvList;

fn order_key(user: &str, activity_ms: i64, conv: &str) -> Vec<u8> {
    let inverted = u64::MAX - activity_ms.max(0) as u64;
    key(ORDER, &[user.as_bytes(), &seq(inverted), conv.as_bytes()])
}

fn entry_key(user: &str, conv: &str) -> Vec<u8> {
    key(ENTRY, &[user.as_bytes(), conv.as_bytes()])
}

fn preview_of(text: &str) -> String {
    text.chars().take(PREVIEW_CHARS_MAX).collect()
}

impl Projection for ConvList {
    fn name(&self) -> &'static str {
        "convlist"
    }

    fn apply(&self, tx: &mut Tx, input: &Input) -> Result<Vec<Effect>, StoreError> {
        let Input::Conv(stored) = input else {
            return Ok(Vec::new());
        };
        let ev = &stored.event;
        let conv = ev.conversation_id.as_str();
        let change = membership::fold(tx, ev)?;
        let summary_key = key(SUMMARY, &[conv.as_bytes()]);
        let mut s = tx
            .get_msg::<v1::ConvListEntry>(&summary_key)?
            .unwrap_or_else(|| v1::ConvListEntry {
                conversation_id: conv.to_string(),
                ..Default::default()
            });
        s.last_seq = ev.conv_seq;
        // Writers' clocks may differ slightly: activity never goes back.
        s.last_activity_ms = s.last_activity_ms.max(ev.at_ms);
        match &ev.kind {
            Some(Kind::Created(c)) => {
                s.kind = c.kind;
                s.title = c.title.clone();
            }
            Some(Kind::MessageSent(m)) => {
                s.preview = match &m.body {
                    Some(Body::Text(t)) => preview_of(t),
                    Some(Body::Media(media)) => format!("[{}]", media.mime),
                    None => String::new(),
                };
                s.preview_sender = ev.actor.clone();
                s.preview_seq = ev.conv_seq;
            }
            Some(Kind::MessageRecalled(r)) if r.target_conv_seq == s.preview_seq => {
                s.preview = "[recalled]".into();
            }
            Some(Kind::MessageEdited(e)) if e.target_conv_seq == s.preview_seq => {
                s.preview = preview_of(&e.text);
            }
            _ => {}
        }
        tx.put_msg(summary_key, &s);
        for user in &change.left {
            if let Some(old) = tx.get_msg::<v1::ConvListEntry>(&entry_key(user, conv))? {
                tx.delete(order_key(user, old.last_activity_ms, conv));
            }
            tx.delete(entry_key(user, conv));
        }
        for user in membership::user_ids(tx, conv)? {
            if let Some(old) = tx.get_msg::<v1::ConvListEntry>(&entry_key(&user, conv))? {
                tx.delete(order_key(&user, old.last_activity_ms, conv));
            }
            tx.put_msg(entry_key(&user, conv), &s);
            tx.put(order_key(&user, s.last_activity_ms, conv), Vec::new());
        }
        Ok(Vec::new())
    }
}

/// Index rows read per round while filtering a page.
const SCAN_CHUNK: usize = 256;

/// A page of a user's conversations, most recent first, after the cursor
/// `(before_activity_ms, before_conv)` when given, keeping only the
/// conversations `keep` accepts (a partition's, for a partition query).
pub fn page(
    ks: &dyn Keyspace,
    user: &str,
    limit: u32,
    before: Option<(i64, &str)>,
    keep: &dyn Fn(&str) -> bool,
) -> Result<(Vec<v1::ConvListEntry>, bool), StoreError> {
    let limit = limit.clamp(1, PAGE_MAX) as usize;
    let p = prefix(ORDER, &[user.as_bytes()]);
    let end = prefix_end(&p);
    let mut start = match before {
        // Just past the cursor's own key.
        Some((ts, conv)) => {
            let mut k = order_key(user, ts, conv);
            k.push(0);
            k
        }
        None => p.clone(),
    };
    let tx = Tx::new(ks);
    let mut out = Vec::with_capacity(limit);
    // Bounded by the user's conversations: each round reads a chunk or ends.
    loop {
        let rows = ks.range(&start, &end, false, SCAN_CHUNK)?;
        for (k, _) in &rows {
            let conv = last_part(k);
            if !keep(&conv) {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            if let Some(e) = tx.get_msg::<v1::ConvListEntry>(&entry_key(user, &conv))? {
                out.push(e);
            }
        }
        match rows.last() {
            Some((k, _)) if rows.len() == SCAN_CHUNK => {
                start = k.clone();
                start.push(0);
            }
            _ => return Ok((out, false)),
        }
    }
}
