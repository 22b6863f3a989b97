//! Deterministic digests of a keyspace: the sum (mod 2^256, as four wrapping
//! u64 lanes) of sha256 over each entry. Order-free, so it needs no sort, and
//! additive: the digests of two stores holding disjoint keys add up to the
//! digest of one store holding both, which is how partition-split instances
//! are compared with a single one.

use sha2::{Digest as _, Sha256};

use crate::keys::META;
use crate::store::{Keyspace, StoreError};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digest {
    lanes: [u64; 4],
    pub keys: u64,
}

impl Digest {
    pub fn add_entry(&mut self, key: &[u8], value: &[u8]) {
        let mut h = Sha256::new();
        h.update((key.len() as u32).to_be_bytes());
        h.update(key);
        h.update(value);
        let out = h.finalize();
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&out[i * 8..i * 8 + 8]);
            *lane = lane.wrapping_add(u64::from_le_bytes(b));
        }
        self.keys += 1;
    }

    pub fn combine(&self, other: &Digest) -> Digest {
        let mut lanes = self.lanes;
        for (l, o) in lanes.iter_mut().zip(other.lanes) {
            *l = l.wrapping_add(o);
        }
        Digest {
            lanes,
            keys: self.keys + other.keys,
        }
    }

    pub fn hex(&self) -> String {
        let mut bytes = Vec::with_capacity(32);
        for l in self.lanes {
            bytes.extend_from_slice(&l.to_le_bytes());
        }
        hex::encode(bytes)
    }

    pub fn from_hex(text: &str, keys: u64) -> Option<Digest> {
        let bytes = hex::decode(text).ok()?;
        if bytes.len() != 32 {
            return None;
        }
        let mut lanes = [0u64; 4];
        for (i, lane) in lanes.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            *lane = u64::from_le_bytes(b);
        }
        Some(Digest { lanes, keys })
    }
}

/// The digest of a keyspace's model entries (bookkeeping keys left out).
pub fn digest_of(ks: &dyn Keyspace) -> Result<Digest, StoreError> {
    let mut d = Digest::default();
    ks.visit(&mut |k, v| {
        if k.first() != Some(&META) {
            d.add_entry(k, v);
        }
    })?;
    Ok(d)
}

/// Keys per `KeysQuery` page, at most.
pub const KEYS_PAGE_MAX: u32 = 1_000;

/// A page of model keys after `after` with a hash of each value.
pub fn key_hashes(
    ks: &dyn crate::store::Keyspace,
    after: &[u8],
    limit: u32,
) -> Result<im_schema::v1::KeysResult, crate::store::StoreError> {
    use sha2::{Digest as _, Sha256};
    let mut start = after.to_vec();
    if !start.is_empty() {
        start.push(0);
    }
    let end = [crate::keys::META];
    let rows = ks.range(&start, &end, false, limit.clamp(1, KEYS_PAGE_MAX) as usize)?;
    Ok(im_schema::v1::KeysResult {
        entries: rows
            .into_iter()
            .map(|(key, value)| im_schema::v1::KeyHash {
                key,
                value_hash: Sha256::digest(&value)[..16].to_vec(),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_order_free_and_additive() {
        let entries = [
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), b"2".to_vec()),
        ];
        let mut fwd = Digest::default();
        let mut rev = Digest::default();
        for (k, v) in &entries {
            fwd.add_entry(k, v);
        }
        for (k, v) in entries.iter().rev() {
            rev.add_entry(k, v);
        }
        assert_eq!(fwd, rev);
        let (mut a, mut b) = (Digest::default(), Digest::default());
        a.add_entry(b"a", b"1");
        b.add_entry(b"b", b"2");
        assert_eq!(a.combine(&b), fwd);
        let mut changed = Digest::default();
        changed.add_entry(b"a", b"1");
        changed.add_entry(b"b", b"3");
        assert_ne!(changed, fwd);
        assert_eq!(Digest::from_hex(&fwd.hex(), 2), Some(fwd));
    }
}
