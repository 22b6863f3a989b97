//! Acknowledgements of the pipeline's consumers, shared by the batches of
//! up to `ACK_DELAY`: every ack makes nats-server rewrite its consumer's
//! state file (open, write, rename), which at everyday rates, one batch per
//! event, was a fifth of the server's CPU. Nothing depends on an ack but
//! the server's redelivery: every start reopens the consumers at the
//! checkpoints (I13), so a late or lost ack skips nothing.

use std::time::{Duration, Instant};

use async_nats::jetstream;

use crate::runner::{Source, ACK_WAIT, MAX_ACK_PENDING};

/// How long an ack may wait for later batches to share it: far below
/// `ACK_WAIT` (no redelivery while it waits), and short enough that an
/// operator's view of the consumer is never more than this behind.
pub const ACK_DELAY: Duration = Duration::from_secs(1);
const _: () = assert!(ACK_DELAY.as_secs() * 10 < ACK_WAIT.as_secs());

/// Events a stream may hold unacknowledged before an ack goes at once: a
/// quarter of what the server lets be pending, so that it never stops
/// pushing for want of an ack.
pub const ACK_EVENTS_MAX: u64 = MAX_ACK_PENDING as u64 / 4;

/// The newest message of each stream not yet acknowledged, with how many
/// events it acknowledges, and since when the oldest of them waits.
#[derive(Default)]
pub struct Acks {
    pending: [Option<(jetstream::Message, u64)>; 2],
    since: Option<Instant>,
}

impl Acks {
    /// Holds the acknowledgement of a folded batch's messages (in delivery
    /// order per stream: the last acknowledges all before it).
    pub fn hold(&mut self, batch: impl IntoIterator<Item = (Source, jetstream::Message)>) {
        for (source, msg) in batch {
            let slot = &mut self.pending[source as usize];
            let count = slot.as_ref().map_or(0, |(_, n)| *n) + 1;
            *slot = Some((msg, count));
            self.since.get_or_insert_with(Instant::now);
        }
    }

    /// When the held acks must go (None: none is held).
    pub fn due(&self) -> Option<Instant> {
        let full = self
            .pending
            .iter()
            .flatten()
            .any(|(_, n)| *n >= ACK_EVENTS_MAX);
        match full {
            true => Some(Instant::now()),
            false => self.since.map(|s| s + ACK_DELAY),
        }
    }

    /// Sends the held acks if they are due.
    pub async fn send_if_due(&mut self) {
        if self.due().is_some_and(|at| at <= Instant::now()) {
            self.send().await;
        }
    }

    /// Sends every held ack (one per stream).
    pub async fn send(&mut self) {
        self.since = None;
        for slot in &mut self.pending {
            if let Some((msg, _)) = slot.take() {
                if let Err(e) = msg.ack().await {
                    tracing::warn!(error = %e, "ack failed; redelivery will be skipped");
                }
            }
        }
    }

    /// Forgets the held acks (the consumers are being reopened).
    pub fn drop_all(&mut self) {
        *self = Acks::default();
    }
}
