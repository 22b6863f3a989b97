//! An ordered read of one stream that stops at a position and goes on
//! later from there.

use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use futures::StreamExt;

use crate::runner::{js_err, RunError, RunnerConfig, Source};

use super::READ_STALL_MAX;

/// An ordered read of one stream (the instance's partitions) that can
/// stop at a position and go on later from there.
pub(super) struct Reader {
    pub(super) source: Source,
    pub(super) messages: Option<jetstream::consumer::pull::Ordered>,
    pub(super) from_seq: u64,
    pub(super) pending_at_open: u64,
    pub(super) peeked: Option<(u64, jetstream::Message)>,
}

impl Reader {
    pub(super) async fn open(
        js: &jetstream::Context,
        cfg: &RunnerConfig,
        source: Source,
        from_seq: u64,
    ) -> Result<Self, RunError> {
        let stream = js.get_stream(source.stream()).await.map_err(js_err)?;
        let config = OrderedConfig {
            filter_subjects: source.filters(cfg.topology, &cfg.partitions),
            deliver_policy: if from_seq <= 1 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: from_seq,
                }
            },
            ..Default::default()
        };
        let mut consumer = stream.create_consumer(config).await.map_err(js_err)?;
        let pending_at_open = consumer.info().await.map_err(js_err)?.num_pending;
        Ok(Reader {
            source,
            messages: Some(consumer.messages().await.map_err(js_err)?),
            from_seq,
            pending_at_open,
            peeked: None,
        })
    }

    /// The next event at or below `target` (with the events left after
    /// it), or None once the next one is beyond it.
    pub(super) async fn next_upto(
        &mut self,
        at: u64,
        target: u64,
    ) -> Result<Option<(u64, u64, jetstream::Message)>, RunError> {
        // Nothing can lie in (at, target] when target is below where this
        // read starts, or already reached.
        if at >= target || target < self.from_seq {
            return Ok(None);
        }
        let (seq, msg) = match self.peeked.take() {
            Some(p) => p,
            None => {
                let messages = self
                    .messages
                    .as_mut()
                    .ok_or_else(|| js_err("reader closed"))?;
                let msg = tokio::time::timeout(READ_STALL_MAX, messages.next())
                    .await
                    .map_err(|_| js_err("the stream read stalled"))?
                    .ok_or_else(|| js_err("the stream read ended"))?
                    .map_err(js_err)?;
                let seq = msg.info().map_err(js_err)?.stream_sequence;
                (seq, msg)
            }
        };
        if seq > target {
            self.peeked = Some((seq, msg));
            return Ok(None);
        }
        let remaining = msg.info().map_err(js_err)?.pending;
        Ok(Some((seq, remaining, msg)))
    }
}
