//! The storage trait the read models live behind, and its sled backend.
//! Small on purpose: ordered keys, ranges, atomic multi-key commits and an
//! explicit flush are all a projection needs, so the engine can be swapped.

use std::path::Path;
use std::sync::Arc;

/// A storage failure. Projections stop on these (they are not poison: the
/// same event would fail again only if the disk keeps failing).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk refused (full, read-only, gone): may pass.
    #[error("storage i/o")]
    Io(#[source] std::io::Error),
    /// The store's files are not what it wrote: it will not pass.
    #[error("corrupt store: {0}")]
    CorruptStore(#[source] sled::Error),
    /// The same, from the fjall engine.
    #[error("corrupt store: {0}")]
    CorruptEngine(#[source] Box<fjall::Error>),
    /// The store was made by another engine than the one asked for.
    #[error("the store was made by {found}, not {asked}: start with --store-engine {found}, or fold a new store into an empty directory")]
    WrongEngine {
        found: &'static str,
        asked: &'static str,
    },
    /// A value the store holds is not what this build wrote there.
    #[error("corrupt value at {key}: {detail}")]
    Corrupt { key: String, detail: String },
    /// Another handle holds the store's lock: another process, or this
    /// one's previous instance whose last handles are not gone yet.
    #[error("the store is held by another handle")]
    Locked(#[source] std::io::Error),
    /// A value that does not decode as the message its key holds.
    #[error("corrupt value at {key}: not a readable record")]
    Undecodable {
        key: String,
        #[source]
        source: prost::DecodeError,
    },
}

impl StoreError {
    /// Whether the store itself cannot be trusted any more (quarantine and
    /// rebuild), as opposed to the disk refusing for now (wait).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            StoreError::CorruptStore(_)
                | StoreError::CorruptEngine(_)
                | StoreError::Corrupt { .. }
                | StoreError::Undecodable { .. }
        )
    }
}

/// Decodes a stored protobuf value; a failure names the key.
pub fn decode_value<M: prost::Message + Default>(
    key: &[u8],
    bytes: &[u8],
) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|source| StoreError::Undecodable {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One write of a commit: `None` deletes.
pub type Write = (Vec<u8>, Option<Vec<u8>>);

/// An ordered key space.
pub trait Keyspace: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Entries with `start <= key < end`, ascending (or descending), at most
    /// `limit`.
    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        descending: bool,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;
    /// Applies every write or none.
    fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError>;
    /// Makes every commit so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// Visits every entry in key order.
    fn visit(&self, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), StoreError>;
    /// The sled tree it is, as is (no faults in between): `commit_all`
    /// then commits it with others in one transaction.
    fn sled_tree(&self) -> Option<&sled::Tree> {
        None
    }
    /// The fjall partition it is, as is: `commit_all` then commits it with
    /// others in one batch.
    fn fjall(&self) -> Option<&crate::store_fjall::FjallKeyspace> {
        None
    }
}

/// Applies each keyspace's writes, each keyspace's all or none. One fjall
/// batch when every keyspace is a plain fjall partition. One sled
/// transaction when every keyspace is a plain tree of one store: each
/// commit pins sled's log, which writes its buffer out twice (a write and
/// a wake-up of an I/O thread each), and at everyday rates one pin per
/// batch instead of one per projection is most of what a batch costs.
/// Otherwise one commit per keyspace.
pub fn commit_all(parts: Vec<(&dyn Keyspace, Vec<Write>)>) -> Result<(), StoreError> {
    let fjall: Option<Vec<_>> = parts.iter().map(|(ks, _)| (*ks).fjall()).collect();
    if let Some(fjall) = fjall.filter(|f| f.len() > 1) {
        let writes = parts.into_iter().map(|(_, w)| w);
        return crate::store_fjall::commit_together(fjall.into_iter().zip(writes).collect());
    }
    let trees: Option<Vec<sled::Tree>> = parts
        .iter()
        .map(|(ks, _)| ks.sled_tree().cloned())
        .collect();
    let Some(trees) = trees.filter(|t| t.len() > 1) else {
        for (ks, writes) in parts {
            ks.commit(writes)?;
        }
        return Ok(());
    };
    use sled::transaction::{TransactionError, Transactional};
    trees
        .as_slice()
        .transaction(|txs| {
            for (tx, (_, writes)) in txs.iter().zip(&parts) {
                for (k, v) in writes {
                    match v {
                        Some(v) => tx.insert(k.as_slice(), v.as_slice())?,
                        None => tx.remove(k.as_slice())?,
                    };
                }
            }
            Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
        })
        .map_err(|e| match e {
            TransactionError::Storage(e) => engine(e),
            TransactionError::Abort(()) => unreachable!("the transaction never aborts"),
        })
}

/// sled's errors: the disk's refusals may pass; anything else (corrupt or
/// unreadable files, an internal inconsistency) means the store cannot be
/// trusted.
fn engine(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(io) => StoreError::Io(io),
        other => StoreError::CorruptStore(other),
    }
}

/// A switch that makes a store's writes fail as a full disk does: for
/// tests of what a projector does when its disk fills (and empties).
#[derive(Debug, Default)]
pub struct StoreFaults {
    full: std::sync::atomic::AtomicBool,
    /// Reads of keys under this prefix fail (None: all reads work).
    unreadable: std::sync::Mutex<Option<Vec<u8>>>,
}

impl StoreFaults {
    pub fn set_full(&self, full: bool) {
        self.full.store(full, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes reads of the keys under `prefix` fail as a failing disk's do
    /// (an I/O error); None makes every read work again.
    pub fn set_unreadable(&self, prefix: Option<&[u8]>) {
        *self.unreadable.lock().unwrap_or_else(|e| e.into_inner()) = prefix.map(<[u8]>::to_vec);
    }

    fn check_read(&self, key: &[u8]) -> Result<(), StoreError> {
        let unreadable = self.unreadable.lock().unwrap_or_else(|e| e.into_inner());
        if unreadable.as_ref().is_some_and(|p| key.starts_with(p)) {
            return Err(StoreError::Io(std::io::Error::other(
                "read failed (injected)",
            )));
        }
        Ok(())
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.full.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "no space left on device (injected)",
            )));
        }
        Ok(())
    }
}

/// A keyspace whose writes fail while its faults say the disk is full.
struct FaultyKeyspace {
    inner: Arc<dyn Keyspace>,
    faults: Arc<StoreFaults>,
}

impl Keyspace for FaultyKeyspace {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.faults.check_read(key)?;
        self.inner.get(key)
    }

    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        descending: bool,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.faults.check_read(start)?;
        self.inner.range(start, end, descending, limit)
    }

    fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        self.faults.check()?;
        self.inner.commit(writes)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.faults.check()?;
        self.inner.flush()
    }

    fn visit(&self, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
        self.inner.visit(f)
    }
}

/// Bytes of pages sled keeps in memory, all keyspaces together: a rebuild
/// writes a whole new generation while the serving one is read, and with
/// its working set in memory a million-event rebuild never waits on the
/// disk for a page it just wrote.
pub const STORE_CACHE_BYTES: u64 = 1024 * 1024 * 1024;

/// The engine a store is kept in (`--store-engine`, `IM_STORE_ENGINE`).
/// sled is the default; fjall (an LSM tree) writes a key ~6.7x cheaper
/// on a rebuild's pattern (BENCHMARKS.md) and is being measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Engine {
    #[default]
    Sled,
    Fjall,
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sled" => Ok(Engine::Sled),
            "fjall" => Ok(Engine::Fjall),
            other => Err(format!("no store engine {other:?}: sled or fjall")),
        }
    }
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Sled => "sled",
            Engine::Fjall => "fjall",
        }
    }
}

/// The file in a store's directory that names its engine: a store is
/// never opened by the other one.
const ENGINE_FILE: &str = "engine";

/// Files only sled makes in a store's directory: a directory holding one
/// and no marker is a sled store from before the marker. Anything else
/// there (`lost+found` on a mounted volume, a quarantine folder) is not a
/// store.
const SLED_FILES: [&str; 2] = ["conf", "db"];

/// Which engine made the store at `path`, or records `asked` for a new
/// one (written aside, synced, then renamed: a crash leaves no marker or
/// a whole one, never an empty one).
fn engine_of(path: &Path, asked: Engine) -> Result<Engine, StoreError> {
    let marker = path.join(ENGINE_FILE);
    let corrupt = |detail: String| StoreError::Corrupt {
        key: marker.display().to_string(),
        detail,
    };
    match std::fs::read(&marker) {
        // A marker that is not an engine's name is a store's files gone
        // bad: quarantined and folded again, never waited on.
        Ok(bytes) => match std::str::from_utf8(&bytes) {
            Ok(text) => text.trim().parse().map_err(corrupt),
            Err(_) => Err(corrupt("not an engine's name".into())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if SLED_FILES.iter().any(|f| path.join(f).exists()) {
                return Ok(Engine::Sled);
            }
            write_marker(path, asked).map_err(StoreError::Io)?;
            Ok(asked)
        }
        Err(e) => Err(StoreError::Io(e)),
    }
}

fn write_marker(path: &Path, engine: Engine) -> std::io::Result<()> {
    use std::io::Write as _;
    std::fs::create_dir_all(path)?;
    let tmp = path.join(format!("{ENGINE_FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(engine.name().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path.join(ENGINE_FILE))?;
    std::fs::File::open(path)?.sync_all()
}

#[derive(Clone)]
enum Backend {
    Sled(sled::Db),
    Fjall(crate::store_fjall::FjallStore),
}

/// A store of keyspaces (one per projection and generation), in sled or
/// fjall.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    faults: Option<Arc<StoreFaults>>,
}

impl Store {
    /// Opens the store in sled (refused when fjall made it).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_engine(path, None, Engine::Sled)
    }

    /// `open`, its writes failing while `faults` says so (tests).
    pub fn open_with(path: &Path, faults: Option<Arc<StoreFaults>>) -> Result<Self, StoreError> {
        Self::open_engine(path, faults, Engine::Sled)
    }

    /// Opens the store in the engine that made it, or in `asked` when it
    /// is new; refused when it was made by the other one.
    pub fn open_engine(
        path: &Path,
        faults: Option<Arc<StoreFaults>>,
        asked: Engine,
    ) -> Result<Self, StoreError> {
        let found = engine_of(path, asked)?;
        if found != asked {
            return Err(StoreError::WrongEngine {
                found: found.name(),
                asked: asked.name(),
            });
        }
        let mut store = match found {
            Engine::Sled => Self::open_sled(path)?,
            Engine::Fjall => Store {
                backend: Backend::Fjall(crate::store_fjall::FjallStore::open(path)?),
                faults: None,
            },
        };
        store.faults = faults;
        Ok(store)
    }

    /// Opens a sled store. One sled takes for corrupt only because a stop
    /// left a snapshot unfinished (on a full disk) is opened again without
    /// it: its log, from which sled recovers, is whole. (Removed only after
    /// a refusal, never under a running instance's lock.)
    pub(crate) fn open_sled(path: &Path) -> Result<Self, StoreError> {
        match Self::open_once(path) {
            Err(e) if e.is_corruption() && drop_unfinished_snapshots(path)? => {
                Self::open_once(path)
            }
            other => other,
        }
    }

    fn open_once(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(STORE_CACHE_BYTES)
            // Read models are rewritten by every batch and rebuilt whole:
            // fewer page rewrites matter more than the disk they save.
            .mode(sled::Mode::HighThroughput)
            // The live pipeline's flush cadence: a crash loses at most this
            // much of the commits, folded again from the checkpoint that
            // rides in each batch (I13). Rebuilds flush explicitly.
            .flush_every_ms(Some(1_000))
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock") => {
                    StoreError::Locked(io)
                }
                other => engine(other),
            })?;
        Ok(Store {
            backend: Backend::Sled(db),
            faults: None,
        })
    }

    pub fn keyspace(&self, name: &str) -> Result<Arc<dyn Keyspace>, StoreError> {
        let ks: Arc<dyn Keyspace> = match &self.backend {
            Backend::Sled(db) => Arc::new(SledKeyspace {
                tree: db.open_tree(name).map_err(engine)?,
            }),
            Backend::Fjall(f) => f.keyspace(name)?,
        };
        Ok(match &self.faults {
            Some(faults) => Arc::new(FaultyKeyspace {
                inner: ks,
                faults: faults.clone(),
            }),
            None => ks,
        })
    }

    /// Every keyspace in the store, by name.
    pub fn keyspace_names(&self) -> Vec<String> {
        match &self.backend {
            Backend::Sled(db) => db
                .tree_names()
                .into_iter()
                .map(|n| String::from_utf8_lossy(&n).into_owned())
                .collect(),
            Backend::Fjall(f) => f.keyspace_names(),
        }
    }

    /// Deletes a keyspace and everything in it.
    pub fn drop_keyspace(&self, name: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sled(db) => db.drop_tree(name).map(|_| ()).map_err(engine),
            Backend::Fjall(f) => f.drop_keyspace(name),
        }
    }
}

/// Removes the snapshots sled began and never finished (`snap.*.generating`:
/// it renames one when it is complete). A stop on a full disk leaves an
/// empty one, and sled 0.34 then refuses the whole store as corrupt,
/// although its log, from which it recovers without a snapshot, is whole.
/// Whether there was one.
fn drop_unfinished_snapshots(dir: &Path) -> Result<bool, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(StoreError::Io(e)),
    };
    let mut dropped = false;
    for entry in entries {
        let entry = entry.map_err(StoreError::Io)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(file = %entry.path().display(), "an unfinished snapshot removed: the store recovers from its log");
            std::fs::remove_file(entry.path()).map_err(StoreError::Io)?;
            dropped = true;
        }
    }
    Ok(dropped)
}

/// An in-memory keyspace: scratch space for folds whose result is compared
/// or copied, never served.
#[derive(Default)]
pub struct MemKeyspace {
    map: std::sync::Mutex<std::collections::BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemKeyspace {
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<Vec<u8>, Vec<u8>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Keyspace for MemKeyspace {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map().get(key).cloned())
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
        let map = self.map();
        let iter = map.range(start.to_vec()..end.to_vec());
        let pairs: Box<dyn Iterator<Item = (&Vec<u8>, &Vec<u8>)>> = if descending {
            Box::new(iter.rev())
        } else {
            Box::new(iter)
        };
        Ok(pairs
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn commit(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut map = self.map();
        for (k, v) in writes {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn visit(&self, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
        for (k, v) in self.map().iter() {
            f(k, v);
        }
        Ok(())
    }
}

struct SledKeyspace {
    tree: sled::Tree,
}

impl Keyspace for SledKeyspace {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(key).map_err(engine)?.map(|v| v.to_vec()))
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
        let iter = self.tree.range(start..end);
        let pairs: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if descending
        {
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
        let mut batch = sled::Batch::default();
        for (k, v) in writes {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        // A sled batch on one tree is atomic: all of it or none survives a
        // crash, which is what keeps the checkpoint and the model together.
        self.tree.apply_batch(batch).map_err(engine)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.tree.flush().map(|_| ()).map_err(engine)
    }

    fn sled_tree(&self) -> Option<&sled::Tree> {
        Some(&self.tree)
    }

    fn visit(&self, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), StoreError> {
        for r in self.tree.iter() {
            let (k, v) = r.map_err(engine)?;
            f(&k, &v);
        }
        Ok(())
    }
}
