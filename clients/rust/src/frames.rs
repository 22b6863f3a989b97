//! Frames (docs/protocol.md "Frames"): binary frames carry one or more
//! varint length-delimited envelopes, text frames one envelope in JSON.

use im_schema::v1::{self, envelope::Payload};
use prost::Message as _;
use tokio_tungstenite::tungstenite::Message;

use crate::ClientError;

/// The subprotocol a connection speaks.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Wire {
    #[default]
    Proto,
    Json,
}

impl Wire {
    pub fn subprotocol(self) -> &'static str {
        match self {
            Wire::Proto => "im.v1.proto",
            Wire::Json => "im.v1.json",
        }
    }
}

/// One frame holding `payload`, in the form `wire` speaks.
pub fn encode_frame(wire: Wire, payload: Payload) -> Message {
    let env = v1::Envelope {
        header: None,
        payload: Some(payload),
    };
    match wire {
        Wire::Proto => Message::Binary(env.encode_length_delimited_to_vec().into()),
        Wire::Json => Message::Text(im_schema::to_json(&env).into()),
    }
}

/// Every envelope of a data frame, in order; none for control frames.
pub fn decode_frame(msg: &Message) -> Result<Vec<v1::Envelope>, ClientError> {
    match msg {
        Message::Binary(bytes) => {
            let mut buf: &[u8] = bytes;
            let mut out = Vec::new();
            while !buf.is_empty() {
                let env = v1::Envelope::decode_length_delimited(&mut buf)
                    .map_err(|e| ClientError::Decode(im_schema::DecodeError::Protobuf(e)))?;
                out.push(env);
            }
            Ok(out)
        }
        Message::Text(text) => Ok(vec![
            im_schema::from_json(text.as_str()).map_err(ClientError::Decode)?
        ]),
        _ => Ok(Vec::new()),
    }
}
