//! The conversations a writer keeps, bounded twice: by count
//! (`CONV_CACHE_MAX`) and by bytes (`WRITER_CACHE_BYTES_MAX`, from each
//! entry's size, accounted whenever a command lets go of it).
//! The least recently used go first; one evicted while a command holds it
//! lives on for that command only (CAS keeps two copies honest).

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

/// Conversations a writer keeps.
pub const CONV_CACHE_MAX: usize = 2_048;

/// Bytes of cached conversation state a writer keeps, all conversations
/// together (ids at their actual length). A busy conversation with full
/// indexes (512 recent ids, 512 recent messages) holds ~100-150 KB, so
/// 128 MiB keeps ~1,000 of them (or the 2,048 the count allows of smaller
/// ones) hot: evicting a conversation that is still written to costs a
/// reload of its log, so the bound must hold the working set.
pub const WRITER_CACHE_BYTES_MAX: usize = 128 * 1024 * 1024;

struct Slot<T> {
    entry: Arc<tokio::sync::Mutex<T>>,
    bytes: usize,
}

struct Inner<T> {
    lru: LruCache<String, Slot<T>>,
    bytes: usize,
    bytes_max: usize,
}

pub struct WriterCache<T> {
    inner: Mutex<Inner<T>>,
}

impl<T> WriterCache<T> {
    pub fn new(bytes_max: usize) -> Self {
        WriterCache {
            inner: Mutex::new(Inner {
                lru: LruCache::new(NonZeroUsize::new(CONV_CACHE_MAX).expect("non-zero")),
                bytes: 0,
                bytes_max,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The conversation's entry, made by `make` when absent.
    pub fn entry(&self, conv: &str, make: impl FnOnce() -> T) -> Arc<tokio::sync::Mutex<T>> {
        let mut inner = self.lock();
        if let Some(slot) = inner.lru.get(conv) {
            return slot.entry.clone();
        }
        let entry = Arc::new(tokio::sync::Mutex::new(make()));
        let slot = Slot {
            entry: entry.clone(),
            bytes: 0,
        };
        if let Some((_, old)) = inner.lru.push(conv.to_string(), slot) {
            inner.bytes -= old.bytes;
        }
        entry
    }

    /// Records an entry's size now, then evicts the least recently used
    /// until the total fits (the entry just used is the last to go).
    pub fn account(&self, conv: &str, entry: &Arc<tokio::sync::Mutex<T>>, bytes: usize) {
        let mut inner = self.lock();
        let Some(slot) = inner.lru.peek_mut(conv) else {
            return;
        };
        if !Arc::ptr_eq(&slot.entry, entry) {
            return;
        }
        let before = std::mem::replace(&mut slot.bytes, bytes);
        inner.bytes = inner.bytes + bytes - before;
        while inner.bytes > inner.bytes_max && inner.lru.len() > 1 {
            match inner.lru.pop_lru() {
                Some((_, old)) => inner.bytes -= old.bytes,
                None => break,
            }
        }
    }

    /// Whether the conversation is kept (without making it recent).
    pub fn contains(&self, conv: &str) -> bool {
        self.lock().lru.contains(conv)
    }

    /// (conversations, bytes) kept now.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.lru.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_bound_evicts_the_least_recently_used() {
        let cache = WriterCache::<u32>::new(1_000);
        for i in 0..10 {
            let conv = format!("c{i}");
            let e = cache.entry(&conv, || i);
            cache.account(&conv, &e, 300);
        }
        let (n, bytes) = cache.usage();
        assert_eq!((n, bytes), (3, 900));
        // The newest survive; an entry that grew pushes out the oldest.
        let e = cache.entry("c9", || 0);
        cache.account("c9", &e, 700);
        assert_eq!(cache.usage(), (2, 1_000));
        // An evicted entry's late accounting changes nothing.
        let stale = Arc::new(tokio::sync::Mutex::new(0));
        cache.account("c9", &stale, 5);
        assert_eq!(cache.usage(), (2, 1_000));
    }
}
