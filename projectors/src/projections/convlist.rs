//! `convlist`: a user's conversations ordered by last activity, with the
//! last message's preview, ordered when asked.
//!
//! Per event one row is written whatever the group's size: the
//! conversation's summary `s<conv>` (last seq, activity, preview). Per
//! member, the index row `a<user>\0<conv>` changes only when they join or
//! leave. A page reads the user's index (at most `CONVERSATIONS_SCAN_MAX`),
//! each summary, and sorts. Unread counts are joined in at query time from
//! the `unread` projection.

use im_schema::v1::{self, conv_event::Kind, message_sent::Body};

use super::unread::CONVERSATIONS_SCAN_MAX;
use super::{membership, Effect, FoldCtx, Input, Projection};
use crate::keys::{key, last_part, prefix, prefix_end};
use crate::store::{Keyspace, StoreError};
use crate::tx::Tx;

/// `s<conv>` -> the conversation's ConvListEntry.
pub const SUMMARY: u8 = b's';
/// `a<user>\0<conv>` -> empty: the user's conversations.
pub const ENTRY: u8 = b'a';

/// Preview length in characters: enough for a list row.
pub const PREVIEW_CHARS_MAX: usize = 100;

/// Most items one page returns.
pub const PAGE_MAX: u32 = 200;

pub struct ConvList;

fn entry_key(user: &str, conv: &str) -> Vec<u8> {
    key(ENTRY, &[user.as_bytes(), conv.as_bytes()])
}

fn summary_key(conv: &str) -> Vec<u8> {
    key(SUMMARY, &[conv.as_bytes()])
}

fn preview_of(text: &str) -> String {
    text.chars().take(PREVIEW_CHARS_MAX).collect()
}

/// What a message's body shows in the list.
pub(crate) fn preview_of_body(body: Option<&Body>) -> String {
    match body {
        Some(Body::Text(t)) => preview_of(t),
        Some(Body::Media(media)) => format!("[{}]", media.mime),
        None => String::new(),
    }
}

/// The summary after `ev`.
fn summarize(mut s: v1::ConvListEntry, ev: &v1::ConvEvent) -> v1::ConvListEntry {
    s.last_seq = ev.conv_seq;
    // Writers' clocks may differ slightly: activity never goes back.
    s.last_activity_ms = s.last_activity_ms.max(ev.at_ms);
    match &ev.kind {
        Some(Kind::Created(c)) => {
            s.kind = c.kind;
            s.title = c.title.clone();
        }
        Some(Kind::MessageSent(m)) => {
            s.preview = preview_of_body(m.body.as_ref());
            s.preview_sealed = m.sealed.clone();
            s.preview_sender = ev.actor.clone();
            s.preview_seq = ev.conv_seq;
        }
        Some(Kind::MessageRecalled(r)) if r.target_conv_seq == s.preview_seq => {
            s.preview = "[recalled]".into();
            s.preview_sealed = None;
        }
        Some(Kind::MessageEdited(e)) if e.target_conv_seq == s.preview_seq => {
            s.preview = preview_of(&e.text);
            s.preview_sealed = e.sealed.clone();
        }
        _ => {}
    }
    s
}

impl Projection for ConvList {
    fn name(&self) -> &'static str {
        "convlist"
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
        // A user's or a pair's log is no conversation to list.
        if im_streams::ids::is_people_log(conv) {
            return Ok(Vec::new());
        }
        let change = membership::fold(tx, ev, ctx)?;
        let before = tx
            .get_msg::<v1::ConvListEntry>(&summary_key(conv))?
            .unwrap_or_else(|| v1::ConvListEntry {
                conversation_id: conv.to_string(),
                ..Default::default()
            });
        tx.put_msg(summary_key(conv), &summarize(before, ev));
        for user in &change.left {
            tx.delete(entry_key(user, conv));
        }
        for user in &change.joined {
            tx.put(entry_key(user, conv), Vec::new());
        }
        Ok(Vec::new())
    }
}

/// Orders most recent first (ties by conversation id).
fn order_key(e: &v1::ConvListEntry) -> (std::cmp::Reverse<i64>, std::cmp::Reverse<&str>) {
    (
        std::cmp::Reverse(e.last_activity_ms),
        std::cmp::Reverse(e.conversation_id.as_str()),
    )
}

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
    let p = prefix(ENTRY, &[user.as_bytes()]);
    let rows = ks.range(&p, &prefix_end(&p), false, CONVERSATIONS_SCAN_MAX)?;
    let tx = Tx::new(ks);
    let mut entries = Vec::new();
    for (k, _) in &rows {
        let conv = last_part(k);
        if !keep(&conv) {
            continue;
        }
        if let Some(e) = tx.get_msg::<v1::ConvListEntry>(&summary_key(&conv))? {
            entries.push(e);
        }
    }
    let cursor = before.map(|(ms, conv)| (std::cmp::Reverse(ms), std::cmp::Reverse(conv)));
    entries.retain(|e| cursor.is_none_or(|c| order_key(e) > c));
    entries.sort_by(|a, b| order_key(a).cmp(&order_key(b)));
    let has_more = entries.len() > limit;
    entries.truncate(limit);
    Ok((entries, has_more))
}
