//! Signed events: tamper evidence beyond the hash chain, which anyone who
//! may publish to a conversation's subject could extend. A writer signs the
//! stored bytes of each event it appends (ed25519) and puts the signature
//! in the `Im-Sig` header as `<key id>.<base64url signature>`. The public
//! keys are registered by the operator in the `im_writer_keys` bucket (a
//! gateway may read nothing there and write nothing), each with the first
//! IM_CONV sequence it signs from; the auditor checks every event from the
//! first registration on (`im-replay verify`).

use std::collections::HashMap;
use std::path::Path;

use async_nats::jetstream;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{BoxError, OrUnavailable, StreamsError};

/// The header carrying an event's signature.
pub const HDR_SIGNATURE: &str = "Im-Sig";

/// An event's signature as `WriterKeys::check_many` takes it.
#[derive(Clone, Copy, Debug)]
pub struct Signed<'a> {
    pub stream_seq: u64,
    /// Its `Im-Sig` header.
    pub header: Option<&'a str>,
    /// The stored bytes the signature covers.
    pub payload: &'a [u8],
}

/// Where the writers' public keys are registered.
pub const WRITER_KEYS_BUCKET: &str = "im_writer_keys";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A writer's signing key (its 32-byte seed, kept in a private file).
pub struct EventSigner {
    key_id: String,
    key: SigningKey,
}

/// The id of a public key: the first 16 hex digits of its sha256.
pub fn key_id(public: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(public.as_bytes())[..8])
}

impl EventSigner {
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        EventSigner {
            key_id: key_id(&key.verifying_key()),
            key,
        }
    }

    /// The seed in `path` (base64url), or a new one written there (owner
    /// only) when the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, StreamsError> {
        let config =
            |e: BoxError| StreamsError::setting(format!("signing key {}", path.display()), e);
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = B64.decode(text.trim()).map_err(|e| config(e.into()))?;
                let seed: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| config("not 32 bytes".into()))?;
                Ok(Self::from_seed(seed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let seed: [u8; 32] = rand::random();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| config(e.into()))?;
                }
                std::fs::write(path, B64.encode(seed)).map_err(|e| config(e.into()))?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let private = std::fs::Permissions::from_mode(0o600);
                    std::fs::set_permissions(path, private).map_err(|e| config(e.into()))?;
                }
                Ok(Self::from_seed(seed))
            }
            Err(e) => Err(config(e.into())),
        }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn public(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The `Im-Sig` value for an event's stored bytes.
    pub fn sign(&self, payload: &[u8]) -> String {
        let signature = self.key.sign(payload);
        format!("{}.{}", self.key_id, B64.encode(signature.to_bytes()))
    }
}

/// A registered key: the public half and the first IM_CONV sequence it
/// signs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Registration {
    pub public_key: String,
    pub from_seq: u64,
}

/// Why an event's signature does not hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("unsigned (no {HDR_SIGNATURE} header)")]
    Unsigned,
    #[error("signed by key {0:?}, which is not registered")]
    UnknownKey(String),
    #[error("the signature by key {0:?} does not match the event")]
    Bad(String),
    #[error("signed by key {key:?}, registered from IM_CONV seq {from_seq}, at seq {at_seq}")]
    NotYetRegistered {
        key: String,
        from_seq: u64,
        at_seq: u64,
    },
}

/// Key ids known not to be registered that a checking process keeps: each
/// is a look-up saved per forged event naming it; past this the oldest
/// answers are forgotten (and asked again).
pub const UNKNOWN_KEYS_MAX: usize = 1_024;

/// The registered keys met so far, by id, and from which IM_CONV sequence
/// events must be signed (none: no key is registered, signatures are not
/// in force).
#[derive(Clone, Debug, Default)]
pub struct WriterKeys {
    known: HashMap<String, (VerifyingKey, u64)>,
    /// Ids looked up and not registered, with the IM_CONV sequence up to
    /// which that answer holds (the log's end when asked: a key registered
    /// since signs only later events); at most `UNKNOWN_KEYS_MAX`.
    unknown: HashMap<String, u64>,
    in_force_from: Option<u64>,
}

impl WriterKeys {
    pub fn insert(&mut self, public: VerifyingKey, from_seq: u64) {
        self.known.insert(key_id(&public), (public, from_seq));
        self.in_force_from = Some(self.in_force_from.map_or(from_seq, |f| f.min(from_seq)));
    }

    pub fn in_force_from(&self) -> Option<u64> {
        self.in_force_from
    }

    /// Whether the event at IM_CONV `stream_seq` must be signed.
    pub fn required_at(&self, stream_seq: u64) -> bool {
        self.in_force_from.is_some_and(|from| stream_seq >= from)
    }

    /// Checks the signature of the event at IM_CONV `stream_seq`, if one
    /// is required there: by a key registered for that position, over its
    /// stored bytes.
    pub fn check_at(
        &self,
        stream_seq: u64,
        header: Option<&str>,
        payload: &[u8],
    ) -> Result<(), SignatureError> {
        let Some((signature, public)) = self.parsed_at(stream_seq, header)? else {
            return Ok(());
        };
        public.verify(payload, &signature).map_err(|_| {
            let id = header.and_then(signer_of).unwrap_or_default();
            SignatureError::Bad(id.to_string())
        })
    }

    /// `check_at` for many events: exactly its answer for each. Not an
    /// ed25519 batch verification, though it would be ~2.5 times cheaper a
    /// signature: a batch accepts signatures whose R is encoded in ways
    /// the single check refuses (not canonical, or with a small-order
    /// part), so a writer-key holder could sign an event that the readers
    /// of a batch show and the writers step over. Callers spread the
    /// events over threads instead.
    pub fn check_many(&self, events: &[Signed<'_>]) -> Vec<Result<(), SignatureError>> {
        events
            .iter()
            .map(|e| self.check_at(e.stream_seq, e.header, e.payload))
            .collect()
    }

    /// The signature and the key an event at `stream_seq` must be verified
    /// with (None when none is required there), or why it is refused before
    /// any verification.
    fn parsed_at(
        &self,
        stream_seq: u64,
        header: Option<&str>,
    ) -> Result<Option<(Signature, VerifyingKey)>, SignatureError> {
        if !self.required_at(stream_seq) {
            return Ok(None);
        }
        let value = header.ok_or(SignatureError::Unsigned)?;
        let (id, sig) = value
            .split_once('.')
            .ok_or_else(|| SignatureError::Bad(value.to_string()))?;
        let (public, from_seq) = self
            .known
            .get(id)
            .ok_or_else(|| SignatureError::UnknownKey(id.to_string()))?;
        if *from_seq > stream_seq {
            return Err(SignatureError::NotYetRegistered {
                key: id.to_string(),
                from_seq: *from_seq,
                at_seq: stream_seq,
            });
        }
        let bytes: [u8; 64] = B64
            .decode(sig)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| SignatureError::Bad(id.to_string()))?;
        Ok(Some((Signature::from_bytes(&bytes), *public)))
    }

    /// Whether key `id` needs no look-up for an event at `stream_seq`.
    pub fn settled(&self, id: &str, stream_seq: u64) -> bool {
        self.known.contains_key(id) || self.unknown.get(id).is_some_and(|at| *at >= stream_seq)
    }
}

async fn bucket(js: &jetstream::Context) -> Result<jetstream::kv::Store, StreamsError> {
    js.get_key_value(WRITER_KEYS_BUCKET)
        .await
        .or_unavailable("writer keys")
}

/// Registers a writer's public key (the operator's to do), signing from
/// the next IM_CONV sequence on; a key registered before keeps its
/// sequence. Returns that sequence.
pub async fn register(js: &jetstream::Context, public: &VerifyingKey) -> Result<u64, StreamsError> {
    let kv = bucket(js).await?;
    if let Some(existing) = kv.get(key_id(public)).await.or_unavailable("writer keys")? {
        if let Ok(r) = serde_json::from_slice::<Registration>(&existing) {
            put_in_force(&kv, r.from_seq).await?;
            return Ok(r.from_seq);
        }
    }
    let mut conv = js
        .get_stream(crate::definitions::CONV_STREAM)
        .await
        .or_unavailable("writer keys")?;
    let from_seq = conv
        .info()
        .await
        .or_unavailable("writer keys")?
        .state
        .last_sequence
        + 1;
    let registration = Registration {
        public_key: B64.encode(public.as_bytes()),
        from_seq,
    };
    let value = serde_json::to_vec(&registration).expect("serializable");
    // In force first, then the key: a reader that sees the key sees
    // signatures required (register a writer's key before it writes).
    put_in_force(&kv, from_seq).await?;
    kv.put(key_id(public), value.into())
        .await
        .or_unavailable("writer keys")?;
    Ok(from_seq)
}

/// The first registration puts signatures in force; a later one leaves the
/// earliest sequence (a create fails when the key exists).
async fn put_in_force(kv: &jetstream::kv::Store, from_seq: u64) -> Result<(), StreamsError> {
    if kv
        .create(IN_FORCE_KEY, from_seq.to_string().into())
        .await
        .is_ok()
    {
        return Ok(());
    }
    match kv.get(IN_FORCE_KEY).await.or_unavailable("writer keys")? {
        Some(_) => Ok(()),
        None => Err(StreamsError::unavailable(
            "writer keys",
            "could not record when signatures start",
        )),
    }
}

/// The key holding the first sequence any key signs from.
const IN_FORCE_KEY: &str = "_in_force_from";

/// Whether signatures are in force, and from which IM_CONV sequence (the
/// auditor asks once; the keys themselves come as events name them).
/// Fails when the bucket cannot be read: an auditor that cannot tell
/// whether signatures are in force does not pass the log. A deployment
/// with no bucket at all (older, or streams restored alone) has never
/// registered a key.
pub async fn registered(js: &jetstream::Context) -> Result<WriterKeys, StreamsError> {
    let mut keys = WriterKeys::default();
    match js.get_stream(format!("KV_{WRITER_KEYS_BUCKET}")).await {
        Err(e) if crate::definitions::is_not_found(&e) => return Ok(keys),
        Err(e) => return Err(StreamsError::unavailable("writer keys", e)),
        Ok(_) => {}
    }
    let kv = bucket(js).await?;
    keys.in_force_from = read_in_force(&kv).await?;
    Ok(keys)
}

impl WriterKeys {
    /// Fetches key `id`'s registration, unless it is known, or known not
    /// to be registered for events up to `stream_seq`.
    pub async fn learn(
        &mut self,
        kv: &jetstream::kv::Store,
        id: &str,
        stream_seq: u64,
    ) -> Result<(), StreamsError> {
        if self.settled(id, stream_seq) {
            return Ok(());
        }
        let Some(value) = kv.get(id).await.or_unavailable("writer keys")? else {
            if self.unknown.len() >= UNKNOWN_KEYS_MAX {
                self.unknown.clear();
            }
            self.unknown.insert(id.to_string(), stream_seq);
            return Ok(());
        };
        let bad = |e: BoxError| StreamsError::setting(format!("writer key {id}"), e);
        let r: Registration = serde_json::from_slice(&value).map_err(|e| bad(e.into()))?;
        let bytes: [u8; 32] = B64
            .decode(&r.public_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("not 32 bytes".into()))?;
        let public = VerifyingKey::from_bytes(&bytes).map_err(|e| bad(e.into()))?;
        self.unknown.remove(id);
        self.known.insert(key_id(&public), (public, r.from_seq));
        Ok(())
    }
}

/// The registered keys as a process that checks events keeps them: asked
/// again whether signatures are in force until they are, and every key an
/// event names fetched once it is needed (`prepare`).
pub struct KeyRing {
    js: jetstream::Context,
    kv: Option<jetstream::kv::Store>,
    keys: WriterKeys,
    /// While no key is registered, how long an answer stands.
    recheck_every: std::time::Duration,
    checked_at: Option<std::time::Instant>,
}

impl KeyRing {
    /// `recheck_every`: how often, while no key is registered, the bucket
    /// is asked again (zero: at every `prepare`).
    pub fn new(js: jetstream::Context, recheck_every: std::time::Duration) -> Self {
        KeyRing {
            js,
            kv: None,
            keys: WriterKeys::default(),
            recheck_every,
            checked_at: None,
        }
    }

    /// Whether it is time to ask again whether signatures are in force.
    fn recheck_due(&self) -> bool {
        self.keys.in_force_from.is_none()
            && self
                .checked_at
                .is_none_or(|at| at.elapsed() >= self.recheck_every)
    }

    /// The keys as prepared so far.
    pub fn keys(&self) -> &WriterKeys {
        &self.keys
    }

    /// Readies the keys for events at these positions, naming these
    /// signers: whether signatures are in force is asked again while they
    /// are not (each call, or every `recheck_every`), and each key named
    /// and not known is looked up once. Fails when the bucket cannot be
    /// read: a process that cannot tell a forgery checks nothing.
    pub async fn prepare<'a>(
        &mut self,
        events: impl IntoIterator<Item = (u64, Option<&'a str>)>,
    ) -> Result<&WriterKeys, StreamsError> {
        let events: Vec<(u64, Option<&str>)> = events.into_iter().collect();
        let Some(upto) = events.iter().map(|(seq, _)| *seq).max() else {
            return Ok(&self.keys);
        };
        if !self.in_force().await? {
            return Ok(&self.keys);
        }
        // Each id once per call, its answer good for every event given (a
        // forger's flood of one unknown key costs one look-up a batch).
        let named: std::collections::BTreeSet<&str> = events
            .iter()
            .filter_map(|(_, sig)| sig.and_then(signer_of))
            .filter(|id| !self.keys.settled(id, upto))
            .collect();
        for id in named {
            let kv = self.bucket().await?.ok_or_else(|| {
                StreamsError::unavailable("writer keys", "the keys bucket is gone")
            })?;
            self.keys.learn(&kv, id, upto).await?;
        }
        Ok(&self.keys)
    }

    /// Whether signatures are in force, asked again when due.
    async fn in_force(&mut self) -> Result<bool, StreamsError> {
        if self.recheck_due() {
            self.checked_at = Some(std::time::Instant::now());
            if let Some(kv) = self.bucket().await? {
                self.keys.in_force_from = read_in_force(&kv).await?;
            }
        }
        Ok(self.keys.in_force_from.is_some())
    }

    /// Whether a writer may append now: while signatures are in force, only
    /// with a key registered. Its events would otherwise be refused by every
    /// projector and stepped over by every other writer, after it had told
    /// its clients they were stored.
    pub async fn allows(&mut self, signer: Option<&EventSigner>) -> Result<(), StreamsError> {
        if !self.in_force().await? {
            return Ok(());
        }
        let Some(signer) = signer else {
            return Err(StreamsError::Config(
                "signatures are required and this writer has no signing key \
                 (IM_EVENT_SIGNING_KEY_FILE)"
                    .into(),
            ));
        };
        let id = signer.key_id();
        if !self.keys.known.contains_key(id) {
            if let Some(kv) = self.bucket().await? {
                self.keys.learn(&kv, id, u64::MAX).await?;
            }
        }
        match self.keys.known.contains_key(id) {
            true => Ok(()),
            false => Err(StreamsError::Config(format!(
                "signatures are required and this writer's key {id} is not registered \
                 (imctl signing-key register)"
            ))),
        }
    }

    /// The bucket, once it exists (None before any key is registered).
    async fn bucket(&mut self) -> Result<Option<jetstream::kv::Store>, StreamsError> {
        if self.kv.is_none() {
            match self.js.get_stream(format!("KV_{WRITER_KEYS_BUCKET}")).await {
                Err(e) if crate::definitions::is_not_found(&e) => return Ok(None),
                Err(e) => return Err(StreamsError::unavailable("writer keys", e)),
                Ok(_) => self.kv = Some(bucket(&self.js).await?),
            }
        }
        Ok(self.kv.clone())
    }
}

/// The first sequence signatures are required from, if any key is
/// registered.
async fn read_in_force(kv: &jetstream::kv::Store) -> Result<Option<u64>, StreamsError> {
    let Some(value) = kv.get(IN_FORCE_KEY).await.or_unavailable("writer keys")? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&value);
    text.trim().parse().map(Some).map_err(|_| {
        StreamsError::Config(format!("{WRITER_KEYS_BUCKET}.{IN_FORCE_KEY} is {text:?}"))
    })
}

/// The key id an `Im-Sig` value names.
pub fn signer_of(header: &str) -> Option<&str> {
    header.split_once('.').map(|(id, _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_holds_for_its_bytes_key_and_position_only() {
        let signer = EventSigner::from_seed([7; 32]);
        let mut keys = WriterKeys::default();
        keys.insert(signer.public(), 10);
        assert_eq!(keys.in_force_from(), Some(10));
        let sig = signer.sign(b"event");
        assert_eq!(keys.check_at(12, Some(&sig), b"event"), Ok(()));
        assert_eq!(
            keys.check_at(12, Some(&sig), b"other"),
            Err(SignatureError::Bad(signer.key_id().into()))
        );
        assert_eq!(
            keys.check_at(12, None, b"event"),
            Err(SignatureError::Unsigned)
        );
        assert_eq!(keys.check_at(9, None, b"event"), Ok(()), "not in force yet");
        let stranger = EventSigner::from_seed([8; 32]);
        assert_eq!(
            keys.check_at(12, Some(&stranger.sign(b"event")), b"event"),
            Err(SignatureError::UnknownKey(stranger.key_id().into()))
        );
        let late = EventSigner::from_seed([9; 32]);
        keys.insert(late.public(), 20);
        assert!(matches!(
            keys.check_at(15, Some(&late.sign(b"event")), b"event"),
            Err(SignatureError::NotYetRegistered { from_seq: 20, .. })
        ));
        assert!(WriterKeys::default().in_force_from().is_none());
    }

    #[test]
    fn many_at_once_answer_as_each_alone() {
        let signer = EventSigner::from_seed([7; 32]);
        let stranger = EventSigner::from_seed([8; 32]);
        let mut keys = WriterKeys::default();
        keys.insert(signer.public(), 10);
        let payloads: Vec<Vec<u8>> = (0..40).map(|i| format!("event {i}").into_bytes()).collect();
        let headers: Vec<Option<String>> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| match i % 10 {
                3 => None,
                5 => Some(stranger.sign(p)),
                7 => Some(signer.sign(b"other bytes")),
                _ => Some(signer.sign(p)),
            })
            .collect();
        let events: Vec<Signed> = payloads
            .iter()
            .zip(&headers)
            .enumerate()
            .map(|(i, (p, h))| Signed {
                stream_seq: 5 + i as u64,
                header: h.as_deref(),
                payload: p,
            })
            .collect();
        let alone: Vec<_> = events
            .iter()
            .map(|e| keys.check_at(e.stream_seq, e.header, e.payload))
            .collect();
        assert_eq!(keys.check_many(&events), alone);
        assert!(alone.iter().filter(|a| a.is_err()).count() > 5);
        let good: Vec<Signed> = events
            .iter()
            .copied()
            .filter(|e| keys.check_at(e.stream_seq, e.header, e.payload).is_ok())
            .collect();
        assert!(keys.check_many(&good).iter().all(Result::is_ok));
    }

    /// A writer-key holder's signature with R the identity written as
    /// y = 1 + p (not its canonical bytes) and s = k·a: an ed25519 batch
    /// accepts it, the single check (the writers') refuses it. Every
    /// reader must answer as the writers do, or a projector would show
    /// an event the writers step over.
    #[test]
    fn a_signature_the_single_check_refuses_is_refused_among_many() {
        use curve25519_dalek::scalar::Scalar;
        use sha2::Sha512;
        let signer = EventSigner::from_seed([7; 32]);
        let mut keys = WriterKeys::default();
        keys.insert(signer.public(), 1);
        let mut r = [0xff; 32];
        (r[0], r[31]) = (0xee, 0x7f);
        let payload = b"an event the writers step over".to_vec();
        let k = Scalar::from_hash(
            Sha512::new()
                .chain_update(r)
                .chain_update(signer.public().as_bytes())
                .chain_update(&payload),
        );
        let s = k * signer.key.to_scalar();
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r);
        sig[32..].copy_from_slice(s.as_bytes());
        let forged = format!("{}.{}", signer.key_id(), B64.encode(sig));
        assert!(keys.check_at(1, Some(&forged), &payload).is_err());
        let honest: Vec<(Vec<u8>, String)> = (0..7)
            .map(|i| format!("event {i}").into_bytes())
            .map(|p| (p.clone(), signer.sign(&p)))
            .collect();
        let mut events: Vec<Signed> = honest
            .iter()
            .enumerate()
            .map(|(i, (p, h))| Signed {
                stream_seq: 2 + i as u64,
                header: Some(h),
                payload: p,
            })
            .collect();
        events.insert(
            3,
            Signed {
                stream_seq: 1,
                header: Some(&forged),
                payload: &payload,
            },
        );
        let answers = keys.check_many(&events);
        assert!(answers[3].is_err(), "{answers:?}");
        assert_eq!(answers.iter().filter(|a| a.is_ok()).count(), 7);
    }

    #[test]
    fn a_seed_file_is_made_once_and_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let first = EventSigner::load_or_create(&path).unwrap();
        let again = EventSigner::load_or_create(&path).unwrap();
        assert_eq!(first.key_id(), again.key_id());
    }
}
