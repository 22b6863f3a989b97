//! One file per client command. Each takes the authenticated user and the
//! command's payload and returns the envelopes to send back.

pub mod heartbeat;
pub mod receipt;
pub mod send;
pub mod sync;
pub mod typing;

use im_schema::v1;

pub fn reply(payload: v1::envelope::Payload) -> v1::Envelope {
    v1::Envelope {
        header: None,
        payload: Some(payload),
    }
}
