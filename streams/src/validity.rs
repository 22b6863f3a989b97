//! Whether an event is part of its conversation: the one function that
//! decides it, called by the writers (which step over what fails), the
//! projectors (which dead-letter it) and the auditor (which reports it).
//! An event is part of its conversation when, from the first key's
//! registration on, a key registered for its position signed its stored
//! bytes, and the rules produce exactly it from the state before it
//! (`im_rules::verdict`: the chain link, then `decide`).
//!
//! What fails is not part of the conversation: it extends no chain, so
//! the next honest event chains onto the last valid one, and nobody is
//! shown it.

use im_schema::v1;

use crate::codec::StoredEvent;
use crate::conversation::{apply, ConvState};
use crate::signing::{SignatureError, WriterKeys};
use crate::verdict::{check_event, EventError};

/// Why an event is not part of its conversation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("signature: {0}")]
    Signature(#[source] SignatureError),
    #[error(transparent)]
    Rules(#[from] EventError),
}

impl Invalid {
    /// A stable short code, for counting and filtering.
    pub fn code(&self) -> &'static str {
        match self {
            Invalid::Signature(SignatureError::Unsigned) => "unsigned",
            Invalid::Signature(SignatureError::UnknownKey(_)) => "unknown_key",
            Invalid::Signature(SignatureError::Bad(_)) => "bad_signature",
            Invalid::Signature(SignatureError::NotYetRegistered { .. }) => "key_not_yet_registered",
            Invalid::Rules(e) => e.code(),
        }
    }
}

/// An event as the log holds it, for the check.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    pub stream_seq: u64,
    /// Its `Im-Sig` header.
    pub signature: Option<&'a str>,
    /// The stored bytes the signature covers.
    pub payload: &'a [u8],
    pub event: &'a v1::ConvEvent,
}

impl StoredEvent {
    pub fn candidate(&self) -> Candidate<'_> {
        Candidate {
            stream_seq: self.stream_seq,
            signature: self.signature.as_deref(),
            payload: &self.payload,
            event: &self.event,
        }
    }
}

/// Whether the event is part of the conversation whose state is `state`.
pub fn check(state: &ConvState, keys: &WriterKeys, event: Candidate) -> Result<(), Invalid> {
    let signed = keys.check_at(event.stream_seq, event.signature, event.payload);
    check_signed(state, signed, event.event)
}

/// `check`, the signature's verdict reached already (for a batch at once,
/// `WriterKeys::check_many`): the signature first, then the rules.
pub fn check_signed(
    state: &ConvState,
    signed: Result<(), SignatureError>,
    event: &v1::ConvEvent,
) -> Result<(), Invalid> {
    signed.map_err(Invalid::Signature)?;
    check_event(state, event)?;
    Ok(())
}

/// Checks the event and, when it is part of the conversation, folds it
/// into `state` at its position; otherwise `state` is left as it was.
pub fn fold(state: &mut ConvState, keys: &WriterKeys, stored: &StoredEvent) -> Result<(), Invalid> {
    let c = stored.candidate();
    fold_signed(
        state,
        keys.check_at(c.stream_seq, c.signature, c.payload),
        stored,
    )
}

/// `fold`, the signature's verdict reached already.
pub fn fold_signed(
    state: &mut ConvState,
    signed: Result<(), SignatureError>,
    stored: &StoredEvent,
) -> Result<(), Invalid> {
    check_signed(state, signed, &stored.event)?;
    apply(state, &stored.event);
    state.record_position(stored.stream_seq, stored.hash);
    Ok(())
}
