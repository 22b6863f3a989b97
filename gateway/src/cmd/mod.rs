//! One file per client command. Each takes the authenticated user and the
//! command's payload and returns the envelopes to send back.

pub mod heartbeat;
pub mod receipt;
pub mod send;
pub mod sync;
pub mod typing;

use im_schema::v1;

/// A command's trace id: the client's (header `trace_id`, bounded), or a
/// new one, so that every command's log lines join up (gateway, writer,
/// projector: the id travels in the event's `Im-Trace-Id` header).
pub fn trace_id(given: Option<&str>) -> String {
    /// Longer is not an id: cut, not refused (it only labels logs).
    const TRACE_ID_LEN_MAX: usize = 64;
    match given.map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => t
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(TRACE_ID_LEN_MAX)
            .collect(),
        None => hex::encode(rand::random::<[u8; 8]>()),
    }
}

pub fn reply(payload: v1::envelope::Payload) -> v1::Envelope {
    v1::Envelope {
        header: None,
        payload: Some(payload),
    }
}
