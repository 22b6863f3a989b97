//! The notifications decided and not yet taken by the push gateway, in
//! the `notify` keyspace beside the queue: `O<seq>` in the order they were
//! decided (so each user's in order), `X<seq>` for those given up (dead
//! letters), the next seq under a bookkeeping key. A row leaves `O` only
//! once the gateway took it, it was buried, or it no longer wakes anyone,
//! so a crash sends it again, under the same `Idempotency-Key`.

use im_projectors::keys::{prefix_end, seq, seq_suffix};
use im_projectors::store::{decode_value, Keyspace, StoreError, Write};
use im_schema::v1;

/// `O<seq>` -> NotifyOutboxRow.
pub const OUTBOX: u8 = b'O';
/// `X<seq>` -> NotifyOutboxRow (with why it was given up).
pub const DEAD: u8 = b'X';
/// The next outbox seq (u64 BE); a bookkeeping key (0xff), outside digests.
pub const NEXT_SEQ_KEY: &[u8] = b"\xffnotify-seq";

/// Dead letters one answer lists at most: with their tokens left out, a
/// few hundred bytes each, well within a NATS message.
pub const DEAD_LETTERS_LISTED_MAX: usize = 100;
/// Dead letters counted or revived by one command at most: bounds the
/// rows held at once; past it a replay is run again for the rest.
pub const DEAD_LETTERS_SCAN_MAX: usize = 10_000;
/// Dead letters kept at most: past it the oldest go (a gateway refusing
/// everything for days must not fill the disk); each was logged.
pub const DEAD_STORED_MAX: u64 = 100_000;
/// Rows of the outbox counted at start, at most (the count only shows).
pub const COUNT_MAX: usize = 1_000_000;

fn tagged(tag: u8, s: u64) -> Vec<u8> {
    let mut k = vec![tag];
    k.extend_from_slice(&seq(s));
    k
}

pub fn outbox_key(s: u64) -> Vec<u8> {
    tagged(OUTBOX, s)
}

pub fn dead_key(s: u64) -> Vec<u8> {
    tagged(DEAD, s)
}

/// The first outbox seq not yet used.
pub fn next_seq(ks: &dyn Keyspace) -> Result<u64, StoreError> {
    Ok(ks
        .get(NEXT_SEQ_KEY)?
        .and_then(|v| v.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(1))
}

/// One row, with its seq.
#[derive(Clone, Debug)]
pub struct Waiting {
    pub seq: u64,
    pub row: v1::NotifyOutboxRow,
}

impl Waiting {
    pub fn notification(&self) -> &v1::Notification {
        static EMPTY: std::sync::OnceLock<v1::Notification> = std::sync::OnceLock::new();
        self.row
            .notification
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(Default::default))
    }

    pub fn user(&self) -> &str {
        &self.notification().user_id
    }

    /// Bytes it holds (what the sender's bound counts).
    pub fn bytes(&self) -> usize {
        prost::Message::encoded_len(&self.row) + 64
    }
}

/// Writes that put `rows` in the outbox from `next` on; and the next seq.
pub fn enqueue(rows: Vec<v1::NotifyOutboxRow>, mut next: u64) -> (Vec<Write>, u64) {
    let mut writes = Vec::with_capacity(rows.len() + 1);
    for row in rows {
        writes.push((outbox_key(next), Some(prost::Message::encode_to_vec(&row))));
        next += 1;
    }
    writes.push((NEXT_SEQ_KEY.to_vec(), Some(next.to_be_bytes().to_vec())));
    (writes, next)
}

fn rows(ks: &dyn Keyspace, tag: u8, from: u64, limit: usize) -> Result<Vec<Waiting>, StoreError> {
    let end = prefix_end(&[tag]);
    ks.range(&tagged(tag, from), &end, false, limit)?
        .into_iter()
        .map(|(k, v)| {
            Ok(Waiting {
                seq: seq_suffix(&k),
                row: decode_value(&k, &v)?,
            })
        })
        .collect()
}

/// Up to `limit` waiting rows from seq `from` on, in order.
pub fn waiting(ks: &dyn Keyspace, from: u64, limit: usize) -> Result<Vec<Waiting>, StoreError> {
    rows(ks, OUTBOX, from, limit)
}

/// How many rows wait (up to `COUNT_MAX`).
pub fn count(ks: &dyn Keyspace, tag: u8) -> Result<u64, StoreError> {
    let end = prefix_end(&[tag]);
    let mut n = 0;
    let mut from = tagged(tag, 0);
    loop {
        // Keys only are looked at: no row is decoded to be counted.
        let page = ks.range(&from, &end, false, 10_000)?;
        n += page.len() as u64;
        match page.last() {
            Some((k, _)) if n < COUNT_MAX as u64 => from = tagged(tag, seq_suffix(k) + 1),
            _ => return Ok(n),
        }
    }
}

/// Out of the outbox: taken by the gateway, or no longer waking anyone.
pub fn remove(ks: &dyn Keyspace, w: &Waiting) -> Result<(), StoreError> {
    ks.commit(vec![(outbox_key(w.seq), None)])
}

/// Given up: out of the outbox, into the dead letters, at once.
pub fn bury(ks: &dyn Keyspace, w: &Waiting, now_ms: i64) -> Result<(), StoreError> {
    let mut row = w.row.clone();
    row.dead_ms = now_ms;
    ks.commit(vec![
        (outbox_key(w.seq), None),
        (dead_key(w.seq), Some(prost::Message::encode_to_vec(&row))),
    ])
}

/// Drops the `n` oldest dead letters; how many went.
pub fn drop_oldest_dead(ks: &dyn Keyspace, n: usize) -> Result<u64, StoreError> {
    let old = ks.range(&tagged(DEAD, 0), &prefix_end(&[DEAD]), false, n)?;
    let count = old.len() as u64;
    ks.commit(old.into_iter().map(|(k, _)| (k, None)).collect())?;
    Ok(count)
}

/// Up to `limit` dead letters, oldest first.
pub fn dead_letters(ks: &dyn Keyspace, limit: usize) -> Result<Vec<Waiting>, StoreError> {
    rows(ks, DEAD, 0, limit)
}

/// Dead letters as rows for the outbox again (attempts counted afresh;
/// `enqueue` puts them behind what waits), and the writes that take them
/// out of the dead letters.
pub fn revive(dead: &[Waiting]) -> (Vec<v1::NotifyOutboxRow>, Vec<Write>) {
    let rows = dead
        .iter()
        .map(|d| v1::NotifyOutboxRow {
            attempts: 0,
            dead_ms: 0,
            ..d.row.clone()
        })
        .collect();
    (rows, dead.iter().map(|d| (dead_key(d.seq), None)).collect())
}

/// A row as an operator sees it: the devices without their tokens (a
/// token is the user's, and the control answer goes to an inbox).
pub fn redacted(mut row: v1::NotifyOutboxRow) -> v1::NotifyOutboxRow {
    if let Some(n) = row.notification.as_mut() {
        for d in &mut n.devices {
            if let Some(r) = d.registration.as_mut() {
                r.token = format!("({} bytes)", r.token.len());
            }
        }
    }
    row
}
