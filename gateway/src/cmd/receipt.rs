//! `delivery_ack` and `read`: cumulative cursors appended to IM_RCPT (members
//! only, never past the end). Nothing is sent back on success: the other
//! members (the sender among them) get receipt updates from the projector.

use im_schema::v1;
use im_streams::{ReceiptKind, ReceiptOutcome};

use crate::error::{error_frame, rejection_frame, streams_code};
use crate::AppState;

pub async fn run(
    state: &AppState,
    user: &str,
    device: &str,
    conv: &str,
    kind: ReceiptKind,
    up_to_seq: u64,
    trace_id: &str,
) -> Option<v1::Envelope> {
    let started = std::time::Instant::now();
    let outcome = state
        .appender
        .append_receipt(conv, user, device, kind, up_to_seq, trace_id)
        .await;
    state.metrics.append_took("receipt", started);
    match outcome {
        Ok(ReceiptOutcome::Stored { .. }) => None,
        Ok(ReceiptOutcome::Rejected(r)) => Some(rejection_frame(&r, "")),
        Err(e) => Some(error_frame(streams_code(&e), e.to_string(), "")),
    }
}
