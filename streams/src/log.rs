//! Reading the log back: what writers, tests and tools use to replay a
//! subject (or a wildcard filter) in stream order.
//!
//! Reads use batched direct gets (nats-server 2.11+, ADR-31): one request
//! returns up to `DIRECT_BATCH_MAX` messages and an end-of-batch marker with
//! how many more match, so catching up on a tail costs one round trip per
//! batch, not one per event.

use std::time::Duration;

use async_nats::{Client, HeaderMap};
use futures::StreamExt;

use crate::codec::{decode_conv_parts, StoredEvent};
use crate::error::{OrUnavailable, StreamsError};

/// Messages per batched get. Bounds one response's memory (at most this many
/// events of at most the stream's max message size).
pub const DIRECT_BATCH_MAX: usize = 256;

/// How long one batched get may take before the reader reports the stream
/// unavailable.
const DIRECT_BATCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One batch: the events read and how many more match after them.
pub struct Batch {
    pub events: Vec<StoredEvent>,
    /// Messages read that are not events (stream seq, why), kept apart so a
    /// reader can step over them or refuse them.
    pub undecodable: Vec<(u64, StreamsError)>,
    pub pending: u64,
}

impl Batch {
    /// The highest stream sequence read, events or not (0 when none).
    pub fn last_seq(&self) -> u64 {
        let events = self.events.last().map_or(0, |e| e.stream_seq);
        let others = self.undecodable.iter().map(|(s, _)| *s).max().unwrap_or(0);
        events.max(others)
    }
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name).and_then(|v| v.as_str().parse().ok())
}

/// Reads up to `batch` events of `stream` matching `filter` from `from_seq`.
pub async fn read_batch(
    client: &Client,
    stream: &str,
    filter: &str,
    from_seq: u64,
    batch: usize,
) -> Result<Batch, StreamsError> {
    let batch = batch.clamp(1, DIRECT_BATCH_MAX);
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .or_unavailable("reading the log")?;
    let request = serde_json::json!({
        "seq": from_seq.max(1),
        "next_by_subj": filter,
        "batch": batch,
    });
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{stream}"),
            inbox,
            request.to_string().into(),
        )
        .await
        .or_unavailable("reading the log")?;
    let (mut events, mut undecodable) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + DIRECT_BATCH_TIMEOUT;
    // At most `batch` messages and one end marker arrive.
    for _ in 0..=batch {
        let msg = match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(msg)) => msg,
            Ok(None) => {
                return Err(StreamsError::unavailable(
                    "reading the log",
                    "connection closed",
                ))
            }
            Err(_) => {
                return Err(StreamsError::unavailable(
                    "reading the log",
                    format!("batched get on {stream} timed out"),
                ))
            }
        };
        let empty = HeaderMap::new();
        let headers = msg.headers.as_ref().unwrap_or(&empty);
        match msg.status.map(|s| s.as_u16()) {
            // End of batch: how many more match.
            Some(204) => {
                return Ok(Batch {
                    events,
                    undecodable,
                    pending: header_u64(headers, "Nats-Num-Pending").unwrap_or(0),
                })
            }
            // Nothing matches from there on.
            Some(404) => {
                return Ok(Batch {
                    events,
                    undecodable,
                    pending: 0,
                })
            }
            Some(code) => {
                return Err(StreamsError::unavailable(
                    "reading the log",
                    format!(
                        "batched get on {stream}: status {code} {:?}",
                        msg.description
                    ),
                ))
            }
            None => {
                let seq = header_u64(headers, "Nats-Sequence").ok_or_else(|| {
                    StreamsError::unavailable(
                        "reading the log",
                        "batched get reply without Nats-Sequence",
                    )
                })?;
                let subject = headers
                    .get("Nats-Subject")
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_default();
                match decode_conv_parts(seq, &subject, Some(headers), &msg.payload) {
                    Ok(event) => events.push(event),
                    Err(e) => undecodable.push((seq, e)),
                }
            }
        }
    }
    Err(StreamsError::unavailable(
        "reading the log",
        "batched get sent more than it was asked for",
    ))
}

/// Reads every conversation event matching `filter` (a subject, wildcards
/// allowed) from `from_seq` on, in stream order, at most `limit` of them.
pub async fn read_conv_events(
    client: &Client,
    stream: &str,
    filter: &str,
    from_seq: u64,
    limit: usize,
) -> Result<Vec<StoredEvent>, StreamsError> {
    let mut out: Vec<StoredEvent> = Vec::new();
    let mut next = from_seq.max(1);
    while out.len() < limit {
        let mut batch = read_batch(client, stream, filter, next, limit - out.len()).await?;
        if let Some((_, e)) = batch.undecodable.pop() {
            return Err(e);
        }
        let Some(last) = batch.events.last() else {
            break;
        };
        next = last.stream_seq + 1;
        let done = batch.pending == 0;
        out.extend(batch.events);
        if done {
            break;
        }
    }
    Ok(out)
}
