//! `search`: what full-text search finds, as rows the index is built from
//! (`crate::search`): each message's current text (`M<conv>\0<seq>`, gone
//! once recalled), each conversation's title (`T<conv>`: a group's title,
//! a direct conversation's two user ids), each user's display name
//! (`N<user log>`), and, per user and conversation, the conv_seqs they
//! could read (`V<user>\0<conv>`: from each join up to its leave, the same
//! rule as `im-replay who-could-read`). Each change of a text also leaves
//! a queue entry (a bookkeeping key, out of the digest) that the indexer
//! drains into the index.

use im_schema::v1::{self, conv_event::Kind, message_sent::Body};
use im_streams::codec::StoredEvent;
use im_streams::conversation::ConvKind;

use super::{membership, Effect, FoldCtx, Input, Projection};
use crate::keys::{key, prefix, seq, META};
use crate::store::StoreError;
use crate::tx::Tx;

pub const NAME: &str = "search";
pub const DOC: u8 = b'M';
pub const TITLE: u8 = b'T';
pub const USER_NAME: u8 = b'N';
pub const SPANS: u8 = b'V';
/// A queue entry's tag (no row) for a user whose content was erased:
/// the indexer forgets every document they wrote (`UserErased`).
pub const ERASED: u8 = b'E';

/// The queue of changed rows: `META 's' 'q' <stream seq> <row key>`
/// (no value).
pub const QUEUE: [u8; 3] = [META, b's', b'q'];

/// Spans kept per user and conversation: each is a join and a leave (a
/// command each); past this the oldest go, which only narrows what the
/// user finds, never widens it.
pub const SPANS_MAX: usize = 256;

/// Meta keys of a media message that are searched (its file name and
/// caption, as clients set them).
pub const MEDIA_TEXT_KEYS: [&str; 2] = ["name", "caption"];

pub struct Search;

pub fn is_doc_key(k: &[u8]) -> bool {
    matches!(k.first(), Some(&DOC | &TITLE | &USER_NAME))
}

pub fn doc_key(doc: &v1::SearchDoc) -> Vec<u8> {
    let conv = doc.conversation_id.as_bytes();
    match v1::SearchDocKind::try_from(doc.kind) {
        Ok(v1::SearchDocKind::Message) => key(DOC, &[conv, &seq(doc.conv_seq)]),
        Ok(v1::SearchDocKind::Title) => key(TITLE, &[conv]),
        _ => key(USER_NAME, &[conv]),
    }
}

pub fn spans_key(user: &str, conv: &str) -> Vec<u8> {
    key(SPANS, &[user.as_bytes(), conv.as_bytes()])
}

/// Every conversation a user was ever in, with their spans.
pub fn spans_of(
    ks: &dyn crate::store::Keyspace,
    user: &str,
    limit: usize,
) -> Result<Vec<(String, v1::ReadSpans)>, StoreError> {
    let start = prefix(SPANS, &[user.as_bytes()]);
    let rows = ks.range(&start, &crate::keys::prefix_end(&start), false, limit)?;
    rows.into_iter()
        .map(|(k, v)| {
            Ok((
                crate::keys::last_part(&k),
                crate::store::decode_value(&k, &v)?,
            ))
        })
        .collect()
}

/// The index id of the document a row key holds.
pub fn doc_id_of_key(k: &[u8]) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match k.first() {
        Some(&DOC) if k.len() > 10 => {
            format!(
                "{}/{}",
                text(&k[1..k.len() - 9]),
                crate::keys::seq_suffix(k)
            )
        }
        Some(&TITLE) => format!("{}/title", text(&k[1..])),
        _ => format!("{}/name", text(&k[1..])),
    }
}

/// The queue entry of a row changed at a stream position.
pub fn queue_key(stream_seq: u64, doc_key: &[u8]) -> Vec<u8> {
    let mut k = QUEUE.to_vec();
    k.extend_from_slice(&seq(stream_seq));
    k.extend_from_slice(doc_key);
    k
}

/// Queues the documents among writes made outside a fold (a repair).
pub fn queue_changes(writes: &mut Vec<crate::store::Write>, at: u64) {
    let queued: Vec<_> = writes
        .iter()
        .filter(|(k, _)| is_doc_key(k))
        .map(|(k, _)| (queue_key(at, k), Some(Vec::new())))
        .collect();
    writes.extend(queued);
}

fn queue(tx: &mut Tx, stream_seq: u64, doc_key: &[u8]) {
    tx.put(queue_key(stream_seq, doc_key), Vec::new());
}

fn put_doc(tx: &mut Tx, stream_seq: u64, doc: &v1::SearchDoc) {
    let k = doc_key(doc);
    tx.put_msg(k.clone(), doc);
    queue(tx, stream_seq, &k);
}

/// What a message says, for search: its text, or a media message's name
/// and caption.
fn message_text(m: &v1::MessageSent) -> String {
    match &m.body {
        Some(Body::Text(t)) => t.clone(),
        Some(Body::Media(_)) => media_text(&m.meta),
        None => String::new(),
    }
}

fn media_text(meta: &std::collections::BTreeMap<String, String>) -> String {
    MEDIA_TEXT_KEYS
        .iter()
        .filter_map(|k| meta.get(*k))
        .cloned()
        .collect::<Vec<_>>()
        .join(" ")
}

/// What opened content says, for search (as `message_text`, or a
/// profile's display name).
pub fn content_text(c: &v1::Content) -> String {
    match &c.body {
        Some(v1::content::Body::Text(t)) => t.clone(),
        Some(v1::content::Body::Media(_)) => media_text(&c.meta),
        None => c.display_name.clone(),
    }
}

/// The queue entry that makes the indexer forget `user`'s documents.
pub fn erased_key(user: &str) -> Vec<u8> {
    key(ERASED, &[user.as_bytes()])
}

fn fold_spans(
    tx: &mut Tx,
    conv: &str,
    at: u64,
    change: &membership::Change,
) -> Result<(), StoreError> {
    for (users, joining) in [(&change.joined, true), (&change.left, false)] {
        for user in users {
            let k = spans_key(user, conv);
            let mut row: v1::ReadSpans = tx.get_msg(&k)?.unwrap_or_default();
            let open = row.spans.last().is_some_and(|s| s.to_seq == 0);
            match (joining, open) {
                (true, false) => row.spans.push(v1::ReadSpan {
                    from_seq: at,
                    to_seq: 0,
                }),
                (false, true) => row.spans.last_mut().expect("open").to_seq = at,
                _ => continue,
            }
            if row.spans.len() > SPANS_MAX {
                row.spans.remove(0);
            }
            tx.put_msg(k, &row);
        }
    }
    Ok(())
}

fn doc(
    kind: v1::SearchDocKind,
    stored: &StoredEvent,
    sender: &str,
    (text, sealed): (String, Option<&v1::Sealed>),
) -> v1::SearchDoc {
    let ev = &stored.event;
    v1::SearchDoc {
        sealed: sealed.cloned(),
        kind: kind as i32,
        conversation_id: ev.conversation_id.clone(),
        conv_seq: ev.conv_seq,
        sender_id: sender.to_string(),
        at_ms: ev.at_ms,
        stream_seq: stored.stream_seq,
        text,
    }
}

/// Changes a message's row (edited or recalled) and queues it.
fn change_message(
    tx: &mut Tx,
    stored: &StoredEvent,
    target: u64,
    text: Option<(&str, Option<&v1::Sealed>)>,
) -> Result<(), StoreError> {
    let conv = stored.event.conversation_id.as_bytes();
    let k = key(DOC, &[conv, &seq(target)]);
    let Some(mut row) = tx.get_msg::<v1::SearchDoc>(&k)? else {
        return Ok(());
    };
    match text {
        Some((t, sealed)) => {
            row.text = t.to_string();
            row.sealed = sealed.cloned();
            tx.put_msg(k.clone(), &row);
        }
        None => tx.delete(k.clone()),
    }
    queue(tx, stored.stream_seq, &k);
    Ok(())
}

fn title_text(c: &v1::ConversationCreated) -> Option<String> {
    match ConvKind::from_wire(c.kind) {
        ConvKind::Group => Some(c.title.clone()),
        ConvKind::Direct => Some(
            c.members
                .iter()
                .map(|m| m.user_id.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ConvKind::User | ConvKind::Pair => None,
    }
    .filter(|t| !t.trim().is_empty())
}

impl Projection for Search {
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
        let change = membership::fold(tx, ev, ctx)?;
        fold_spans(tx, &ev.conversation_id, ev.conv_seq, &change)?;
        use v1::SearchDocKind as K;
        match &ev.kind {
            Some(Kind::MessageSent(m)) => {
                let text = message_text(m);
                if !text.trim().is_empty() || m.sealed.is_some() {
                    let content = (text, m.sealed.as_ref());
                    let row = doc(K::Message, stored, &ev.actor, content);
                    put_doc(tx, stored.stream_seq, &row);
                }
            }
            Some(Kind::MessageEdited(e)) => {
                let content = (e.text.as_str(), e.sealed.as_ref());
                change_message(tx, stored, e.target_conv_seq, Some(content))?
            }
            Some(Kind::MessageRecalled(r)) => change_message(tx, stored, r.target_conv_seq, None)?,
            Some(Kind::Created(c)) => {
                if let Some(title) = title_text(c) {
                    put_doc(
                        tx,
                        stored.stream_seq,
                        &doc(K::Title, stored, &ev.actor, (title, None)),
                    );
                }
            }
            Some(Kind::ProfileUpdated(p)) => {
                let content = (p.display_name.clone(), p.sealed.as_ref());
                let name = doc(K::User, stored, &ev.actor, content);
                put_doc(tx, stored.stream_seq, &name);
            }
            // The name goes; the indexer forgets every document of theirs
            // (the rows stay, sealed under keys that are gone).
            Some(Kind::UserErased(_)) => {
                let k = key(USER_NAME, &[ev.conversation_id.as_bytes()]);
                tx.delete(k.clone());
                queue(tx, stored.stream_seq, &k);
                queue(tx, stored.stream_seq, &erased_key(&ev.actor));
            }
            _ => {}
        }
        Ok(Vec::new())
    }
}
