//! Who is in a conversation, in memory: the fan-out of every event and
//! receipt needs the member list, and reading it from sled per event (a
//! range scan) cost more than the event itself in large groups. Kept by the
//! folds (`membership::fold` reports each change here), loaded on a miss from
//! the folding projection's own rows, bounded in bytes.

use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;

use crate::projections::membership::{self, Change};
use crate::store::StoreError;
use crate::tx::Tx;

/// Bytes of member lists kept (upper bounds: every id at its longest).
/// 64 MiB holds a few hundred of the largest groups (5,000 members) or
/// hundreds of thousands of small conversations; a miss costs one range
/// read of the conversation's members.
pub const MEMBERS_CACHE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Conversations kept, whatever their size.
pub const MEMBERS_CACHE_CONVERSATIONS_MAX: usize = 1 << 20;

/// An upper bound of one member's share of a list.
const MEMBER_BYTES: usize = im_streams::ids::ID_LEN_MAX + std::mem::size_of::<String>();

/// An upper bound of one cached list's bytes.
fn size_of_list(conv: &str, members: &[String]) -> usize {
    conv.len() + 64 + members.len() * MEMBER_BYTES
}

pub struct MembersCache {
    lru: LruCache<String, Arc<Vec<String>>>,
    bytes: usize,
    bytes_max: usize,
}

impl Default for MembersCache {
    fn default() -> Self {
        Self::new(MEMBERS_CACHE_BYTES_MAX)
    }
}

impl MembersCache {
    pub fn new(bytes_max: usize) -> Self {
        MembersCache {
            lru: LruCache::new(
                NonZeroUsize::new(MEMBERS_CACHE_CONVERSATIONS_MAX).expect("non-zero"),
            ),
            bytes: 0,
            bytes_max,
        }
    }

    /// The conversation's members (sorted), from `tx`'s rows on a miss.
    pub fn get(&mut self, tx: &Tx, conv: &str) -> Result<Arc<Vec<String>>, StoreError> {
        if let Some(m) = self.lru.get(conv) {
            return Ok(m.clone());
        }
        let members = Arc::new(membership::user_ids(tx, conv)?);
        self.insert(conv, members.clone());
        Ok(members)
    }

    fn insert(&mut self, conv: &str, members: Arc<Vec<String>>) {
        self.bytes += size_of_list(conv, &members);
        if let Some((old_conv, old)) = self.lru.push(conv.to_string(), members) {
            self.bytes -= size_of_list(&old_conv, &old);
        }
        while self.bytes > self.bytes_max && self.lru.len() > 1 {
            if let Some((c, m)) = self.lru.pop_lru() {
                self.bytes -= size_of_list(&c, &m);
            }
        }
    }

    /// Applies a membership change to a cached list (idempotent: every
    /// projection that folds the event reports it).
    pub fn changed(&mut self, conv: &str, change: &Change) {
        if change.joined.is_empty() && change.left.is_empty() {
            return;
        }
        let Some(list) = self.lru.pop(conv) else {
            return;
        };
        self.bytes -= size_of_list(conv, &list);
        let mut list = Arc::unwrap_or_clone(list);
        for user in &change.joined {
            if let Err(at) = list.binary_search(user) {
                list.insert(at, user.clone());
            }
        }
        list.retain(|u| !change.left.contains(u));
        self.insert(conv, Arc::new(list));
    }

    /// Everything forgotten (a projection's keyspace was swapped).
    pub fn clear(&mut self) {
        self.lru.clear();
        self.bytes = 0;
    }

    /// (conversations, bytes) kept.
    pub fn usage(&self) -> (usize, usize) {
        (self.lru.len(), self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemKeyspace;

    #[test]
    fn changes_are_applied_once_and_the_byte_bound_holds() {
        let ks = MemKeyspace::default();
        let tx = Tx::new(&ks);
        let mut cache = MembersCache::new(4 * size_of_list("c0", &[]) + 4 * MEMBER_BYTES);
        assert!(cache.get(&tx, "c0").unwrap().is_empty());
        let change = Change {
            joined: vec!["bob".into(), "amy".into()],
            left: vec![],
        };
        cache.changed("c0", &change);
        cache.changed("c0", &change);
        assert_eq!(*cache.get(&tx, "c0").unwrap(), vec!["amy", "bob"]);
        cache.changed(
            "c0",
            &Change {
                joined: vec![],
                left: vec!["amy".into()],
            },
        );
        assert_eq!(*cache.get(&tx, "c0").unwrap(), vec!["bob"]);
        for i in 1..10 {
            cache.get(&tx, &format!("c{i}")).unwrap();
        }
        let (n, bytes) = cache.usage();
        assert!(
            bytes <= 4 * size_of_list("c0", &[]) + 4 * MEMBER_BYTES,
            "{bytes}"
        );
        assert!(n < 10);
    }
}
