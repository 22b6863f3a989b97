//! The HTTP API (JSON). Same bearer tokens as the WebSocket; errors map to
//! one status per `ErrorCode` and a JSON body `{code, message}`.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use im_schema::v1::{self, query_request::Query as Q, query_response::Result as R};
use serde::Deserialize;

use crate::error::http_status;
use crate::AppState;

/// An error as the HTTP API returns it.
pub struct ApiError(pub v1::ErrorCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "code": v1::ErrorCode::try_from(self.0 as i32).map(|c| c.as_str_name()).unwrap_or("ERROR_CODE_INTERNAL"),
            "message": self.1,
        });
        (http_status(self.0), axum::Json(body)).into_response()
    }
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HistoryParams {
    conversation_id: String,
    #[serde(default)]
    from_seq: u64,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    direction: Option<String>,
    /// Read your own writes: an IM_CONV stream sequence to wait for.
    #[serde(default)]
    min_position: u64,
    #[serde(default)]
    access_token: Option<String>,
}

/// Default page size of `GET /v1/history`.
pub const HISTORY_LIMIT_DEFAULT: u32 = 50;

pub async fn history(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Query(p): Query<HistoryParams>,
) -> Result<ProtoJson<v1::HistoryPage>, ApiError> {
    let _ = p.access_token;
    im_streams::ids::validate_id(im_streams::ids::IdKind::Conversation, &p.conversation_id)
        .map_err(|e| ApiError(v1::ErrorCode::BadRequest, e.to_string()))?;
    let direction = match p.direction.as_deref() {
        None | Some("forward") => v1::Direction::Forward,
        Some("backward") => v1::Direction::Backward,
        Some(other) => {
            return Err(ApiError(
                v1::ErrorCode::BadRequest,
                format!("direction {other:?}"),
            ))
        }
    };
    let partition = state.appender.topology().partition_of(&p.conversation_id);
    let query = Q::History(v1::HistoryQuery {
        conversation_id: p.conversation_id,
        user_id: user,
        from_seq: p.from_seq,
        limit: p.limit.unwrap_or(HISTORY_LIMIT_DEFAULT),
        direction: direction as i32,
    });
    match crate::query::ask(&state.client, partition, (p.min_position, 0), query).await {
        Ok(R::History(page)) => Ok(ProtoJson(page)),
        Ok(_) => Err(ApiError(
            v1::ErrorCode::Internal,
            "unexpected answer".into(),
        )),
        Err(code) => Err(ApiError(code, "history unavailable".into())),
    }
}
