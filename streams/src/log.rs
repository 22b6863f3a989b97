//! Reading the log back: what tests, tools and cold writers use to replay a
//! subject (or a wildcard filter) in stream order.

use async_nats::jetstream::{self, stream::RawMessageErrorKind};

use crate::codec::{decode_conv, StoredEvent};
use crate::error::StreamsError;

/// Reads every conversation event matching `filter` (a subject, wildcards
/// allowed) from `from_seq` on, in stream order, at most `limit` of them.
/// One request per event: for bulk replays use an ordered consumer.
pub async fn read_conv_events(
    stream: &jetstream::stream::Stream<impl Sync>,
    filter: &str,
    from_seq: u64,
    limit: usize,
) -> Result<Vec<StoredEvent>, StreamsError> {
    let mut out = Vec::new();
    let mut next = from_seq.max(1);
    while out.len() < limit {
        let got = stream
            .raw_message_builder()
            .sequence(next)
            .next_by_subject(filter)
            .send()
            .await;
        match got {
            Ok(msg) => {
                next = msg.sequence + 1;
                out.push(decode_conv(&msg)?);
            }
            Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => break,
            Err(e) => return Err(StreamsError::unavailable(e)),
        }
    }
    Ok(out)
}
