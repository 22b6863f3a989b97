//! The one error shape of the HTTP API, on every route and for every
//! failure: `{"code": "ERROR_CODE_...", "message": "...", "reason"?: "..."}`
//! with `application/json`. `code` is the protocol's `ErrorCode` (the same
//! set a WebSocket Error frame carries), `reason` a rule's stable refusal
//! name (`not_member`), `message` for people. Our own failures become an
//! `ApiError` through `crate::error`'s exhaustive matches; what the
//! framework answers by itself (an extractor's rejection, 404, 405, a
//! refused WebSocket upgrade) is put into the same shape by `uniform`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use im_schema::v1;
use im_streams::Rejection;

use crate::error::{http_status, rejection_code};

/// An error as the HTTP API returns it: the status is the code's.
pub struct ApiError(pub v1::ErrorCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(http_status(self.0), self.0, &self.1, None)
    }
}

impl From<crate::media::MediaError> for ApiError {
    fn from(e: crate::media::MediaError) -> Self {
        if let crate::media::MediaError::Backend(source) = &e {
            tracing::warn!(error = %source, "media bookkeeping failed");
        }
        let message = match &e {
            // The id rule it breaks is ours to say (never a parser's text).
            crate::media::MediaError::BadId(why) => format!("{e}: {why}"),
            _ => e.to_string(),
        };
        ApiError(e.code(), message)
    }
}

/// What a failed response is counted as (`im_gateway_rejections`): the
/// rule's name, else the code's.
#[derive(Clone)]
pub struct Refusal(pub String);

/// A command the rules refused: its code, and the rule's name as `reason`.
pub fn refused(r: &Rejection) -> Response {
    let code = rejection_code(r);
    error_response(http_status(code), code, &r.to_string(), Some(r.code()))
}

/// The body every error has, with the headers its status asks for:
/// `Retry-After` on 429 and 503 (overload, not yet projected, no projector:
/// all pass shortly), `WWW-Authenticate` on 401 (RFC 6750).
pub fn error_response(
    status: StatusCode,
    code: v1::ErrorCode,
    message: &str,
    reason: Option<&str>,
) -> Response {
    let mut body = serde_json::json!({"code": code.as_str_name(), "message": message});
    if let Some(reason) = reason {
        body["reason"] = reason.into();
    }
    let mut resp = (status, axum::Json(body)).into_response();
    let counted = reason.unwrap_or(code.as_str_name()).to_string();
    resp.extensions_mut().insert(Refusal(counted));
    let headers = resp.headers_mut();
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="im""#),
        );
    }
    resp
}

/// The code of a status the framework chose. The statuses are axum's and
/// tower-http's own (400, 404, 405, 413, 415, 422, 426...); anything not
/// listed is a failure of ours.
pub fn code_for_status(status: StatusCode) -> v1::ErrorCode {
    use v1::ErrorCode as C;
    match status.as_u16() {
        401 => C::Unauthorized,
        403 => C::Forbidden,
        404 => C::NotFound,
        409 => C::Conflict,
        413 => C::TooLarge,
        429 => C::RateLimited,
        503 => C::Unavailable,
        408 | 504 => C::Timeout,
        400..=499 => C::BadRequest,
        _ => C::Internal,
    }
}

/// An error body the framework wrote as text is kept as the message up to
/// this size: its rejections are one line; anything longer is not ours.
const FRAMEWORK_MESSAGE_BYTES_MAX: usize = 1024;

/// Middleware: an error response not already in the shape (not JSON) is
/// rewritten into it, keeping its status and its text as the message.
pub async fn uniform(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, FRAMEWORK_MESSAGE_BYTES_MAX).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).trim().to_string(),
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    // Its headers stay (405's Allow, an upgrade's Sec-WebSocket-Version),
    // but for the body's own.
    let mut shaped = error_response(status, code_for_status(status), &text, None);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            shaped.headers_mut().entry(name).or_insert(value.clone());
        }
    }
    shaped
}

/// The API's answer to a path it does not serve.
pub async fn not_found() -> Response {
    ApiError(v1::ErrorCode::NotFound, "no such route".into()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn framework_text_errors_take_the_one_shape() {
        let plain = (StatusCode::METHOD_NOT_ALLOWED, "").into_response();
        let resp = uniform(plain).await;
        assert_eq!(resp.status(), 405);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "ERROR_CODE_BAD_REQUEST");
        assert_eq!(v["message"], "Method Not Allowed");
        let resp = uniform((StatusCode::UNAUTHORIZED, "missing").into_response()).await;
        assert_eq!(
            resp.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="im""#
        );
        let ok = uniform((StatusCode::OK, "fine").into_response()).await;
        assert_eq!(ok.status(), 200);
    }

    #[test]
    fn refusals_carry_their_rule() {
        let resp = refused(&Rejection::NotMember);
        assert_eq!(resp.status(), 403);
    }
}
