//! The HTTP API (JSON): extraction and the error shape here, one file per
//! group of endpoints. Same bearer tokens as the WebSocket; errors map to
//! one status per `ErrorCode` and a JSON body `{code, message}`.

pub mod commands;
pub mod errors;
pub mod media;
pub mod notify;
pub mod people;
pub mod presence;
pub mod queries;
pub mod routes;
pub mod search;
pub mod status;
pub mod web;

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use im_schema::v1;
use serde::Deserialize as _;

use crate::AppState;

pub use errors::ApiError;

/// A 64-bit integer in a request body, as a JSON number or as a decimal
/// string (proto3 JSON: what every answer uses, since JavaScript cannot
/// hold every 64-bit number). For `#[serde(deserialize_with)]`.
pub fn int64<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de> + std::str::FromStr,
{
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum NumberOrText<T> {
        Number(T),
        Text(String),
    }
    use serde::de::Error as _;
    match NumberOrText::<T>::deserialize(d)? {
        NumberOrText::Number(n) => Ok(n),
        NumberOrText::Text(t) => t
            .parse()
            .map_err(|_| D::Error::custom(format!("{t:?} is not an integer in range"))),
    }
}

/// `int64` for an optional field (with `#[serde(default)]`).
pub fn opt_int64<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de> + std::str::FromStr,
{
    int64(d).map(Some)
}

/// The authenticated user of a request.
pub struct AuthUser(pub String);

impl FromRequestParts<Arc<AppState>> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .map(str::to_string);
        let query = parts.uri.query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("access_token="))
                .map(str::to_string)
        });
        let token = header
            .or(query)
            .ok_or_else(|| ApiError(v1::ErrorCode::Unauthorized, "missing bearer token".into()))?;
        state
            .verifier
            .verify(&token)
            .await
            .map(AuthUser)
            .map_err(|e| {
                let cause = std::error::Error::source(&e).map(|s| s.to_string());
                tracing::debug!(error = %e, cause, "token refused");
                ApiError(v1::ErrorCode::Unauthorized, e.to_string())
            })
    }
}

/// The token of an `Authorization` value: the scheme is case-insensitive
/// (RFC 7235), the token follows one or more spaces.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Protobuf messages as their proto3 JSON form.
pub struct ProtoJson<M>(pub M);

impl<M: serde::Serialize> IntoResponse for ProtoJson<M> {
    fn into_response(self) -> Response {
        let mut resp = (StatusCode::OK, im_schema::to_json(&self.0)).into_response();
        resp.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}
