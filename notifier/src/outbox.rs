//! The notifications decided and not yet taken by the push gateway, in
//! the `notify` keyspace beside the queue: `O<user>\0<seq>` in each user's
//! order, `X<seq>` for those given up (dead letters), the next seq under a
//! bookkeeping key. A row leaves `O` only once the gateway took it or it
//! is buried, so a crash sends it again, under the same `Idempotency-Key`.

use im_projectors::keys::{key, prefix_end, seq, seq_suffix};
use im_projectors::store::{decode_value, Keyspace, StoreError, Write};
use im_schema::v1;

/// `O<user>\0<seq>` -> NotifyOutboxRow.
pub const OUTBOX: u8 = b'O';
/// `X<seq>` -> NotifyOutboxRow (with why it was given up).
pub const DEAD: u8 = b'X';
/// The next outbox seq (u64 BE); a bookkeeping key (0xff), outside digests.
pub const NEXT_SEQ_KEY: &[u8] = b"\xffnotify-seq";

/// Dead letters one answer lists at most (within a NATS message).
pub const DEAD_LETTERS_LISTED_MAX: usize = 1_000;
/// Dead letters counted or revived by one command at most: bounds the
/// rows held at once; past it the count says "at least", and a replay is
/// run again for the rest.
pub const DEAD_LETTERS_SCAN_MAX: usize = 10_000;

pub fn outbox_key(user: &str, s: u64) -> Vec<u8> {
    key(OUTBOX, &[user.as_bytes(), &seq(s)])
}

pub fn dead_key(s: u64) -> Vec<u8> {
    let mut k = vec![DEAD];
    k.extend_from_slice(&seq(s));
    k
}

/// The first outbox seq not yet used.
pub fn next_seq(ks: &dyn Keyspace) -> Result<u64, StoreError> {
    Ok(ks
        .get(NEXT_SEQ_KEY)?
        .and_then(|v| v.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(1))
}

/// One row waiting, with its key.
#[derive(Clone, Debug)]
pub struct Waiting {
    pub key: Vec<u8>,
    pub seq: u64,
    pub row: v1::NotifyOutboxRow,
}

impl Waiting {
    pub fn user(&self) -> &str {
        self.row
            .notification
            .as_ref()
            .map_or("", |n| n.user_id.as_str())
    }
}

/// Writes that put `rows` in the outbox from `next` on; returns the writes
/// and the next seq after them.
pub fn enqueue(rows: Vec<v1::NotifyOutboxRow>, mut next: u64) -> (Vec<Write>, Vec<Waiting>, u64) {
    let mut writes = Vec::with_capacity(rows.len() + 1);
    let mut waiting = Vec::with_capacity(rows.len());
    for row in rows {
        let user = row
            .notification
            .as_ref()
            .map_or(String::new(), |n| n.user_id.clone());
        let k = outbox_key(&user, next);
        writes.push((k.clone(), Some(prost::Message::encode_to_vec(&row))));
        waiting.push(Waiting {
            key: k,
            seq: next,
            row,
        });
        next += 1;
    }
    writes.push((NEXT_SEQ_KEY.to_vec(), Some(next.to_be_bytes().to_vec())));
    (writes, waiting, next)
}

/// Up to `limit` waiting rows, by user then seq.
pub fn waiting(ks: &dyn Keyspace, limit: usize) -> Result<Vec<Waiting>, StoreError> {
    let from = [OUTBOX];
    let rows = ks.range(&from, &prefix_end(&from), false, limit)?;
    rows.into_iter()
        .map(|(k, v)| {
            Ok(Waiting {
                seq: seq_suffix(&k),
                row: decode_value(&k, &v)?,
                key: k,
            })
        })
        .collect()
}

/// Taken by the gateway (or nothing left to send it to).
pub fn remove(ks: &dyn Keyspace, w: &Waiting) -> Result<(), StoreError> {
    ks.commit(vec![(w.key.clone(), None)])
}

/// Given up: out of the user's queue, into the dead letters, at once.
pub fn bury(ks: &dyn Keyspace, w: &Waiting, now_ms: i64) -> Result<(), StoreError> {
    let mut row = w.row.clone();
    row.dead_ms = now_ms;
    ks.commit(vec![
        (w.key.clone(), None),
        (dead_key(w.seq), Some(prost::Message::encode_to_vec(&row))),
    ])
}

/// The dead letters, oldest first, at most `limit`, and how many in all
/// (up to `DEAD_LETTERS_SCAN_MAX`).
pub fn dead_letters(ks: &dyn Keyspace, limit: usize) -> Result<(Vec<Waiting>, u64), StoreError> {
    let from = [DEAD];
    let all = ks.range(&from, &prefix_end(&from), false, DEAD_LETTERS_SCAN_MAX)?;
    let total = all.len() as u64;
    let listed = all
        .into_iter()
        .take(limit)
        .map(|(k, v)| {
            Ok(Waiting {
                seq: seq_suffix(&k),
                row: decode_value(&k, &v)?,
                key: k,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok((listed, total))
}

/// Writes that move dead letters back to their users' queues (behind
/// what waits there), attempts counted afresh; and the rows moved.
pub fn revive(dead: Vec<Waiting>, next: u64) -> (Vec<Write>, Vec<Waiting>, u64) {
    let gone: Vec<Write> = dead.iter().map(|d| (d.key.clone(), None)).collect();
    let rows = dead
        .into_iter()
        .map(|d| v1::NotifyOutboxRow {
            attempts: 0,
            dead_ms: 0,
            ..d.row
        })
        .collect();
    let (mut writes, waiting, next) = enqueue(rows, next);
    writes.extend(gone);
    (writes, waiting, next)
}
