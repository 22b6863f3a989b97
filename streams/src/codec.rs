//! Events on the wire: protobuf payloads with their position and type in
//! headers, so tools can filter without decoding.

use crate::error::StreamsError;
use async_nats::{jetstream::message::StreamMessage, HeaderMap};
use bytes::Bytes;
use im_schema::v1;

pub use im_rules::payload_hash;

pub const HDR_EVENT_TYPE: &str = "Im-Event-Type";
pub const HDR_CONV_SEQ: &str = "Im-Conv-Seq";
pub const HDR_SCHEMA_VERSION: &str = "Im-Schema-Version";
pub const HDR_TRACE_ID: &str = "Im-Trace-Id";
/// The id of the writer that appended the event (see `append/forwarding.rs`).
pub const HDR_WRITER: &str = "Im-Writer";

/// Headers of a conversation event.
pub fn conv_headers(event: &v1::ConvEvent, trace_id: &str, writer_id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(HDR_EVENT_TYPE, crate::conversation::event_type(event));
    h.insert(HDR_CONV_SEQ, event.conv_seq.to_string().as_str());
    h.insert(
        HDR_SCHEMA_VERSION,
        event.schema_version.to_string().as_str(),
    );
    if !trace_id.is_empty() {
        h.insert(HDR_TRACE_ID, trace_id);
    }
    h.insert(HDR_WRITER, writer_id);
    h
}

/// A conversation event as stored, with its position and hash.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    pub stream_seq: u64,
    pub subject: String,
    pub event: v1::ConvEvent,
    pub hash: [u8; 32],
    pub payload: Bytes,
    /// `Im-Writer`, empty when absent.
    pub writer: String,
    /// `Nats-Msg-Id`, empty when absent.
    pub msg_id: String,
    /// `Im-Sig`, the writer's signature of `payload`.
    pub signature: Option<String>,
}

/// Decodes a stored conversation event (from a get).
pub fn decode_conv(msg: &StreamMessage) -> Result<StoredEvent, StreamsError> {
    decode_conv_parts(msg.sequence, &msg.subject, Some(&msg.headers), &msg.payload)
}

/// Decodes a stored conversation event and checks its header agrees with
/// its payload.
pub fn decode_conv_parts(
    stream_seq: u64,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &Bytes,
) -> Result<StoredEvent, StreamsError> {
    let corrupt = |detail: String| StreamsError::Corrupt { stream_seq, detail };
    let event: v1::ConvEvent = im_schema::decode(payload)
        .map_err(|source| StreamsError::Undecodable { stream_seq, source })?;
    let header_seq = headers
        .and_then(|h| h.get(HDR_CONV_SEQ))
        .and_then(|v| v.as_str().parse::<u64>().ok());
    if header_seq != Some(event.conv_seq) {
        return Err(corrupt(format!(
            "header {HDR_CONV_SEQ} {header_seq:?} != payload conv_seq {}",
            event.conv_seq
        )));
    }
    Ok(StoredEvent {
        stream_seq,
        subject: subject.to_string(),
        hash: payload_hash(payload),
        payload: payload.clone(),
        writer: headers
            .and_then(|h| h.get(HDR_WRITER))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default(),
        msg_id: headers
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default(),
        signature: headers
            .and_then(|h| h.get(crate::signing::HDR_SIGNATURE))
            .map(|v| v.as_str().to_string()),
        event,
    })
}
