//! `heartbeat`: keeps the connection inside its window; answered at once.

use im_schema::v1::{self, envelope::Payload};

use super::reply;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn run(hb: v1::Heartbeat) -> v1::Envelope {
    reply(Payload::HeartbeatAck(v1::HeartbeatAck {
        client_time_ms: hb.client_time_ms,
        server_time_ms: now_ms(),
    }))
}
