//! Content encryption (docs/privacy.md): the personal content of events
//! (`im_rules::content`) is sealed with XChaCha20-Poly1305 under a data
//! key per (conversation, sender, epoch); data keys are wrapped by the
//! deployment's key-encryption key and kept in a KV bucket, outside the
//! log. Destroying a key erases what it sealed from every copy of the log
//! while the chain and signatures, which cover the ciphertext, still
//! verify.

mod cipher;
pub mod destroy;
mod kek;
mod keys;

use async_nats::jetstream;

pub use cipher::{content_aad, open_event, open_kind, open_sealed, seal_events, unopened};
pub use im_rules::content::{message_body, sealed as sealed_of, sealed_mut as sealed_slot};
pub use kek::{Kek, WrongKey};
pub use keys::{
    id_hash, key_name, Cipher, ContentKeys, Policy, Unopened, CONTENT_KEYS_BUCKET,
    DATA_KEYS_CACHED_MAX, DATA_KEY_TTL, EPOCH_MS_DEFAULT,
};

use crate::definitions::{is_not_found, CONV_STREAM};
use crate::error::{OrUnavailable, StreamsError};

/// Whether the deployment has a content keys bucket (it encrypts).
pub async fn bucket_exists(js: &jetstream::Context) -> Result<bool, StreamsError> {
    match js.get_stream(format!("KV_{CONTENT_KEYS_BUCKET}")).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(StreamsError::unavailable("content keys", e)),
    }
}

/// The bucket, with IM_CONV's replicas: one key per message of its
/// stream (history 1), so destroying a key leaves nothing of it. Its
/// stream is made here in the layout of a KV bucket's, but allowing a
/// message to be deleted (a bucket's denies it, for good): that is how a
/// key is destroyed (`destroy.rs`).
async fn create_bucket(js: &jetstream::Context) -> Result<jetstream::kv::Store, StreamsError> {
    let replicas = js
        .get_stream(CONV_STREAM)
        .await
        .or_unavailable("content keys")?
        .info()
        .await
        .or_unavailable("content keys")?
        .config
        .num_replicas;
    let config = jetstream::stream::Config {
        name: format!("KV_{CONTENT_KEYS_BUCKET}"),
        subjects: vec![format!("$KV.{CONTENT_KEYS_BUCKET}.>")],
        max_messages_per_subject: 1,
        discard: jetstream::stream::DiscardPolicy::New,
        allow_rollup: true,
        // Reads from the leader: a replica that has not applied a key's
        // creation yet would answer "no such key", which a reader takes
        // for an erasure.
        allow_direct: false,
        deny_delete: false,
        deny_purge: false,
        num_replicas: replicas,
        ..Default::default()
    };
    match js.create_stream(config).await {
        Ok(_) => {}
        // Made by another process meanwhile: the same stream.
        Err(e)
            if matches!(e.kind(), jetstream::context::CreateStreamErrorKind::JetStream(err)
            if err.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST) => {}
        Err(e) => {
            return Err(StreamsError::Config(format!(
                "making the {CONTENT_KEYS_BUCKET} bucket: {e} (an operator makes it: `imctl keys \
                 init`, or `imctl up`)"
            )))
        }
    }
    js.get_key_value(CONTENT_KEYS_BUCKET)
        .await
        .or_unavailable("content keys")
}

/// Where a process finds the deployment's key-encryption key: a file, or
/// the key itself in the environment (never a flag: flags show in `ps`).
/// Neither: the process runs only where content is kept clear.
#[derive(Clone, Default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct KekArgs {
    /// A file holding the key-encryption key (64 hex digits).
    #[cfg_attr(feature = "cli", arg(long = "kek-file", env = "IM_KEK_FILE"))]
    pub kek_file: Option<std::path::PathBuf>,
    /// The key-encryption key itself (64 hex digits), from the environment.
    #[cfg_attr(
        feature = "cli",
        arg(long = "kek", env = "IM_KEK", hide = true, hide_env_values = true)
    )]
    pub kek: Option<String>,
}

/// Shows where the key comes from, never the key.
impl std::fmt::Debug for KekArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl KekArgs {
    pub fn from_file(path: impl Into<std::path::PathBuf>) -> Self {
        KekArgs {
            kek_file: Some(path.into()),
            kek: None,
        }
    }

    /// The key, if one is given; an unreadable one is an error.
    pub fn load(&self) -> Result<Option<Kek>, StreamsError> {
        match (&self.kek_file, &self.kek) {
            (Some(_), Some(_)) => Err(StreamsError::Config(
                "give the key-encryption key once: IM_KEK_FILE or IM_KEK, not both".into(),
            )),
            (Some(path), None) => Kek::load(path).map(Some),
            (None, Some(text)) => Kek::parse(text).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// What the configuration says, without the key.
    pub fn describe(&self) -> String {
        match (&self.kek_file, &self.kek) {
            (Some(p), _) => format!("key-encryption key from {}", p.display()),
            (None, Some(_)) => "key-encryption key from IM_KEK".into(),
            (None, None) => "no key-encryption key (content clear)".into(),
        }
    }
}

/// The deployment's data keys for a process configured with `args` (see
/// `ContentKeys::open`): None where content is kept clear.
pub async fn open_keys(
    js: &jetstream::Context,
    args: &KekArgs,
) -> Result<Option<std::sync::Arc<ContentKeys>>, StreamsError> {
    ContentKeys::open(js, args.load()?, Policy::default()).await
}
