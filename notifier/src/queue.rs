//! `notify`: the projection the notifier runs beside `members` and
//! `unread` in its own store (not a function of the log alone: what it
//! queues depends on when it folds, and the decider takes rows out; so
//! never rebuilt, `keeps_own_rows`). Per message, O(1) rows whatever the group's
//! size: `Q<stream seq>` (what may wake someone, in log order) and
//! `I<conv>\0<conv_seq>` (its stream seq, so an edit or a recall inside
//! the debounce finds it). The decider (`decide.rs`) takes a due window's
//! rows out under the projection's batch lock, in the same commit as the
//! notifications it makes (`O` rows), so a fold never writes back a row
//! that was taken.

use im_projectors::keys::{key, seq};
use im_projectors::projections::{Effect, FoldCtx, Input, Projection};
use im_projectors::store::StoreError;
use im_projectors::tx::Tx;
use im_schema::v1::{self, conv_event::Kind, message_sent::Body};

/// The projection's name.
pub const NAME: &str = "notify";
/// `Q<stream seq>` -> NotifyQueued.
pub const QUEUED: u8 = b'Q';
/// `I<conv>\0<conv_seq>` -> stream seq (u64 BE) of a queued message.
pub const INDEX: u8 = b'I';

/// Characters of a message kept for a preview: a lock screen shows two
/// lines; the rest of a long message is not kept.
pub const PREVIEW_CHARS_MAX: usize = 200;

/// Folds messages into the queue; one sent longer than `late_max_ms`
/// before it is folded (a first start over an old log, a store rebuilt
/// after a quarantine) is not queued: it would wake nobody (`late_max`).
pub struct Notify {
    pub late_max_ms: i64,
}

pub fn queued_key(stream_seq: u64) -> Vec<u8> {
    let mut k = vec![QUEUED];
    k.extend_from_slice(&seq(stream_seq));
    k
}

pub fn index_key(conv: &str, conv_seq: u64) -> Vec<u8> {
    key(INDEX, &[conv.as_bytes(), &seq(conv_seq)])
}

fn preview(text: &str) -> String {
    text.chars().take(PREVIEW_CHARS_MAX).collect()
}

/// A preview of a message's body: its text, or a media message's name.
fn preview_of_body(
    body: Option<&Body>,
    meta: &std::collections::BTreeMap<String, String>,
) -> (String, bool) {
    match body {
        Some(Body::Text(t)) => (preview(t), false),
        Some(Body::Media(_)) => (
            preview(meta.get("name").map(String::as_str).unwrap_or("")),
            true,
        ),
        None => (String::new(), false),
    }
}

/// The preview of opened content (`opening.rs`).
pub fn preview_of_content(c: &v1::Content) -> (String, bool) {
    let body = c.body.clone().map(im_streams::content::message_body);
    preview_of_body(body.as_ref(), &c.meta)
}

fn queued_of(ev: &v1::ConvEvent, sent: &v1::MessageSent) -> v1::NotifyQueued {
    let (text, media) = preview_of_body(sent.body.as_ref(), &sent.meta);
    v1::NotifyQueued {
        sealed: sent.sealed.clone(),
        conversation_id: ev.conversation_id.clone(),
        conv_seq: ev.conv_seq,
        at_ms: ev.at_ms,
        sender: ev.actor.clone(),
        preview: text,
        media,
    }
}

/// The stream seq a queued message of `conv` is under, if still queued.
fn queued_at(tx: &Tx, conv: &str, conv_seq: u64) -> Result<Option<u64>, StoreError> {
    Ok(tx
        .get(&index_key(conv, conv_seq))?
        .and_then(|v| v.try_into().ok())
        .map(u64::from_be_bytes))
}

impl Projection for Notify {
    fn name(&self) -> &'static str {
        NAME
    }

    fn keeps_own_rows(&self) -> bool {
        true
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
        let conv = ev.conversation_id.as_str();
        if im_streams::ids::is_people_log(conv) {
            return Ok(Vec::new());
        }
        match &ev.kind {
            Some(Kind::MessageSent(_)) if crate::stats::now_ms() - ev.at_ms > self.late_max_ms => {}
            Some(Kind::MessageSent(sent)) => {
                tx.put_msg(queued_key(stored.stream_seq), &queued_of(ev, sent));
                tx.put(
                    index_key(conv, ev.conv_seq),
                    stored.stream_seq.to_be_bytes().to_vec(),
                );
            }
            // Recalled before anyone was woken: nobody will be.
            Some(Kind::MessageRecalled(r)) => {
                if let Some(at) = queued_at(tx, conv, r.target_conv_seq)? {
                    tx.delete(queued_key(at));
                    tx.delete(index_key(conv, r.target_conv_seq));
                }
            }
            Some(Kind::MessageEdited(e)) => {
                if let Some(at) = queued_at(tx, conv, e.target_conv_seq)? {
                    if let Some(mut q) = tx.get_msg::<v1::NotifyQueued>(&queued_key(at))? {
                        q.preview = preview(&e.text);
                        q.sealed = e.sealed.clone();
                        tx.put_msg(queued_key(at), &q);
                    }
                }
            }
            _ => {}
        }
        Ok(Vec::new())
    }
}
