//! The media trail in IM_MEDIA: one `MediaUploaded` per media id (written by
//! the gateway once the bytes are stored and checked), and a `MediaSent`
//! for each message that carries it. The append path reads the first to
//! check a reference was issued to its sender; downloads read the second
//! to find the conversations whose members may fetch it.

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use futures::StreamExt;
use im_schema::v1;

use crate::error::{OrUnavailable, StreamsError};

/// `MediaSent` records read for one id at most: a download check stops
/// there (a media item re-sent into more conversations than this is found
/// through its uploader or the first ones).
pub const MEDIA_SENT_SCAN_MAX: usize = 1_000;

pub fn uploaded_subject(media_id: &str) -> Result<String, StreamsError> {
    Ok(crate::subjects::media_uploaded_subject(media_id)?)
}

pub fn sent_subject(media_id: &str) -> Result<String, StreamsError> {
    Ok(crate::subjects::media_sent_subject(media_id)?)
}

/// Records an upload; an id is recorded once (a second record is refused
/// by the server's expected-sequence check).
pub async fn record_upload(
    js: &jetstream::Context,
    up: &v1::MediaUploaded,
) -> Result<u64, StreamsError> {
    let id = up
        .media
        .as_ref()
        .map(|m| m.media_id.as_str())
        .unwrap_or_default();
    let subject = uploaded_subject(id)?;
    let mut tries = 0;
    loop {
        let publish = PublishMessage::build()
            .payload(im_schema::encode(up).into())
            .expected_last_subject_sequence(0);
        let sent = js.send_publish(subject.clone(), publish).await;
        let acked = match sent {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match acked {
            Ok(ack) => return Ok(ack.sequence),
            // No responder: the stream has no leader right now (an
            // election on a cluster); nothing was stored, so it is tried
            // again for a while (found by the R3 cluster test).
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound && tries < RECORD_TRIES_MAX => {
                tries += 1;
                tokio::time::sleep(RECORD_RETRY_PAUSE).await;
            }
            Err(e) => return Err(StreamsError::unavailable("media trail", e)),
        }
    }
}

/// Tries of an upload's record while its stream has no leader, and the
/// pause between them: 10 s, past a leader election (4-9 s in nats-server).
const RECORD_TRIES_MAX: u32 = 20;
const RECORD_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// The upload record of a media id, if any.
pub async fn uploaded(
    js: &jetstream::Context,
    media_id: &str,
) -> Result<Option<v1::MediaUploaded>, StreamsError> {
    let subject = uploaded_subject(media_id)?;
    let stream = js
        .get_stream(crate::definitions::MEDIA_STREAM)
        .await
        .or_unavailable("media trail")?;
    match stream.direct_get_last_for_subject(subject).await {
        Ok(msg) => Ok(Some(im_schema::decode(&msg.payload).map_err(|source| {
            StreamsError::Undecodable {
                stream_seq: msg.sequence,
                source,
            }
        })?)),
        Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(StreamsError::unavailable("media trail", e)),
    }
}

pub async fn record_sent(
    js: &jetstream::Context,
    sent: &v1::MediaSent,
) -> Result<(), StreamsError> {
    js.publish(
        sent_subject(&sent.media_id)?,
        im_schema::encode(sent).into(),
    )
    .await
    .or_unavailable("media trail")?
    .await
    .or_unavailable("media trail")?;
    Ok(())
}

/// The conversations a media id was sent into (at most
/// `MEDIA_SENT_SCAN_MAX` records read).
pub async fn sent_conversations(
    js: &jetstream::Context,
    media_id: &str,
) -> Result<Vec<String>, StreamsError> {
    let stream = js
        .get_stream(crate::definitions::MEDIA_STREAM)
        .await
        .or_unavailable("media trail")?;
    let mut consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: sent_subject(media_id)?,
            ..Default::default()
        })
        .await
        .or_unavailable("media trail")?;
    let mut pending = consumer
        .info()
        .await
        .or_unavailable("media trail")?
        .num_pending;
    let mut convs = Vec::new();
    if pending == 0 {
        return Ok(convs);
    }
    let mut messages = consumer.messages().await.or_unavailable("media trail")?;
    while pending > 0 && convs.len() < MEDIA_SENT_SCAN_MAX {
        let Some(msg) = messages.next().await else {
            break;
        };
        let msg = msg.or_unavailable("media trail")?;
        pending = msg.info().or_unavailable("media trail")?.pending;
        if let Ok(sent) = im_schema::decode::<v1::MediaSent>(&msg.payload) {
            if !convs.contains(&sent.conversation_id) {
                convs.push(sent.conversation_id);
            }
        }
    }
    Ok(convs)
}

/// How long reading the uploads' trail may stall before it is given up.
const TRAIL_READ_STALL_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Every upload `user` made, from the trail (read whole: an erasure, rare,
/// may take the time; only the user's records are kept).
pub async fn uploads_of(
    js: &jetstream::Context,
    user: &str,
) -> Result<Vec<v1::MediaUploaded>, StreamsError> {
    let stream = js
        .get_stream(crate::definitions::MEDIA_STREAM)
        .await
        .or_unavailable("media trail")?;
    let config = jetstream::consumer::pull::OrderedConfig {
        filter_subject: "im.media.up.>".into(),
        ..Default::default()
    };
    let mut consumer = stream
        .create_consumer(config)
        .await
        .or_unavailable("media trail")?;
    let mut left = consumer
        .info()
        .await
        .or_unavailable("media trail")?
        .num_pending;
    let mut messages = consumer.messages().await.or_unavailable("media trail")?;
    let mut found = Vec::new();
    while left > 0 {
        let next = tokio::time::timeout(TRAIL_READ_STALL_MAX, messages.next()).await;
        let msg = match next {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(StreamsError::unavailable("media trail", e)),
            Ok(None) | Err(_) => return Err(StreamsError::unavailable("media trail", "stalled")),
        };
        left = msg.info().map(|i| i.pending).unwrap_or(0);
        if let Ok(up) = im_schema::decode::<v1::MediaUploaded>(&msg.payload) {
            if up.uploader == user {
                found.push(up);
            }
        }
    }
    Ok(found)
}
