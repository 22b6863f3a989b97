//! Publishing a command's events with compare-and-set on the subject's
//! last sequence, and reading a conflict's actual sequence.

use std::sync::atomic::Ordering::Relaxed;

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};

use crate::codec::conv_headers;
use crate::error::StreamsError;
use crate::seal::Sealed;

use super::cache::Cached;
use super::{AppendOutcome, Appender, Published};

/// 10071 (standalone; the text carries the actual sequence) or 10164 (the
/// clustered variant, whose text does not) both mean another writer won.
pub(super) fn is_conflict(e: &jetstream::context::PublishError) -> bool {
    if e.kind() == PublishErrorKind::WrongLastSequence {
        return true;
    }
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|je| {
            je.error_code() == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
        })
}

/// 10054: the stream's `max_msg_size` refused the message.
pub(super) fn exceeds_message_limit(e: &jetstream::context::PublishError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|je| je.error_code() == jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)
        || e.to_string().contains("message size exceeds maximum")
}

/// The actual last subject sequence a conflict reports (0 when it does not:
/// the refresh then asks for the subject's last sequence). The number is in
/// the server's description, which only the error's source carries.
pub(super) fn conflict_actual_seq(e: &jetstream::context::PublishError) -> u64 {
    std::error::Error::source(e)
        .map(|s| actual_seq_from(&s))
        .filter(|n| *n > 0)
        .unwrap_or_else(|| actual_seq_from(e))
}

/// The number after "wrong last sequence: " in a text, or 0.
pub(super) fn actual_seq_from(err: &impl std::fmt::Display) -> u64 {
    let text = err.to_string();
    text.split_once("wrong last sequence: ")
        .and_then(|(_, rest)| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|d| d.parse().ok())
        })
        .unwrap_or(0)
}

impl Appender {
    /// Publishes a command's sealed events in order at the cached version;
    /// folds each into the cache once acked.
    pub(super) async fn publish_command(
        &self,
        conv_id: &str,
        subject: &str,
        cached: &mut Cached,
        sealed: Vec<Sealed>,
        primary_msg_id: &str,
        trace_id: &str,
    ) -> Result<Published, StreamsError> {
        self.keys
            .lock()
            .await
            .allows(self.signer.as_deref())
            .await?;
        let count = sealed.len();
        for (i, sealed) in sealed.iter().enumerate() {
            let state = &mut cached.state;
            let last = i + 1 == count;
            let msg_id = if last {
                primary_msg_id.to_string()
            } else {
                format!("{primary_msg_id}:{i}")
            };
            let mut headers = conv_headers(&sealed.event, trace_id, &self.writer_id);
            if let Some(signer) = &self.signer {
                let signature = signer.sign(&sealed.payload);
                headers.insert(crate::signing::HDR_SIGNATURE, signature.as_str());
            }
            let publish = PublishMessage::build()
                .payload(sealed.payload.clone())
                .headers(headers)
                .message_id(&msg_id)
                .expected_last_subject_sequence(state.version);
            let ack = match self.js.send_publish(subject.to_string(), publish).await {
                Ok(fut) => fut.await,
                Err(e) => Err(e),
            };
            match ack {
                Ok(ack) if ack.duplicate => {
                    // Stored before (a retry whose first ack was lost), or
                    // the id was used on another log: then refused, even
                    // for a first event (a creation), which no conflict
                    // retry would ever get past.
                    self.refresh(subject, cached, None).await?;
                    let original = self.original(conv_id, subject, ack.sequence).await?;
                    if last || matches!(original, AppendOutcome::Rejected(_)) {
                        return Ok(Published::Done(original));
                    }
                    // An earlier event of this command was stored before:
                    // re-decide from the state that includes it.
                    return Ok(Published::Conflict {
                        actual: cached.state.version,
                    });
                }
                Ok(ack) => {
                    #[cfg(feature = "fault-injection")]
                    if self
                        .drop_next_ack
                        .swap(false, std::sync::atomic::Ordering::SeqCst)
                    {
                        return Err(StreamsError::unavailable(
                            "publishing",
                            "publish ack lost (injected fault)",
                        ));
                    }
                    state.extend(sealed, ack.sequence);
                    tracing::debug!(
                        trace_id,
                        conv = conv_id,
                        stream_seq = ack.sequence,
                        "event stored"
                    );
                    self.counters.stored.fetch_add(1, Relaxed);
                    cached.last_writer.clone_from(&self.writer_id);
                    let conv_seq = cached.state.conv_seq;
                    cached.seen.record(&msg_id, ack.sequence, conv_seq);
                    if last {
                        return Ok(Published::Done(AppendOutcome::Stored {
                            conv_id: conv_id.to_string(),
                            stream_seq: ack.sequence,
                            conv_seq,
                        }));
                    }
                }
                Err(e) if is_conflict(&e) => {
                    self.counters.conflicts.fetch_add(1, Relaxed);
                    return Ok(Published::Conflict {
                        actual: conflict_actual_seq(&e),
                    });
                }
                Err(e) if exceeds_message_limit(&e) => {
                    return Err(StreamsError::EventTooLarge {
                        bytes: sealed.payload.len(),
                        source: e.into(),
                    })
                }
                Err(e) => return Err(StreamsError::unavailable("publishing", e)),
            }
        }
        unreachable!("decide returns at least one event")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actual_sequence_is_read_from_the_error_text() {
        assert_eq!(actual_seq_from(&"wrong last sequence: 42"), 42);
        assert_eq!(
            actual_seq_from(&"publish failed: wrong last sequence: 7"),
            7
        );
        assert_eq!(actual_seq_from(&"no digits"), 0);
    }
}
