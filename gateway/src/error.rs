//! Where errors meet clients: the rules' refusals and the append path's
//! failures as the protocol's `ErrorCode`, and each code as an HTTP status
//! and an Error frame. Each mapping is one exhaustive match: a new
//! `Rejection` or code does not compile until it is placed here.

use axum::http::StatusCode;
use im_schema::v1;
use im_streams::{Rejection, StreamsError};

pub fn error_frame(
    code: v1::ErrorCode,
    message: impl Into<String>,
    client_msg_id: &str,
) -> v1::Envelope {
    v1::Envelope {
        header: None,
        payload: Some(v1::envelope::Payload::Error(v1::Error {
            code: code as i32,
            message: message.into(),
            client_msg_id: client_msg_id.to_string(),
        })),
    }
}

/// A rule's refusal as the code a client gets (over WebSocket, a send's
/// refusal is an ack with a reason; receipts, typing and HTTP use this).
pub fn rejection_code(r: &Rejection) -> v1::ErrorCode {
    use v1::ErrorCode as C;
    match r {
        Rejection::NotMember
        | Rejection::Forbidden
        | Rejection::Blacklisted
        | Rejection::Muted { .. }
        | Rejection::NotSender
        | Rejection::OwnerMustTransfer
        | Rejection::NotAccepting { .. }
        | Rejection::UnblockFirst => C::Forbidden,
        Rejection::ConversationNotFound | Rejection::MessageNotFound { .. } => C::NotFound,
        Rejection::ConversationExists
        | Rejection::AlreadyMember
        | Rejection::AlreadyBlacklisted
        | Rejection::AlreadyRecalled
        | Rejection::AlreadyContacts
        | Rejection::AlreadyRequested
        | Rejection::AlreadyBlocked => C::Conflict,
        Rejection::NoRequest | Rejection::NotContacts | Rejection::NotBlocked => C::NotFound,
        Rejection::TooLarge { .. } | Rejection::GroupFull { .. } => C::TooLarge,
        Rejection::Invalid { .. }
        | Rejection::NotInDirect
        | Rejection::SelfTarget
        | Rejection::NotMuted
        | Rejection::NotBlacklisted
        | Rejection::MessageOutOfWindow { .. }
        | Rejection::RecallWindowPassed
        | Rejection::CursorBeyondEnd { .. } => C::BadRequest,
    }
}

/// A refusal as an Error frame: its code, and its stable name with the
/// reason as the message.
pub fn rejection_frame(r: &Rejection, client_msg_id: &str) -> v1::Envelope {
    error_frame(
        rejection_code(r),
        format!("{}: {r}", r.code()),
        client_msg_id,
    )
}

/// An append failure as an error code (rejections are acks, not errors).
pub fn streams_code(e: &StreamsError) -> v1::ErrorCode {
    match e {
        StreamsError::Conflict { .. } => v1::ErrorCode::Conflict,
        StreamsError::Unavailable { .. }
        | StreamsError::Connect { .. }
        | StreamsError::IdentityRefused { .. } => v1::ErrorCode::Unavailable,
        StreamsError::InvalidId(_) => v1::ErrorCode::BadRequest,
        StreamsError::EventTooLarge { .. } => v1::ErrorCode::TooLarge,
        StreamsError::Corrupt { .. }
        | StreamsError::Undecodable { .. }
        | StreamsError::IncompatibleStream { .. }
        | StreamsError::Config(_)
        | StreamsError::Setting { .. } => v1::ErrorCode::Internal,
    }
}

pub fn http_status(code: v1::ErrorCode) -> StatusCode {
    match code {
        v1::ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        v1::ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        v1::ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        v1::ErrorCode::NotFound => StatusCode::NOT_FOUND,
        v1::ErrorCode::Conflict => StatusCode::CONFLICT,
        v1::ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        v1::ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        v1::ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        v1::ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        v1::ErrorCode::Internal | v1::ErrorCode::Unspecified => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_reach_http_as_the_documented_statuses() {
        let status = |r: Rejection| http_status(rejection_code(&r)).as_u16();
        assert_eq!(status(Rejection::NotMember), 403);
        assert_eq!(status(Rejection::Muted { until_ms: 1 }), 403);
        assert_eq!(status(Rejection::ConversationNotFound), 404);
        assert_eq!(status(Rejection::AlreadyMember), 409);
        assert_eq!(status(Rejection::GroupFull { max: 1 }), 413);
        assert_eq!(status(Rejection::RecallWindowPassed), 400);
        let not_accepting = Rejection::NotAccepting { user: "u".into() };
        assert_eq!(status(not_accepting), 403);
        assert_eq!(status(Rejection::AlreadyRequested), 409);
        assert_eq!(status(Rejection::NoRequest), 404);
        let frame = rejection_frame(&Rejection::NotMember, "c1");
        let Some(v1::envelope::Payload::Error(e)) = frame.payload else {
            panic!("an error frame")
        };
        assert_eq!(
            (e.code, e.client_msg_id.as_str()),
            (v1::ErrorCode::Forbidden as i32, "c1")
        );
        assert!(e.message.starts_with("not_member: "), "{}", e.message);
    }
}
