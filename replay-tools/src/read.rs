//! Reading a stream in order, as stored: an ordered consumer bounded by the
//! stream's last sequence when the read began, so a read of a live stream
//! ends.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull::OrderedConfig, DeliverPolicy},
};
use bytes::Bytes;
use futures::StreamExt;

use crate::ReplayError;

/// How long one read may wait for a message the server said is there.
const READ_STALL_MAX: Duration = Duration::from_secs(30);

/// One stored message.
#[derive(Clone, Debug)]
pub struct Raw {
    pub stream: String,
    pub seq: u64,
    pub time: time::OffsetDateTime,
    pub subject: String,
    /// Sorted by name, then value.
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
}

impl Raw {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Where a read starts and ends.
#[derive(Clone, Debug, Default)]
pub struct Bounds {
    /// First stream sequence; 0 = the stream's first.
    pub from_seq: u64,
    /// Last stream sequence; 0 = the stream's last when the read began.
    pub to_seq: u64,
    /// First store time (the server seeks to it).
    pub since: Option<time::OffsetDateTime>,
}

pub struct Reader {
    stream: String,
    messages: Option<jetstream::consumer::pull::Ordered>,
    last: u64,
    /// Messages matching the filters still to come, as of the last one read
    /// (counted to the stream's end, not to `to_seq`).
    pub remaining: u64,
}

fn js(e: impl Into<im_streams::error::BoxError>) -> ReplayError {
    ReplayError::JetStream(e.into())
}

impl Reader {
    /// Opens a read of `stream` over the subjects `filters` (all when empty).
    pub async fn open(
        js_ctx: &jetstream::Context,
        stream: &str,
        filters: Vec<String>,
        bounds: &Bounds,
    ) -> Result<Reader, ReplayError> {
        let mut handle = js_ctx.get_stream(stream).await.map_err(js)?;
        let state = handle.info().await.map_err(js)?.state.clone();
        let last = match bounds.to_seq {
            0 => state.last_sequence,
            n => n.min(state.last_sequence),
        };
        let deliver_policy = match (bounds.since, bounds.from_seq) {
            (Some(start_time), _) => DeliverPolicy::ByStartTime { start_time },
            (None, 0 | 1) => DeliverPolicy::All,
            (None, n) => DeliverPolicy::ByStartSequence { start_sequence: n },
        };
        let empty = last == 0 || last < bounds.from_seq || state.messages == 0;
        let mut reader = Reader {
            stream: stream.to_string(),
            messages: None,
            last,
            remaining: 0,
        };
        if empty {
            return Ok(reader);
        }
        let mut consumer = handle
            .create_consumer(OrderedConfig {
                filter_subjects: filters,
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(js)?;
        reader.remaining = consumer.info().await.map_err(js)?.num_pending;
        if reader.remaining > 0 {
            reader.messages = Some(consumer.messages().await.map_err(js)?);
        }
        Ok(reader)
    }

    /// The next message, or None at the end of the bounds.
    pub async fn next(&mut self) -> Result<Option<Raw>, ReplayError> {
        let Some(messages) = self.messages.as_mut() else {
            return Ok(None);
        };
        let msg = tokio::time::timeout(READ_STALL_MAX, messages.next())
            .await
            .map_err(|_| js("the stream read stalled"))?
            .ok_or_else(|| js("the stream read ended"))?
            .map_err(js)?;
        let info = msg.info().map_err(js)?;
        let (seq, pending, published) = (info.stream_sequence, info.pending, info.published);
        if seq > self.last {
            self.messages = None;
            return Ok(None);
        }
        self.remaining = pending;
        if pending == 0 || seq == self.last {
            self.messages = None;
        }
        let mut headers: Vec<(String, String)> = msg
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |v| (name.to_string(), v.as_str().to_string()))
            })
            .collect();
        headers.sort();
        Ok(Some(Raw {
            stream: self.stream.clone(),
            seq,
            time: published,
            subject: msg.subject.to_string(),
            headers,
            payload: msg.payload.clone(),
        }))
    }
}
