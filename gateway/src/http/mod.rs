//! The HTTP API (JSON): extraction and the error shape here, one file per
//! group of endpoints. Same bearer tokens as the WebSocket; errors map to
//! one status per `ErrorCode` and a JSON body `{code, message}`.

pub mod commands;
pub mod errors;
pub mod media;
pub mod presence;
pub mod queries;
pub mod routes;
pub mod status;
pub mod web;

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use im_schema::v1;

use crate::AppState;

pub use errors::ApiError;

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
            .and_then(|v| v.strip_prefix("Bearer "))
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
            .map_err(|e| ApiError(v1::ErrorCode::Unauthorized, e.to_string()))
    }
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
