//! Projectors apply only events that extend a valid log. Per conversation a
//! projection keeps the head of the chain it has applied (`H<conv>` ->
//! conv_seq and the hash of that event's stored payload); an event is
//! applied only when its `conv_seq` is the head's + 1 and its `prev_hash`
//! the head's hash, and a conversation starts with its creation at
//! conv_seq 1. Anything else (a forged, replayed or out-of-order event
//! published around the writers) is dead-lettered with the reason and never
//! reaches a read model or a delivery.

use im_streams::chain::check_link;
use im_streams::codec::StoredEvent;

use crate::keys::{key, META};
use crate::store::{Keyspace, StoreError};
use crate::tx::Tx;

/// `H<conv>` -> conv_seq (8 bytes, big-endian) + sha256 of its payload.
pub const HEAD: u8 = b'H';

/// Where a keyspace's chains start: conversations with no head are checked
/// from their creation when this is 1; a keyspace that was folded from a
/// later stream sequence (`rebuild --from-seq`, or a store written before
/// heads were kept) takes a conversation's first event it sees as its
/// start.
pub fn chain_from_key() -> Vec<u8> {
    key(META, &[b"chain_from"])
}

/// The stream sequence the keyspace's chains start at (None: not recorded).
pub fn chain_from(ks: &dyn Keyspace) -> Result<Option<u64>, StoreError> {
    Ok(ks
        .get(&chain_from_key())?
        .and_then(|v| v.try_into().ok())
        .map(u64::from_be_bytes))
}

/// The write that records where a keyspace's chains start.
pub fn chain_from_write(from_seq: u64) -> crate::store::Write {
    (
        chain_from_key(),
        Some(from_seq.max(1).to_be_bytes().to_vec()),
    )
}

/// Records where the keyspace's chains start if it does not say yet: heads
/// are kept from here on, so a store written before they were trusts the
/// chains it already holds (from its checkpoint on).
pub fn ensure_chain_from(ks: &dyn Keyspace, at: crate::runner::Applied) -> Result<(), StoreError> {
    if chain_from(ks)?.is_none() {
        ks.commit(vec![chain_from_write(at.conv + 1)])?;
    }
    Ok(())
}

/// The last applied event of a conversation: (conv_seq, payload hash).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub conv_seq: u64,
    pub hash: [u8; 32],
}

fn head_key(conv: &str) -> Vec<u8> {
    key(HEAD, &[conv.as_bytes()])
}

pub fn head(tx: &Tx, conv: &str) -> Result<Option<Head>, StoreError> {
    let Some(v) = tx.get(&head_key(conv))? else {
        return Ok(None);
    };
    if v.len() != 40 {
        return Err(StoreError::Corrupt {
            key: format!("H{conv}"),
            detail: format!("{} bytes, not 40", v.len()),
        });
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&v[8..]);
    Ok(Some(Head {
        conv_seq: u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
        hash,
    }))
}

/// Why `stored` does not extend the conversation whose head is `head`, or
/// Ok (the rule itself is `im_streams::chain::check_link`, shared with the
/// writers and the auditor). `from_genesis`: a conversation without a head
/// must start at its creation.
pub fn check(head: Option<Head>, stored: &StoredEvent, from_genesis: bool) -> Result<(), String> {
    let (last, hash) = match head {
        Some(h) => (h.conv_seq, h.hash),
        None if from_genesis => (0, [0u8; 32]),
        None => return Ok(()),
    };
    check_link(last, &hash, &stored.event).map_err(|e| e.to_string())
}

/// Makes `stored` the conversation's head.
pub fn advance(tx: &mut Tx, stored: &StoredEvent) {
    let mut v = Vec::with_capacity(40);
    v.extend_from_slice(&stored.event.conv_seq.to_be_bytes());
    v.extend_from_slice(&stored.hash);
    tx.put(head_key(&stored.event.conversation_id), v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use im_schema::v1;
    use im_schema::v1::conv_event::Kind;

    fn event(conv_seq: u64, prev: [u8; 32], kind: Kind) -> StoredEvent {
        let ev = v1::ConvEvent {
            conversation_id: "c".into(),
            conv_seq,
            prev_hash: prev.to_vec(),
            kind: Some(kind),
            ..Default::default()
        };
        let payload = bytes::Bytes::from(im_schema::encode(&ev));
        StoredEvent {
            stream_seq: conv_seq,
            subject: "im.conv.0.c".into(),
            hash: im_streams::codec::payload_hash(&payload),
            payload,
            writer: String::new(),
            msg_id: String::new(),
            signature: None,
            event: ev,
        }
    }

    fn created() -> Kind {
        Kind::Created(v1::ConversationCreated::default())
    }

    fn sent() -> Kind {
        Kind::MessageSent(v1::MessageSent::default())
    }

    #[test]
    fn a_chain_is_extended_only_by_its_next_link() {
        let first = event(1, [0; 32], created());
        assert_eq!(check(None, &first, true), Ok(()));
        let head = Head {
            conv_seq: 1,
            hash: first.hash,
        };
        assert_eq!(
            check(Some(head), &event(2, first.hash, sent()), true),
            Ok(())
        );
        // A repeat of conv_seq 1, a gap, a wrong link, a second creation.
        for (bad, why) in [
            (event(1, first.hash, sent()), "does not follow"),
            (event(3, first.hash, sent()), "does not follow"),
            (event(2, [7; 32], sent()), "prev_hash"),
            (
                event(2, first.hash, created()),
                "created by its first event",
            ),
        ] {
            let err = check(Some(head), &bad, true).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn a_conversation_starts_at_its_creation_unless_folded_from_later() {
        let err = check(None, &event(5, [1; 32], sent()), true).unwrap_err();
        assert!(err.contains("does not follow 0"), "{err}");
        assert!(check(None, &event(1, [0; 32], sent()), true).is_err());
        assert_eq!(check(None, &event(5, [1; 32], sent()), false), Ok(()));
    }
}
