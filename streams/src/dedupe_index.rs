//! Whether a command is in a conversation's log, for ids a writer no longer
//! remembers (see `seen.rs`), whatever the delay since the original and
//! whichever gateway took it: the `dedupe` projection answers; when it
//! cannot (a projector down or far behind), the writer scans the subject
//! itself, up to a bound.

use std::time::Duration;

use im_schema::v1::{self, query_request::Query, query_response::Result as R};

use crate::conversation::ConvState;
use crate::error::{BoxError, StreamsError};
use crate::log::{read_batch, DIRECT_BATCH_MAX};
use crate::signing::KeyRing;
use crate::subjects::{query_subject, Topology};

/// How long a lookup may take: the projector's own bounded wait for the
/// position (2 s) plus a round trip. Past it the command fails as
/// unavailable, and the client's retry with the same id is safe.
pub const DEDUPE_LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// The original's (stream_seq, conv_seq) when `sender:client_msg_id` is
/// among the conversation's events up to stream sequence `upto`.
pub async fn lookup(
    client: &async_nats::Client,
    topology: Topology,
    conv_id: &str,
    sender: &str,
    client_msg_id: &str,
    upto: u64,
) -> Result<Option<(u64, u64)>, StreamsError> {
    let request = v1::QueryRequest {
        min_position: upto,
        min_rcpt_position: 0,
        query: Some(Query::Dedupe(v1::DedupeQuery {
            sender: sender.to_string(),
            client_msg_id: client_msg_id.to_string(),
            conversation_id: conv_id.to_string(),
        })),
        after_delivered: false,
    };
    let subject = query_subject(topology.partition_of(conv_id));
    let unavailable = |why: BoxError| StreamsError::unavailable("idempotency index", why);
    let reply = tokio::time::timeout(
        DEDUPE_LOOKUP_TIMEOUT,
        client.request(subject, im_schema::encode(&request).into()),
    )
    .await
    .map_err(|_| unavailable("no answer in time".into()))?
    .map_err(|e| unavailable(e.into()))?;
    let response: v1::QueryResponse =
        im_schema::decode(&reply.payload).map_err(|e| unavailable(e.into()))?;
    match response.result {
        Some(R::Dedupe(found)) => Ok(found
            .record
            .filter(|r| found.found && r.conversation_id == conv_id)
            .map(|r| (r.stream_seq, r.conv_seq))),
        Some(R::Error(e)) => Err(unavailable(e.message.into())),
        other => Err(unavailable(format!("unexpected answer {other:?}").into())),
    }
}

/// Events a writer scans itself when the projection cannot answer: about
/// 200 batched reads, well under a second. A longer conversation waits for
/// its projector (the command fails as unavailable, a retry is safe).
pub const SCAN_EVENTS_MAX: u64 = 50_000;

/// The original's (stream_seq, conv_seq), found by reading `subject` up to
/// stream sequence `upto`. Only a command's last event carries its id
/// unsuffixed; an event without a msg id (restored) is matched by payload.
/// Only events that are part of the conversation count (`validity.rs`):
/// a forged event carrying someone's command id answers nothing.
pub async fn scan(
    client: &async_nats::Client,
    subject: &str,
    keys: &tokio::sync::Mutex<KeyRing>,
    (sender, client_msg_id): (&str, &str),
    upto: u64,
) -> Result<Option<(u64, u64)>, StreamsError> {
    let primary = format!("{sender}:{client_msg_id}");
    let conv_id = crate::subjects::conv_id_of_subject(subject).unwrap_or_default();
    let mut state = ConvState::empty(conv_id);
    let (mut next, mut scanned) = (1u64, 0u64);
    while next <= upto {
        let batch = read_batch(
            client,
            crate::definitions::CONV_STREAM,
            subject,
            next,
            DIRECT_BATCH_MAX,
        )
        .await?;
        let last = batch.last_seq();
        if last == 0 {
            return Ok(None);
        }
        let mut ring = keys.lock().await;
        let named = batch
            .events
            .iter()
            .map(|e| (e.stream_seq, e.signature.as_deref()))
            .collect::<Vec<_>>();
        let keys_now = ring.prepare(named).await?;
        for e in batch.events.iter().filter(|e| e.stream_seq <= upto) {
            if crate::validity::fold(&mut state, keys_now, e).is_err() {
                continue;
            }
            let matches = if e.msg_id.is_empty() {
                e.event.actor == sender && e.event.client_msg_id == client_msg_id
            } else {
                e.msg_id == primary
            };
            if matches {
                return Ok(Some((e.stream_seq, e.event.conv_seq)));
            }
        }
        scanned += batch.events.len() as u64;
        if scanned > SCAN_EVENTS_MAX {
            return Err(StreamsError::unavailable("idempotency index", format!(
                "idempotency index unavailable and the conversation has more than {SCAN_EVENTS_MAX} events to scan"
            )));
        }
        next = last + 1;
    }
    Ok(None)
}
