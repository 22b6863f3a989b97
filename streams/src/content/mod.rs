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
        allow_direct: true,
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
        Err(e) => return Err(StreamsError::unavailable("content keys", e)),
    }
    js.get_key_value(CONTENT_KEYS_BUCKET)
        .await
        .or_unavailable("content keys")
}
