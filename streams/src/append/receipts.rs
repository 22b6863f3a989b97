//! Delivery and read cursors, appended to IM_RCPT.

use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use im_schema::v1;

use crate::codec::{HDR_SCHEMA_VERSION, HDR_TRACE_ID};
use crate::conversation::check_receipt;
use crate::error::{OrUnavailable, StreamsError};
use crate::ids::{validate_id, IdKind};

use super::{rejected_id, Appender, ReceiptKind, ReceiptOutcome};

impl Appender {
    /// Appends a cumulative delivery or read cursor (no CAS: readers take the
    /// maximum). Checked against the log's latest state: members only, and
    /// never past the conversation's last seq.
    pub async fn append_receipt(
        &self,
        conv_id: &str,
        user: &str,
        device_id: &str,
        kind: ReceiptKind,
        up_to_seq: u64,
        trace_id: &str,
    ) -> Result<ReceiptOutcome, StreamsError> {
        for (k, field, id) in [
            (IdKind::Conversation, "conversation_id", conv_id),
            (IdKind::User, "user_id", user),
            (IdKind::Device, "device_id", device_id),
        ] {
            if let Err(e) = validate_id(k, id) {
                return Ok(ReceiptOutcome::Rejected(rejected_id(field, e)));
            }
        }
        let state = self.current_state(conv_id).await?;
        if let Err(r) = check_receipt(&state, user, up_to_seq) {
            return Ok(ReceiptOutcome::Rejected(r));
        }
        let now_ms = (self.clock)();
        let (kind_tag, event_kind) = match kind {
            ReceiptKind::Delivered => (
                "delivered",
                v1::receipt_event::Kind::Delivered(v1::Delivered { up_to_seq }),
            ),
            ReceiptKind::Read => (
                "read",
                v1::receipt_event::Kind::Read(v1::Read { up_to_seq }),
            ),
        };
        let event = v1::ReceiptEvent {
            conversation_id: conv_id.to_string(),
            user_id: user.to_string(),
            device_id: device_id.to_string(),
            at_ms: now_ms,
            schema_version: im_schema::SCHEMA_VERSION,
            kind: Some(event_kind),
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(crate::codec::HDR_EVENT_TYPE, kind_tag);
        headers.insert(
            HDR_SCHEMA_VERSION,
            im_schema::SCHEMA_VERSION.to_string().as_str(),
        );
        if !trace_id.is_empty() {
            headers.insert(HDR_TRACE_ID, trace_id);
        }
        let publish = PublishMessage::build()
            .payload(Bytes::from(im_schema::encode(&event)))
            .headers(headers)
            // Per conversation: the same cursor value in two conversations
            // is two receipts.
            .message_id(format!(
                "{conv_id}:{user}:{device_id}:{kind_tag}:{up_to_seq}"
            ));
        let subject = self.topology.rcpt_subject(conv_id).expect("validated");
        let ack = self
            .js
            .send_publish(subject, publish)
            .await
            .or_unavailable("appending a receipt")?
            .await
            .or_unavailable("appending a receipt")?;
        Ok(ReceiptOutcome::Stored {
            stream_seq: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}
