//! The fjall backend of the `Keyspace` trait (an LSM tree: issue 31's
//! measurement put its writes at 1.7 µs a key against sled's 11.4 on the
//! rebuild's pattern). One fjall keyspace per store, one partition per
//! keyspace of ours, the store's directory locked while it is open.

use std::path::Path;
use std::sync::Arc;

use fjall::{PartitionCreateOptions, PersistMode};

use crate::store::{Entry, Keyspace, StoreError, Write};

/// fjall's errors as the supervisor must take them: the disk's refusals
/// may pass (a failed write poisons the keyspace, which a restart opens
/// again); a keyspace dropped while a reader still holds it is held, not
/// corrupt; anything else means the store cannot be trusted.
fn engine(e: fjall::Error) -> StoreError {
    match e {
        fjall::Error::Io(io) | fjall::Error::Storage(lsm_tree::Error::Io(io)) => StoreError::Io(io),
        fjall::Error::Poisoned => StoreError::Io(std::io::Error::other(
            "a write failed: the store takes no more until it is opened again",
        )),
        fjall::Error::PartitionDeleted => StoreError::Locked(std::io::Error::other(
            "a keyspace of this name is being dropped and a reader still holds it",
        )),
        other => StoreError::CorruptEngine(Box::new(other)),
    }
}

/// The file a process locks for as long as it has the store open: fjall
/// takes no lock of its own, and two processes (or an instance and its
/// restart) writing one store's journals would ruin it. Held, the store
/// answers `Locked`, which the supervisor waits out as it does sled's.
const LOCK_FILE: &str = "im.lock";

/// How often fjall syncs its journals to disk on its own: a power loss
/// costs at most this much of the commits (folded again from the
/// checkpoints that ride in each batch: I13), as sled's flush cadence.
const FJALL_FSYNC_MS: u16 = 1_000;

/// fjall's block cache: the hot blocks of recent history and of the
/// counters; the OS's page cache holds the rest of the files. A quarter of
/// sled's cache (`STORE_CACHE_BYTES`): an LSM tree reads a key from one
/// block, not a path of nodes.
pub const FJALL_CACHE_BYTES: u64 = 256 * 1024 * 1024;

/// All memtables together (writes not yet flushed to a table): the
/// memory a burst of writes can hold before fjall writes tables out and,
/// past it, makes writers wait.
pub const FJALL_WRITE_BUFFER_BYTES: u64 = 64 * 1024 * 1024;

/// All journals together, on disk: bounds what a start replays after a
/// kill (fjall's minimum is 24 MiB).
pub const FJALL_JOURNAL_BYTES: u64 = 256 * 1024 * 1024;

/// A fjall store: each keyspace a partition (named as ours are: fjall
/// allows `.`).
#[derive(Clone)]
pub struct FjallStore {
    db: fjall::Keyspace,
    /// Held while any handle on the store lives.
    _lock: Arc<std::fs::File>,
}

/// Locks the store's directory for this handle, or says who holds it.
fn lock(path: &Path) -> Result<std::fs::File, StoreError> {
    std::fs::create_dir_all(path).map_err(StoreError::Io)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.join(LOCK_FILE))
        .map_err(StoreError::Io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "the fjall store is locked",
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Io(e)),
    }
}

impl FjallStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let lock = lock(path)?;
        let db = fjall::Config::new(path)
            .cache_size(FJALL_CACHE_BYTES)
            .max_write_buffer_size(FJALL_WRITE_BUFFER_BYTES)
            .max_journaling_size(FJALL_JOURNAL_BYTES)
            .fsync_ms(Some(FJALL_FSYNC_MS))
            .open()
            .map_err(engine)?;
        Ok(FjallStore {
            db,
            _lock: Arc::new(lock),
        })
    }

    pub fn keyspace(&self, name: &str) -> Result<Arc<dyn Keyspace>, StoreError> {
        let part = self
            .db
            .open_partition(name, PartitionCreateOptions::default())
            .map_err(engine)?;
        Ok(Arc::new(FjallKeyspace {
            store: self.clone(),
            part,
        }))
    }

    pub fn keyspace_names(&self) -> Vec<String> {
        self.db
            .list_partitions()
            .iter()
            .map(|n| n.to_string())
            .collect()
    }

    pub fn drop_keyspace(&self, name: &str) -> Result<(), StoreError> {
        if !self.db.partition_exists(name) {
            return Ok(());
        }
        let part = self
            .db
            .open_partition(name, PartitionCreateOptions::default())
            .map_err(engine)?;
        self.db.delete_partition(part).map_err(engine)
    }
}

pub struct FjallKeyspace {
    /// The store it belongs to (its lock with it).
    store: FjallStore,
    part: fjall::PartitionHandle,
}

/// Commits every keyspace's writes in one fjall batch: all of them or
/// none survives a crash, as one sled transaction does (I12).
pub(crate) fn commit_together(parts: Vec<(&FjallKeyspace, Vec<Write>)>) -> Result<(), StoreError> {
    let Some((first, _)) = parts.first() else {
        return Ok(());
    };
    let mut batch = first.store.db.batch();
    for (ks, writes) in parts {
        for (k, v) in writes {
            match v {
                Some(v) => batch.insert(&ks.part, k, v),
                None => batch.remove(&ks.part, k),
            }
        }
    }
    batch.commit().map_err(engine)
}

impl Keyspace for FjallKeyspace {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.part.get(key).map_err(engine)?.map(|v| v.to_vec()))
    }

    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        descending: bool,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let iter = self.part.range(start.to_vec()..end.to_vec());
        let pairs: Box<dyn Iterator<Item = fjall::Result<fjall::KvPair>>> = if descending {
            Box::new(iter.rev())
        } else {
            Box::new(iter)
        };
        pairs
            .take(limit)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(engine))
            .collect()
    }

    fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        commit_together(vec![(self, writes)])
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.store.db.persist(PersistMode::SyncAll).map_err(engine)
    }

    fn fjall(&self) -> Option<&FjallKeyspace> {
        Some(self)
    }

    fn visit(&self, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
        for r in self.part.iter() {
            let (k, v) = r.map_err(engine)?;
            f(&k, &v);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// The same operations give the same answers on both engines.
    fn exercise(
        keyspace: &dyn Fn(&str) -> Arc<dyn Keyspace>,
    ) -> Vec<(Vec<Entry>, Option<Vec<u8>>)> {
        let ks = keyspace("history.g1");
        let writes: Vec<Write> = (0u8..20)
            .map(|i| (vec![b'h', i], Some(vec![i; 3])))
            .collect();
        ks.commit(writes).unwrap();
        ks.commit(vec![
            (vec![b'h', 3], None),
            (vec![b'h', 4], Some(b"new".to_vec())),
        ])
        .unwrap();
        ks.flush().unwrap();
        let mut out = Vec::new();
        for (start, end, desc, limit) in [
            (vec![b'h'], vec![b'i'], false, 5),
            (vec![b'h'], vec![b'i'], true, 5),
            (vec![b'h', 2], vec![b'h', 6], false, 100),
            (vec![b'h', 6], vec![b'h', 2], false, 100),
        ] {
            out.push((
                ks.range(&start, &end, desc, limit).unwrap(),
                ks.get(&[b'h', 4]).unwrap(),
            ));
        }
        let mut seen = Vec::new();
        ks.visit(&mut |k, v| seen.push((k.to_vec(), v.to_vec())))
            .unwrap();
        out.push((seen, ks.get(&[b'h', 3]).unwrap()));
        out
    }

    #[test]
    fn fjall_answers_as_sled_does() {
        let dir = tempfile::tempdir().unwrap();
        let sled = Store::open(&dir.path().join("sled")).unwrap();
        let fjall = FjallStore::open(&dir.path().join("fjall")).unwrap();
        let a = exercise(&|n| sled.keyspace(n).unwrap());
        let b = exercise(&|n| fjall.keyspace(n).unwrap());
        assert_eq!(a, b);
        assert!(fjall.keyspace_names().contains(&"history.g1".to_string()));
        fjall.drop_keyspace("history.g1").unwrap();
        assert!(!fjall.keyspace_names().contains(&"history.g1".to_string()));
        fjall.drop_keyspace("never.made").unwrap();
    }

    /// A store is opened only by the engine that made it; a sled store
    /// from before the marker counts as sled's; a marker naming no engine
    /// is a corrupt store, never a fresh one.
    #[test]
    fn a_store_is_never_opened_by_the_other_engine() {
        use crate::store::Engine;
        let dir = tempfile::tempdir().unwrap();
        let (f, old, odd) = (
            dir.path().join("f"),
            dir.path().join("old"),
            dir.path().join("odd"),
        );
        let made = Store::open_engine(&f, None, Engine::Fjall).unwrap();
        made.keyspace("meta")
            .unwrap()
            .commit(vec![(b"k".to_vec(), Some(b"v".to_vec()))])
            .unwrap();
        drop(made);
        let refused = Store::open_engine(&f, None, Engine::Sled).err().unwrap();
        assert!(
            matches!(
                refused,
                StoreError::WrongEngine {
                    found: "fjall",
                    asked: "sled"
                }
            ),
            "{refused}"
        );
        assert!(
            refused.to_string().contains("--store-engine fjall"),
            "{refused}"
        );
        let again = Store::open_engine(&f, None, Engine::Fjall).unwrap();
        assert_eq!(
            again.keyspace("meta").unwrap().get(b"k").unwrap(),
            Some(b"v".to_vec())
        );

        drop(Store::open_sled(&old).unwrap());
        assert!(!old.join("engine").exists());
        let refused = Store::open_engine(&old, None, Engine::Fjall).err().unwrap();
        assert!(
            matches!(
                refused,
                StoreError::WrongEngine {
                    found: "sled",
                    asked: "fjall"
                }
            ),
            "{refused}"
        );
        Store::open_engine(&old, None, Engine::Sled).unwrap();

        std::fs::create_dir_all(&odd).unwrap();
        std::fs::write(odd.join("engine"), "redb").unwrap();
        let refused = Store::open_engine(&odd, None, Engine::Fjall).err().unwrap();
        assert!(refused.is_corruption(), "{refused}");

        // A mounted volume's lost+found, or what a quarantine left in
        // place, is not a store: a new one is made in the engine asked.
        let mounted = dir.path().join("mounted");
        std::fs::create_dir_all(mounted.join("lost+found")).unwrap();
        std::fs::create_dir_all(mounted.join("quarantined-1-0/db")).unwrap();
        Store::open_engine(&mounted, None, Engine::Fjall).unwrap();
        assert_eq!(
            std::fs::read_to_string(mounted.join("engine")).unwrap(),
            "fjall"
        );
    }

    /// A fjall store is held by one handle at a time, as sled's: a second
    /// open is told `Locked` (which the supervisor waits out) until every
    /// handle of the first, its keyspaces included, is gone.
    #[test]
    fn a_fjall_store_is_held_by_one_handle_at_a_time() {
        use crate::store::Engine;
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open_engine(dir.path(), None, Engine::Fjall).unwrap();
        let ks = first.keyspace("history").unwrap();
        drop(first);
        let held = Store::open_engine(dir.path(), None, Engine::Fjall)
            .err()
            .unwrap();
        assert!(matches!(held, StoreError::Locked(_)), "{held}");
        assert!(!held.is_corruption());
        ks.commit(vec![(b"k".to_vec(), Some(b"v".to_vec()))])
            .unwrap();
        drop(ks);
        let again = Store::open_engine(dir.path(), None, Engine::Fjall).unwrap();
        assert_eq!(
            again.keyspace("history").unwrap().get(b"k").unwrap(),
            Some(b"v".to_vec())
        );
    }

    /// Writes to several partitions commit as one batch; each keeps its
    /// own.
    #[test]
    fn keyspaces_commit_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_engine(dir.path(), None, crate::store::Engine::Fjall).unwrap();
        let (a, b) = (
            store.keyspace("a.g1").unwrap(),
            store.keyspace("b").unwrap(),
        );
        crate::store::commit_all(vec![
            (&*a, vec![(b"x".to_vec(), Some(b"1".to_vec()))]),
            (&*b, vec![(b"x".to_vec(), Some(b"2".to_vec()))]),
        ])
        .unwrap();
        assert_eq!(a.get(b"x").unwrap(), Some(b"1".to_vec()));
        assert_eq!(b.get(b"x").unwrap(), Some(b"2".to_vec()));
        assert!(store.keyspace_names().contains(&"a.g1".to_string()));
    }
}
