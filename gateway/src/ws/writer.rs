//! The writing half of a connection's one loop: it moves what the outbox
//! holds to the socket, as few frames and writes as the protocol allows.
//! All its state lives here, not in a future, so the loop may drop the
//! future that polls it at any time and lose nothing.

use std::collections::VecDeque;
use std::task::{ready, Context, Poll};

use axum::extract::ws::{Message, WebSocket};
use futures::stream::SplitSink;
use futures::SinkExt;

use crate::frames::{self, Codec};
use crate::outbox::{Outbound, Outbox, Overflowed};

/// Why writing stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// The client fell behind: the outbox overflowed.
    Overflowed,
    /// The socket failed.
    Gone,
    /// Everything queued is written (only when asked to drain).
    Drained,
}

pub struct Writer {
    codec: Codec,
    /// `Metrics::delivery`.
    waited: prometheus_client::metrics::histogram::Histogram,
    /// Taken from the outbox, not yet in a frame.
    staged: VecDeque<Outbound>,
    /// Frames were handed to the socket and want a flush.
    flushing: bool,
    /// Items per batch (the protocol's envelopes per frame).
    batch_max: usize,
    frame_bytes_max: usize,
}

impl Writer {
    pub fn new(
        codec: Codec,
        batch_max: usize,
        frame_bytes_max: usize,
        waited: prometheus_client::metrics::histogram::Histogram,
    ) -> Self {
        Writer {
            waited,
            codec,
            staged: VecDeque::new(),
            flushing: false,
            batch_max,
            frame_bytes_max,
        }
    }

    /// How long the oldest delivery of the batch just taken waited in the
    /// gateway: one observation per batch, not per delivery (a histogram
    /// is a lock every writer shares, and a busy writer takes batches).
    fn measure(&self) {
        let oldest = self.staged.iter().find_map(|item| match item {
            Outbound::Delivery(d) => Some(d.received),
            Outbound::Reply(_) => None,
        });
        if let Some(received) = oldest {
            self.waited.observe(received.elapsed().as_secs_f64());
        }
    }

    /// Writes until the outbox is empty, then waits for more (Pending), or
    /// with `drain` returns `Drained`. What is queued meanwhile goes out
    /// together: one batch per frame (protobuf) and per flush (one write).
    pub fn poll(
        &mut self,
        cx: &mut Context<'_>,
        sink: &mut SplitSink<WebSocket, Message>,
        outbox: &Outbox,
        drain: bool,
    ) -> Poll<Stop> {
        // Checked first: a client that stops reading leaves the socket
        // unwritable, and its outbox fills meanwhile.
        if outbox.poll_overflow(cx).is_ready() {
            return Poll::Ready(Stop::Overflowed);
        }
        loop {
            if self.flushing {
                if ready!(sink.poll_flush_unpin(cx)).is_err() {
                    return Poll::Ready(Stop::Gone);
                }
                self.flushing = false;
            }
            if self.staged.is_empty() {
                match outbox.poll_drain(cx, &mut self.staged, self.batch_max) {
                    Poll::Ready(Ok(())) => self.measure(),
                    Poll::Ready(Err(Overflowed)) => return Poll::Ready(Stop::Overflowed),
                    Poll::Pending if drain => return Poll::Ready(Stop::Drained),
                    Poll::Pending => return Poll::Pending,
                }
            }
            while !self.staged.is_empty() {
                if ready!(sink.poll_ready_unpin(cx)).is_err() {
                    return Poll::Ready(Stop::Gone);
                }
                let Some(frame) =
                    frames::next_frame(self.codec, &mut self.staged, self.frame_bytes_max)
                else {
                    break;
                };
                if sink.start_send_unpin(frame).is_err() {
                    return Poll::Ready(Stop::Gone);
                }
                self.flushing = true;
            }
        }
    }
}
