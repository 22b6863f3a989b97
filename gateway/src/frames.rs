//! WebSocket frames: binary frames carry varint length-delimited protobuf
//! `Envelope`s (several per frame), text frames one JSON `Envelope`.

use std::collections::VecDeque;

use axum::extract::ws::Message;
use bytes::{Buf, BufMut, BytesMut};
use im_schema::v1;
use prost::Message as _;

use crate::outbox::Outbound;

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

/// The next frame made of the front of `items`. Protobuf: as many items as
/// fit in `bytes_max` (at least one) in one binary frame, each a length-
/// delimited envelope, a delivery's bytes as the projector made them. JSON:
/// one item per text frame. None when `items` holds nothing to send (a
/// delivery that is not an envelope is dropped for JSON devices).
pub fn next_frame(
    codec: Codec,
    items: &mut VecDeque<Outbound>,
    bytes_max: usize,
) -> Option<Message> {
    match codec {
        Codec::Json => {
            while let Some(item) = items.pop_front() {
                let text = match item {
                    Outbound::Delivery(d) => d.json(),
                    Outbound::Reply(env) => Some(im_schema::to_json(&*env).into()),
                };
                if let Some(text) = text {
                    return Some(Message::Text(text));
                }
            }
            None
        }
        Codec::Proto => {
            let first = items.front()?;
            let mut buf = BytesMut::with_capacity(delimited_len(first).min(bytes_max));
            while let Some(item) = items.front() {
                if !buf.is_empty() && buf.len() + delimited_len(item) > bytes_max {
                    break;
                }
                match items.pop_front().expect("peeked") {
                    Outbound::Delivery(d) => {
                        prost::encoding::encode_varint(d.proto.len() as u64, &mut buf);
                        buf.put_slice(&d.proto);
                    }
                    Outbound::Reply(env) => env
                        .encode_length_delimited(&mut buf)
                        .expect("BytesMut grows"),
                }
            }
            Some(Message::Binary(buf.freeze()))
        }
    }
}

fn delimited_len(item: &Outbound) -> usize {
    let len = match item {
        Outbound::Delivery(d) => d.proto.len(),
        Outbound::Reply(env) => env.encoded_len(),
    };
    prost::length_delimiter_len(len) + len
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::outbox::Delivery;

    fn heartbeat(t: i64) -> v1::Envelope {
        v1::Envelope {
            header: None,
            payload: Some(v1::envelope::Payload::Heartbeat(v1::Heartbeat {
                client_time_ms: t,
            })),
        }
    }

    fn mixed(n: i64) -> VecDeque<Outbound> {
        (0..n)
            .map(|t| match t % 2 {
                0 => Outbound::Delivery(Arc::new(Delivery::new(
                    im_schema::encode(&heartbeat(t)).into(),
                ))),
                _ => Outbound::reply(heartbeat(t)),
            })
            .collect()
    }

    #[test]
    fn protobuf_items_share_frames_up_to_the_byte_bound_in_order() {
        let mut items = mixed(10);
        let one = delimited_len(items.front().unwrap());
        let mut got = Vec::new();
        while let Some(frame) = next_frame(Codec::Proto, &mut items, one * 4) {
            let Message::Binary(bytes) = frame else {
                panic!("binary")
            };
            assert!(bytes.len() <= one * 4);
            let envs = decode_binary(&bytes, 64).unwrap();
            assert!(envs.len() <= 4);
            got.extend(envs);
        }
        assert_eq!(got, (0..10).map(heartbeat).collect::<Vec<_>>());
        // A single item over the bound still goes, alone.
        let mut items = mixed(2);
        let Some(Message::Binary(b)) = next_frame(Codec::Proto, &mut items, 1) else {
            panic!()
        };
        assert_eq!(decode_binary(&b, 64).unwrap(), vec![heartbeat(0)]);
        assert_eq!(items.len(), 1);
    }

    #[test]
    fn json_items_go_one_per_text_frame_in_order_bad_deliveries_skipped() {
        let mut items = mixed(4);
        items.insert(
            1,
            Outbound::Delivery(Arc::new(Delivery::new(bytes::Bytes::from_static(b"\xff")))),
        );
        let mut got = Vec::new();
        while let Some(frame) = next_frame(Codec::Json, &mut items, 10) {
            let Message::Text(t) = frame else {
                panic!("text")
            };
            got.push(decode_text(t.as_str()).unwrap());
        }
        assert_eq!(got, (0..4).map(heartbeat).collect::<Vec<_>>());
    }
}
