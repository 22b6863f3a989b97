//! Destroying data keys: a user's (`imctl erase`) and whole epochs past
//! retention. Each key is one message of the bucket's stream, deleted with
//! the server's secure erase (its bytes overwritten, not only unlinked);
//! then a notice in the bucket tells every process's cache. Needs no KEK:
//! destroying is the operator's, opening is the readers'.

use async_nats::jetstream;
use futures::{StreamExt, TryStreamExt};

use super::keys::{id_hash, now_ms, parse_policy, Policy, CONTENT_KEYS_BUCKET, POLICY_KEY};
use crate::error::{OrUnavailable, StreamsError};

/// Key deletions in flight at once: enough to erase thousands of keys in
/// seconds, few enough not to crowd the server's API.
const DELETES_IN_FLIGHT_MAX: usize = 32;

async fn bucket_stream(js: &jetstream::Context) -> Result<jetstream::stream::Stream, StreamsError> {
    js.get_stream(format!("KV_{CONTENT_KEYS_BUCKET}"))
        .await
        .map_err(|e| StreamsError::Config(format!("no content keys bucket: {e}")))
}

/// Deletes (securely) every message on subjects matching `filter`;
/// returns how many.
async fn delete_matching(js: &jetstream::Context, filter: &str) -> Result<u64, StreamsError> {
    let stream = bucket_stream(js).await?;
    let subjects = stream
        .info_with_subjects(filter)
        .await
        .or_unavailable("content keys listing")?;
    let stream = &stream;
    subjects
        .map_err(|e| StreamsError::unavailable("content keys listing", e))
        .map(|item| async move {
            let (subject, _) = item?;
            let msg = match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(m) => m,
                // Gone meanwhile (another run of the same erasure).
                Err(e)
                    if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    return Ok(0u64)
                }
                Err(e) => return Err(StreamsError::unavailable("content key read", e)),
            };
            let deleted = stream
                .delete_message(msg.sequence)
                .await
                .or_unavailable("content key delete")?;
            if !deleted {
                return Err(StreamsError::unavailable(
                    "content key delete",
                    "not deleted",
                ));
            }
            Ok::<u64, StreamsError>(1)
        })
        .buffer_unordered(DELETES_IN_FLIGHT_MAX)
        .try_fold(0u64, |n, one| async move { Ok(n + one) })
        .await
}

/// Destroys every data key of `user`'s content (everything they sent, in
/// every conversation and epoch, their profile's too) and leaves the
/// notice caches act on. Returns the number of keys destroyed; running it
/// again destroys what was made since.
pub async fn erase_user(js: &jetstream::Context, user: &str) -> Result<u64, StreamsError> {
    let hash = id_hash(user);
    let theirs = format!("$KV.{CONTENT_KEYS_BUCKET}.k.*.{hash}.*");
    let destroyed = delete_matching(js, &theirs).await?;
    // None left: what a failure or a race left behind fails the erasure
    // (run it again), rather than leaving a key while saying it is gone.
    if any_subject(js, &theirs).await? {
        return Err(StreamsError::unavailable(
            "content key delete",
            "some of the user's keys are still there: run the erasure again",
        ));
    }
    let kv = js
        .get_key_value(CONTENT_KEYS_BUCKET)
        .await
        .or_unavailable("content keys")?;
    kv.put(format!("erased.{hash}"), now_ms().to_string().into())
        .await
        .or_unavailable("content erasure notice")?;
    tracing::info!(keys = destroyed, "a user's content keys destroyed");
    Ok(destroyed)
}

/// What a retention run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expired {
    pub epochs: u64,
    pub keys: u64,
}

/// The bucket's policy now.
pub async fn policy(js: &jetstream::Context) -> Result<Policy, StreamsError> {
    let kv = js
        .get_key_value(CONTENT_KEYS_BUCKET)
        .await
        .or_unavailable("content keys")?;
    let stored = kv.get(POLICY_KEY).await.or_unavailable("content keys")?;
    parse_policy(stored.as_deref())
}

/// Sets the bucket's policy (epoch length, retention); every process
/// takes it up from its watch.
pub async fn set_policy(js: &jetstream::Context, policy: Policy) -> Result<(), StreamsError> {
    if policy.epoch_ms == 0 {
        return Err(StreamsError::Config("epoch_ms must be positive".into()));
    }
    // Ciphertexts name their epoch by number: another length would read
    // every old epoch as another span of time (and retention would
    // destroy it). Fixed once any key exists.
    let current = self::policy(js).await?;
    if policy.epoch_ms != current.epoch_ms && any_epoch_marked(js).await? {
        return Err(StreamsError::Config(format!(
            "the epoch length is {} s and keys exist under it: it cannot change",
            current.epoch_ms / 1_000
        )));
    }
    let kv = js
        .get_key_value(CONTENT_KEYS_BUCKET)
        .await
        .or_unavailable("content keys")?;
    let text = serde_json::to_vec(&policy).expect("a policy serializes");
    kv.put(POLICY_KEY, text.into())
        .await
        .or_unavailable("content policy")?;
    Ok(())
}

/// Whether any message of the bucket is on a subject matching `filter`.
async fn any_subject(js: &jetstream::Context, filter: &str) -> Result<bool, StreamsError> {
    let mut subjects = bucket_stream(js)
        .await?
        .info_with_subjects(filter)
        .await
        .or_unavailable("content keys listing")?;
    let first = subjects
        .try_next()
        .await
        .or_unavailable("content keys listing")?;
    Ok(first.is_some())
}

async fn any_epoch_marked(js: &jetstream::Context) -> Result<bool, StreamsError> {
    any_subject(js, &format!("$KV.{CONTENT_KEYS_BUCKET}.e.*")).await
}

/// Destroys the keys of every epoch past retention at `now_ms`.
pub async fn expire(js: &jetstream::Context, now_ms: i64) -> Result<Expired, StreamsError> {
    let policy = policy(js).await?;
    let mut done = Expired::default();
    if policy.retention_ms == 0 {
        return Ok(done);
    }
    let stream = bucket_stream(js).await?;
    let prefix = format!("$KV.{CONTENT_KEYS_BUCKET}.e.");
    let marks: Vec<(String, usize)> = stream
        .info_with_subjects(format!("{prefix}*"))
        .await
        .or_unavailable("content keys listing")?
        .try_collect()
        .await
        .or_unavailable("content keys listing")?;
    for (subject, _) in marks {
        let Some(epoch) = subject
            .strip_prefix(&prefix)
            .and_then(|e| e.parse::<u64>().ok())
        else {
            continue;
        };
        if !policy.expired(epoch, now_ms) {
            continue;
        }
        let keys = format!("$KV.{CONTENT_KEYS_BUCKET}.k.{epoch}.>");
        done.keys += delete_matching(js, &keys).await?;
        // The mark goes last: a run cut short finds the epoch again.
        delete_matching(js, &subject).await?;
        done.epochs += 1;
    }
    if done.epochs > 0 {
        tracing::info!(
            epochs = done.epochs,
            keys = done.keys,
            "content past retention destroyed"
        );
    }
    Ok(done)
}

/// What an erasure did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Erasure {
    /// Data keys destroyed.
    pub keys: u64,
    /// Where `UserErased` went in IM_CONV.
    pub stream_seq: u64,
}

/// Erases `user`'s content: destroys every key of it, then appends
/// `UserErased` to their own log through `writer` (signed and judged like
/// any event), so every projection drops what it holds of them. Safe to
/// run again: keys made since are destroyed, and the erasure recorded
/// again.
pub async fn erase(
    js: &jetstream::Context,
    writer: &crate::Appender,
    user: &str,
    requested_by: &str,
) -> Result<Erasure, StreamsError> {
    let keys = erase_user(js, user).await?;
    let cmd = crate::Command {
        actor: user.to_string(),
        client_msg_id: format!("erase-{}", now_ms()),
        action: crate::Action::EraseUser {
            requested_by: requested_by.to_string(),
        },
    };
    match writer.execute_people(&cmd, "").await? {
        crate::AppendOutcome::Stored { stream_seq, .. }
        | crate::AppendOutcome::Duplicate { stream_seq, .. } => Ok(Erasure { keys, stream_seq }),
        crate::AppendOutcome::Rejected(r) => Err(StreamsError::Config(format!(
            "the keys are destroyed but the erasure was not recorded: {r}"
        ))),
    }
}
