//! WebSocket frames: binary frames carry varint length-delimited protobuf
//! `Envelope`s (several per frame), text frames one JSON `Envelope`.

use axum::extract::ws::Message;
use bytes::{Buf, BytesMut};
use im_schema::v1;
use prost::Message as _;

pub const PROTO_SUBPROTOCOL: &str = "im.v1.proto";
pub const JSON_SUBPROTOCOL: &str = "im.v1.json";

/// Close code telling a client it fell behind and must resync.
pub const CLOSE_RESYNC: u16 = 4008;
/// Close code for a silent connection (no frame within the heartbeat window).
pub const CLOSE_IDLE: u16 = 4000;
/// A frame or message over `Limits::frame_bytes_max` (RFC 6455's 1009).
pub const CLOSE_TOO_LARGE: u16 = 1009;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Proto,
    Json,
}

/// Decodes a binary frame into at most `max` envelopes.
pub fn decode_binary(mut bytes: &[u8], max: usize) -> Result<Vec<v1::Envelope>, String> {
    let mut out = Vec::new();
    while bytes.has_remaining() {
        if out.len() == max {
            return Err(format!("more than {max} envelopes in one frame"));
        }
        let env = v1::Envelope::decode_length_delimited(&mut bytes)
            .map_err(|e| format!("malformed protobuf: {e}"))?;
        out.push(env);
    }
    if out.is_empty() {
        return Err("empty frame".into());
    }
    Ok(out)
}

pub fn decode_text(text: &str) -> Result<v1::Envelope, String> {
    im_schema::from_json(text).map_err(|e| e.to_string())
}

pub fn encode(codec: Codec, env: &v1::Envelope) -> Message {
    match codec {
        Codec::Proto => {
            let mut buf = BytesMut::with_capacity(env.encoded_len() + 5);
            env.encode_length_delimited(&mut buf)
                .expect("BytesMut grows");
            Message::Binary(buf.freeze())
        }
        Codec::Json => Message::Text(im_schema::to_json(env).into()),
    }
}
