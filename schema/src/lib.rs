//! The wire format. Only this crate knows how events and client frames are
//! encoded: protobuf (prost) on the wire and in the log, and the proto3 JSON
//! mapping (pbjson) for the JSON text protocol and for auditors.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/im.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/im.v1.serde.rs"));
}

pub use prost::Message;

/// The schema version this build writes. Readers accept events with a
/// version up to this one; newer ones are poison for them (see README).
pub const SCHEMA_VERSION: u32 = 1;

/// Decoding failed: bytes or JSON that are not a valid message.
#[derive(Debug)]
pub enum DecodeError {
    Protobuf(prost::DecodeError),
    Json(serde_json::Error),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Protobuf(e) => write!(f, "malformed protobuf: {e}"),
            DecodeError::Json(e) => write!(f, "malformed json: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes a protobuf message.
pub fn decode<M: prost::Message + Default>(bytes: &[u8]) -> Result<M, DecodeError> {
    M::decode(bytes).map_err(DecodeError::Protobuf)
}

/// Encodes a protobuf message.
pub fn encode<M: prost::Message>(msg: &M) -> Vec<u8> {
    msg.encode_to_vec()
}

/// The JSON form (proto3 JSON mapping: camelCase names, enums as strings,
/// 64-bit integers as strings, bytes as base64).
pub fn to_json<M: serde::Serialize>(msg: &M) -> String {
    serde_json::to_string(msg).expect("generated messages always serialize")
}

/// Parses the JSON form. Unknown fields are refused, so typos are errors.
pub fn from_json<M: serde::de::DeserializeOwned>(text: &str) -> Result<M, DecodeError> {
    serde_json::from_str(text).map_err(DecodeError::Json)
}
