//! Sealing and opening content: what a writer does to a decided event
//! before `seal` positions it, and what a reader does before content
//! leaves for a client, a search index or a push gateway.

use im_rules::content;
use im_schema::v1;

use super::kek::{open_with, seal_with, NONCE_BYTES};
use super::keys::{ContentKeys, Unopened};
use crate::error::StreamsError;

/// The associated data binding a ciphertext to its place: sealed content
/// opens only as `sender`'s in `conv`, under that key. Moving it into
/// another event (another sender, another conversation) fails to open.
pub fn content_aad(conv: &str, sender: &str, epoch: u64, key_rev: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(conv.len() + sender.len() + 40);
    aad.extend_from_slice(b"im.content.v1\0");
    aad.extend_from_slice(conv.as_bytes());
    aad.push(0);
    aad.extend_from_slice(sender.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&epoch.to_be_bytes());
    aad.extend_from_slice(&key_rev.to_be_bytes());
    aad
}

/// Seals the personal content of each event (its conversation's, its
/// actor's key for its time), leaving the rest clear.
pub async fn seal_events(
    keys: &ContentKeys,
    events: &mut [v1::ConvEvent],
) -> Result<(), StreamsError> {
    for ev in events {
        let Some(kind) = ev.kind.as_mut() else {
            continue;
        };
        let Some(plain) = content::take(kind) else {
            continue;
        };
        let (epoch, key_rev, cipher) = keys
            .for_writing(&ev.conversation_id, &ev.actor, ev.at_ms)
            .await?;
        let aad = content_aad(&ev.conversation_id, &ev.actor, epoch, key_rev);
        let mut ciphertext = seal_with(&cipher, &aad, &im_schema::encode(&plain));
        let nonce = ciphertext.drain(..NONCE_BYTES).collect();
        if let Some(slot) = content::sealed_mut(kind) {
            *slot = Some(v1::Sealed {
                epoch,
                key_rev,
                nonce,
                ciphertext,
                state: v1::SealedState::Unspecified as i32,
            });
        }
    }
    Ok(())
}

/// The content `sender` sealed in `conv`.
pub async fn open_sealed(
    keys: &ContentKeys,
    conv: &str,
    sender: &str,
    sealed: &v1::Sealed,
) -> Result<v1::Content, Unopened> {
    let cipher = keys
        .for_reading(conv, sender, sealed.epoch, sealed.key_rev)
        .await?;
    let aad = content_aad(conv, sender, sealed.epoch, sealed.key_rev);
    let mut both = sealed.nonce.clone();
    both.extend_from_slice(&sealed.ciphertext);
    let plain = open_with(&cipher, &aad, &both).map_err(|_| Unopened::Unreadable)?;
    im_schema::decode::<v1::Content>(&plain).map_err(|_| Unopened::Unreadable)
}

/// What a reader could not open: the reason, without the ciphertext.
pub fn unopened(sealed: &v1::Sealed, state: v1::SealedState) -> v1::Sealed {
    v1::Sealed {
        epoch: sealed.epoch,
        key_rev: sealed.key_rev,
        nonce: Vec::new(),
        ciphertext: Vec::new(),
        state: state as i32,
    }
}

/// Opens `kind`'s sealed content in place, as `sender`'s in `conv`:
/// restored where its key opens it, else left sealed with the reason (and
/// no ciphertext). Only a bucket that does not answer is an error.
pub async fn open_kind(
    keys: &ContentKeys,
    conv: &str,
    sender: &str,
    kind: &mut v1::conv_event::Kind,
) -> Result<(), StreamsError> {
    let Some(sealed) = content::sealed(kind).cloned() else {
        return Ok(());
    };
    let state = match open_sealed(keys, conv, sender, &sealed).await {
        Ok(plain) => {
            content::restore(kind, plain);
            *content::sealed_mut(kind).expect("has content") = None;
            return Ok(());
        }
        Err(Unopened::Unavailable(e)) => return Err(e),
        Err(Unopened::Erased) => v1::SealedState::Erased,
        Err(Unopened::Unreadable) => {
            tracing::warn!(conv, epoch = sealed.epoch, "sealed content does not open");
            v1::SealedState::Unreadable
        }
    };
    *content::sealed_mut(kind).expect("has content") = Some(unopened(&sealed, state));
    Ok(())
}

/// Opens an event's sealed content in place (see `open_kind`).
pub async fn open_event(keys: &ContentKeys, event: &mut v1::ConvEvent) -> Result<(), StreamsError> {
    let (conv, actor) = (event.conversation_id.clone(), event.actor.clone());
    match event.kind.as_mut() {
        Some(kind) => open_kind(keys, &conv, &actor, kind).await,
        None => Ok(()),
    }
}
