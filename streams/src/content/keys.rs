//! Data keys: one per (conversation, sender, epoch), 32 random bytes,
//! made by the first writer that needs one and kept wrapped by the KEK in
//! the JetStream KV bucket `im_content_keys` (replicated like the
//! streams). Readers (projectors, the notifier, an auditor given the KEK)
//! unwrap them. A key is destroyed by deleting its one message from the
//! bucket's stream (`destroy.rs`); content under it is then erased for
//! every reader, whatever copies of the log exist.
//!
//! The bucket's keys:
//! - `k.<epoch>.<sender hash>.<conversation hash>`: a wrapped data key;
//!   the entry's revision is the key's `key_rev`, so a key made again
//!   under the same name after it was destroyed opens nothing older.
//! - `e.<epoch>`: keys exist in this epoch (what retention lists).
//! - `erased.<sender hash>`: when the user's keys were destroyed (a notice
//!   for every cache).
//! - `kek-check`: a known value wrapped by the KEK, to refuse a wrong one.
//! - `policy`: the epoch length and the retention (JSON).

use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use futures::StreamExt;
use lru::LruCache;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::kek::Kek;
use crate::error::{OrUnavailable, StreamsError};

pub const CONTENT_KEYS_BUCKET: &str = "im_content_keys";
const KEK_CHECK_KEY: &str = "kek-check";
const KEK_CHECK_PLAIN: &[u8] = b"im content keys: this KEK opens them";
pub(crate) const POLICY_KEY: &str = "policy";
/// Keys kept unwrapped per process, for reading and for writing each.
/// An entry is ~200 bytes (name, cipher state), so 800 KiB at most per
/// cache; a miss costs one KV read.
pub const DATA_KEYS_CACHED_MAX: usize = 4096;
/// How long an opened key is used without asking the bucket again. An
/// erasure's notice evicts at once; this bounds how long a cache that
/// missed the notice (its watch restarting) still opens erased content.
pub const DATA_KEY_TTL: Duration = Duration::from_secs(30);
/// Epochs a process remembers having marked (`e.<epoch>`): the few around now.
const EPOCHS_MARKED_MAX: usize = 16;
/// The default epoch: a day. Retention destroys whole epochs, so it is
/// also the granularity of retention.
pub const EPOCH_MS_DEFAULT: u64 = 86_400_000;
/// How long the bucket is given for one read or write before the command
/// waiting on it fails as unavailable.
const KV_TIMEOUT: Duration = Duration::from_secs(5);

/// The deployment's content policy, in the bucket's `policy` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The length of an epoch: data keys are per epoch.
    pub epoch_ms: u64,
    /// Content older than this is erased (its epochs' keys destroyed); 0
    /// keeps it.
    pub retention_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            epoch_ms: EPOCH_MS_DEFAULT,
            retention_ms: 0,
        }
    }
}

impl Policy {
    pub fn epoch_of(&self, at_ms: i64) -> u64 {
        at_ms.max(0) as u64 / self.epoch_ms.max(1)
    }

    /// Whether an epoch is past retention at `now_ms`: all of it is older
    /// than the retention period.
    pub fn expired(&self, epoch: u64, now_ms: i64) -> bool {
        let end = (epoch + 1).saturating_mul(self.epoch_ms);
        self.retention_ms > 0 && end.saturating_add(self.retention_ms) <= now_ms.max(0) as u64
    }
}

/// A short, stable hash of an id for a key name (KV keys allow few
/// characters; ids allow more).
pub fn id_hash(id: &str) -> String {
    hex::encode(&Sha256::digest(id.as_bytes())[..16])
}

pub fn key_name(epoch: u64, sender: &str, conv: &str) -> String {
    format!("k.{epoch}.{}.{}", id_hash(sender), id_hash(conv))
}

/// A data key ready to use.
pub type Cipher = Arc<XChaCha20Poly1305>;

/// Why sealed content cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum Unopened {
    /// Its key is gone: erased on request, or past retention.
    #[error("erased")]
    Erased,
    /// Its key is there but does not open (a corrupted key or ciphertext).
    #[error("unreadable")]
    Unreadable,
    #[error(transparent)]
    Unavailable(#[from] StreamsError),
}

/// A cache entry's key: a fast hash of (conversation, sender, epoch), so a
/// hit costs no sha256 of the ids. The entry keeps what it is of, checked
/// on every hit: two scopes that hash alike only share a miss.
fn slot(conv: &str, sender: &str, epoch: u64) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(conv.as_bytes());
    h.update(&[0]);
    h.update(sender.as_bytes());
    h.update(&[0]);
    h.update(&epoch.to_be_bytes());
    h.digest()
}

/// A cached value with the scope it is of and its key's name.
#[derive(Clone)]
struct Scoped<T> {
    conv: String,
    sender: String,
    name: String,
    value: T,
}

impl<T: Clone> Scoped<T> {
    fn of(&self, conv: &str, sender: &str) -> Option<T> {
        (self.conv == conv && self.sender == sender).then(|| self.value.clone())
    }
}

/// A writer's cached key: its revision, the key, when it was fetched.
type WriteKey = (u64, Cipher, Instant);

/// What a reader's cache knows of one key revision.
#[derive(Clone)]
enum Known {
    Open(Cipher, Instant),
    /// Destroyed, or replaced: a revision never comes back.
    Erased,
    Unreadable(Instant),
}

/// Counters since start (metrics, tests).
#[derive(Default)]
pub struct KeyCounters {
    pub created: AtomicU64,
    pub fetched: AtomicU64,
    pub erased: AtomicU64,
    pub unreadable: AtomicU64,
}

/// The data keys of a deployment that encrypts content.
pub struct ContentKeys {
    kv: kv::Store,
    kek: Kek,
    policy: Mutex<Policy>,
    /// By (slot, key revision).
    reading: Mutex<LruCache<(u64, u64), Scoped<Known>>>,
    /// By slot: the revision and key a writer seals with.
    writing: Mutex<LruCache<u64, Scoped<WriteKey>>>,
    epochs_marked: Mutex<BTreeSet<u64>>,
    pub counters: KeyCounters,
    watch_task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for ContentKeys {
    fn drop(&mut self) {
        if let Some(task) = self
            .watch_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

fn lru<K: std::hash::Hash + Eq, V>() -> Mutex<LruCache<K, V>> {
    Mutex::new(LruCache::new(
        NonZeroUsize::new(DATA_KEYS_CACHED_MAX).expect("nonzero"),
    ))
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn timed<T, E: Into<crate::error::BoxError>>(
    context: &'static str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, StreamsError> {
    match tokio::time::timeout(KV_TIMEOUT, fut).await {
        Ok(r) => r.map_err(|e| StreamsError::unavailable(context, e)),
        Err(e) => Err(StreamsError::unavailable(context, e)),
    }
}

impl ContentKeys {
    /// The deployment's data keys. With no bucket and no KEK the
    /// deployment keeps content clear (None). A KEK and no bucket makes the
    /// bucket (with IM_CONV's replicas) under `policy`. A bucket and no KEK,
    /// or a KEK that does not open the bucket's check, is refused: a
    /// process must never write clear content into an encrypting
    /// deployment, nor keys under another KEK.
    pub async fn open(
        js: &jetstream::Context,
        kek: Option<Kek>,
        policy: Policy,
    ) -> Result<Option<Arc<Self>>, StreamsError> {
        let keys = Self::open_unwatched(js, kek, policy).await?;
        if let Some(keys) = &keys {
            let task = tokio::spawn(watch_notices(Arc::downgrade(keys)));
            *locked(&keys.watch_task) = Some(task.abort_handle());
        }
        Ok(keys)
    }

    /// `open`, for a short-lived reader (`im-replay export`): no watch of
    /// the bucket's notices, so its cache trusts a key for `DATA_KEY_TTL`
    /// (an auditor's identity may read the bucket, not watch it).
    pub async fn open_unwatched(
        js: &jetstream::Context,
        kek: Option<Kek>,
        policy: Policy,
    ) -> Result<Option<Arc<Self>>, StreamsError> {
        let exists = super::bucket_exists(js).await?;
        let kek = match (exists, kek) {
            (false, None) => return Ok(None),
            (true, None) => {
                return Err(StreamsError::Config(format!(
                    "this deployment encrypts message content (the {CONTENT_KEYS_BUCKET} bucket \
                     exists): give its key-encryption key (--kek-file or IM_KEK_FILE)"
                )))
            }
            (_, Some(kek)) => kek,
        };
        let kv = if exists {
            js.get_key_value(CONTENT_KEYS_BUCKET)
                .await
                .or_unavailable("content keys")?
        } else {
            super::create_bucket(js).await?
        };
        check_kek(&kv, &kek).await?;
        let policy = read_or_set_policy(&kv, policy).await?;
        Ok(Some(Arc::new(ContentKeys {
            kv,
            kek,
            policy: Mutex::new(policy),
            reading: lru(),
            writing: lru(),
            epochs_marked: Mutex::default(),
            counters: KeyCounters::default(),
            watch_task: Mutex::new(None),
        })))
    }

    pub fn policy(&self) -> Policy {
        *locked(&self.policy)
    }

    /// The key `sender`'s content in `conv` at `at_ms` is sealed under:
    /// (epoch, key_rev, key), made and stored if this is its first use.
    pub async fn for_writing(
        &self,
        conv: &str,
        sender: &str,
        at_ms: i64,
    ) -> Result<(u64, u64, Cipher), StreamsError> {
        let epoch = self.policy().epoch_of(at_ms);
        let at_slot = slot(conv, sender, epoch);
        let cached = locked(&self.writing)
            .get(&at_slot)
            .and_then(|s| s.of(conv, sender));
        if let Some((rev, cipher, at)) = cached {
            if at.elapsed() < DATA_KEY_TTL {
                return Ok((epoch, rev, cipher));
            }
        }
        let name = key_name(epoch, sender, conv);
        self.mark_epoch(epoch).await?;
        // Two rounds: a writer that loses the race to create reads the
        // winner's key.
        for _ in 0..2 {
            let entry = timed("content key read", self.kv.entry(&name)).await?;
            let (rev, cipher) = match entry.filter(|e| e.operation == kv::Operation::Put) {
                Some(e) => match self.unwrap(&name, &e.value) {
                    Some(c) => (e.revision, c),
                    // A corrupted key: replaced, so what follows is
                    // readable; what it sealed stays unreadable.
                    None => self.replace(&name, e.revision).await?,
                },
                None => match self.create(&name).await? {
                    Some(made) => made,
                    None => continue,
                },
            };
            let entry = Scoped {
                conv: conv.to_string(),
                sender: sender.to_string(),
                name,
                value: (rev, cipher.clone(), Instant::now()),
            };
            locked(&self.writing).put(at_slot, entry);
            return Ok((epoch, rev, cipher));
        }
        Err(StreamsError::Config(format!(
            "content key {name} keeps changing"
        )))
    }

    /// The key content sealed under (`epoch`, `key_rev`) by `sender` in
    /// `conv` opens with, if it still exists.
    pub async fn for_reading(
        &self,
        conv: &str,
        sender: &str,
        epoch: u64,
        key_rev: u64,
    ) -> Result<Cipher, Unopened> {
        if self.policy().expired(epoch, now_ms()) {
            return Err(Unopened::Erased);
        }
        let cache_key = (slot(conv, sender, epoch), key_rev);
        let cached = locked(&self.reading)
            .get(&cache_key)
            .and_then(|s| s.of(conv, sender));
        match cached {
            Some(Known::Open(c, at)) if at.elapsed() < DATA_KEY_TTL => return Ok(c),
            Some(Known::Erased) => return Err(Unopened::Erased),
            Some(Known::Unreadable(at)) if at.elapsed() < DATA_KEY_TTL => {
                return Err(Unopened::Unreadable)
            }
            _ => {}
        }
        self.counters.fetched.fetch_add(1, Relaxed);
        let name = key_name(epoch, sender, conv);
        let entry = timed("content key read", self.kv.entry(&name)).await?;
        let known = match entry.filter(|e| e.operation == kv::Operation::Put) {
            Some(e) if e.revision == key_rev => match self.unwrap(&name, &e.value) {
                Some(c) => Known::Open(c, Instant::now()),
                None => Known::Unreadable(Instant::now()),
            },
            _ => Known::Erased,
        };
        let entry = Scoped {
            conv: conv.to_string(),
            sender: sender.to_string(),
            name,
            value: known.clone(),
        };
        locked(&self.reading).put(cache_key, entry);
        match known {
            Known::Open(c, _) => Ok(c),
            Known::Erased => {
                self.counters.erased.fetch_add(1, Relaxed);
                Err(Unopened::Erased)
            }
            Known::Unreadable(_) => {
                self.counters.unreadable.fetch_add(1, Relaxed);
                Err(Unopened::Unreadable)
            }
        }
    }

    fn unwrap(&self, name: &str, wrapped: &[u8]) -> Option<Cipher> {
        let bytes = self.kek.unwrap(name.as_bytes(), wrapped).ok()?;
        let key: [u8; 32] = bytes.try_into().ok()?;
        Some(Arc::new(XChaCha20Poly1305::new(&key.into())))
    }

    fn fresh_key(&self, name: &str) -> (Vec<u8>, Cipher) {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let wrapped = self.kek.wrap(name.as_bytes(), &key);
        (wrapped, Arc::new(XChaCha20Poly1305::new(&key.into())))
    }

    /// A new key under `name`; None when another writer made one first.
    async fn create(&self, name: &str) -> Result<Option<(u64, Cipher)>, StreamsError> {
        let (wrapped, cipher) = self.fresh_key(name);
        match tokio::time::timeout(KV_TIMEOUT, self.kv.create(name, wrapped.into())).await {
            Ok(Ok(rev)) => {
                self.counters.created.fetch_add(1, Relaxed);
                Ok(Some((rev, cipher)))
            }
            Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Ok(Err(e)) => Err(StreamsError::unavailable("content key create", e)),
            Err(e) => Err(StreamsError::unavailable("content key create", e)),
        }
    }

    async fn replace(&self, name: &str, rev: u64) -> Result<(u64, Cipher), StreamsError> {
        tracing::warn!(key = name, "a content key does not open: replaced");
        let (wrapped, cipher) = self.fresh_key(name);
        let rev = timed(
            "content key replace",
            self.kv.update(name, wrapped.into(), rev),
        )
        .await?;
        Ok((rev, cipher))
    }

    /// Records that keys exist in `epoch` (once per process and epoch).
    async fn mark_epoch(&self, epoch: u64) -> Result<(), StreamsError> {
        if locked(&self.epochs_marked).contains(&epoch) {
            return Ok(());
        }
        let name = format!("e.{epoch}");
        match tokio::time::timeout(KV_TIMEOUT, self.kv.create(&name, Default::default())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Ok(Err(e)) => return Err(StreamsError::unavailable("content epoch mark", e)),
            Err(e) => return Err(StreamsError::unavailable("content epoch mark", e)),
        }
        let mut marked = locked(&self.epochs_marked);
        marked.insert(epoch);
        while marked.len() > EPOCHS_MARKED_MAX {
            marked.pop_first();
        }
        Ok(())
    }

    /// Forgets every cached key of a user whose keys were destroyed.
    pub fn forget_sender(&self, sender_hash: &str) {
        let part = format!(".{sender_hash}.");
        let mut reading = locked(&self.reading);
        let gone: Vec<(u64, u64)> = reading
            .iter()
            .filter(|(_, s)| s.name.contains(&part))
            .map(|(k, _)| *k)
            .collect();
        // Evicted, not marked: a key made since the erasure (a new
        // revision) is theirs again and opens; the next read asks.
        for k in gone {
            reading.pop(&k);
        }
        drop(reading);
        let mut writing = locked(&self.writing);
        let gone: Vec<u64> = writing
            .iter()
            .filter(|(_, s)| s.name.contains(&part))
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            writing.pop(&k);
        }
    }

    fn set_policy(&self, policy: Policy) {
        *locked(&self.policy) = policy;
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Refuses a KEK that does not open the bucket's check (writing the check
/// first if the bucket has none yet).
async fn check_kek(kv: &kv::Store, kek: &Kek) -> Result<(), StreamsError> {
    let stored = match timed("content keys", kv.get(KEK_CHECK_KEY)).await? {
        Some(stored) => stored,
        None => {
            let wrapped = kek.wrap(KEK_CHECK_KEY.as_bytes(), KEK_CHECK_PLAIN);
            let _ = timed("content keys", kv.create(KEK_CHECK_KEY, wrapped.into())).await;
            timed("content keys", kv.get(KEK_CHECK_KEY))
                .await?
                .ok_or_else(|| {
                    StreamsError::Config("the content keys bucket has no kek-check".into())
                })?
        }
    };
    match kek.unwrap(KEK_CHECK_KEY.as_bytes(), &stored) {
        Ok(plain) if plain == KEK_CHECK_PLAIN => Ok(()),
        _ => Err(StreamsError::Config(
            "wrong key-encryption key: it does not open this deployment's content keys \
             (--kek-file or IM_KEK_FILE must hold the key the deployment was started with)"
                .into(),
        )),
    }
}

/// The bucket's policy; `wanted` written first if the bucket has none.
async fn read_or_set_policy(kv: &kv::Store, wanted: Policy) -> Result<Policy, StreamsError> {
    if let Some(stored) = timed("content keys", kv.get(POLICY_KEY)).await? {
        return parse_policy(Some(&stored));
    }
    let text = serde_json::to_vec(&wanted).expect("a policy serializes");
    let _ = timed("content keys", kv.create(POLICY_KEY, text.into())).await;
    let stored = timed("content keys", kv.get(POLICY_KEY)).await?;
    parse_policy(stored.as_deref())
}

pub(crate) fn parse_policy(bytes: Option<&[u8]>) -> Result<Policy, StreamsError> {
    let bytes = bytes.ok_or_else(|| StreamsError::Config("no content policy".into()))?;
    let policy: Policy = serde_json::from_slice(bytes)
        .map_err(|e| StreamsError::setting("the content keys bucket's policy", e))?;
    if policy.epoch_ms == 0 {
        return Err(StreamsError::Config("content policy: epoch_ms is 0".into()));
    }
    Ok(policy)
}

/// Keeps a process's caches in step with erasures and policy changes,
/// watching the bucket (a watch broken by a disruption is made again).
async fn watch_notices(keys: std::sync::Weak<ContentKeys>) {
    loop {
        let Some(strong) = keys.upgrade() else { return };
        let watch = strong.kv.watch_many(["erased.>", POLICY_KEY]).await;
        drop(strong);
        if let Ok(mut watch) = watch {
            while let Some(Ok(entry)) = watch.next().await {
                let Some(keys) = keys.upgrade() else { return };
                if entry.key == POLICY_KEY {
                    if let Ok(p) = parse_policy(Some(&entry.value)) {
                        keys.set_policy(p);
                    }
                } else if let Some(hash) = entry.key.strip_prefix("erased.") {
                    keys.forget_sender(hash);
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_expires_once_all_of_it_is_older_than_retention() {
        let p = Policy {
            epoch_ms: 1_000,
            retention_ms: 3_000,
        };
        assert_eq!(p.epoch_of(5_500), 5);
        // Epoch 5 is [5000, 6000): all of it older than 3 s at 9000.
        assert!(!p.expired(5, 8_999));
        assert!(p.expired(5, 9_000));
        assert!(!Policy::default().expired(0, i64::MAX), "0 keeps");
    }

    #[test]
    fn key_names_hold_no_id_and_are_kv_keys() {
        let name = key_name(3, "ann@example.com", "g/1 x");
        assert!(!name.contains("ann"));
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'));
        assert_eq!(name.split('.').count(), 4);
    }
}
