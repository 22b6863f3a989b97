//! The gateway's one small error code enum and its mappings to HTTP status
//! and Error frames.

use axum::http::StatusCode;
use im_schema::v1;
use im_streams::StreamsError;

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

/// An append failure as an error code (rejections are acks, not errors).
pub fn streams_code(e: &StreamsError) -> v1::ErrorCode {
    match e {
        StreamsError::Conflict { .. } => v1::ErrorCode::Conflict,
        StreamsError::Unavailable(_) => v1::ErrorCode::Unavailable,
        _ => v1::ErrorCode::Internal,
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
