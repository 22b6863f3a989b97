//! The HTTP API (JSON). Same bearer tokens as the WebSocket; errors map to
//! one status per `ErrorCode` and a JSON body `{code, message}`.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use im_schema::v1::{self, query_request::Query as Q, query_response::Result as R};
use serde::Deserialize;

use crate::error::http_status;
use crate::AppState;

/// An error as the HTTP API returns it.
pub struct ApiError(pub v1::ErrorCode, pub String);

impl From<crate::media::MediaError> for ApiError {
    fn from(e: crate::media::MediaError) -> Self {
        if let crate::media::MediaError::Backend(source) = &e {
            tracing::warn!(error = %source, "media bookkeeping failed");
        }
        ApiError(e.code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "code": v1::ErrorCode::try_from(self.0 as i32).map(|c| c.as_str_name()).unwrap_or("ERROR_CODE_INTERNAL"),
            "message": self.1,
        });
        let mut resp = (http_status(self.0), axum::Json(body)).into_response();
        if matches!(
            self.0,
            v1::ErrorCode::Unavailable | v1::ErrorCode::RateLimited
        ) {
            // Not yet projected, no projector, overload: all pass shortly.
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from_static("1"),
            );
        }
        resp
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
    let conv = p.conversation_id.clone();
    let query = Q::History(v1::HistoryQuery {
        conversation_id: p.conversation_id,
        user_id: user,
        from_seq: p.from_seq,
        limit: p.limit.unwrap_or(HISTORY_LIMIT_DEFAULT),
        direction: direction as i32,
    });
    match crate::query::ask_conv(&state, &conv, p.min_position, query).await {
        Ok(R::History(page)) => Ok(ProtoJson(page)),
        Ok(_) => Err(unexpected()),
        Err(code) => Err(query_error(code, "history")),
    }
}

/// `minPosition`: read your own writes (an IM_CONV `streamSeq` from an ack
/// or a command's answer); until the projector has applied it the answer
/// is 503 with Retry-After, never an older state.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadParams {
    #[serde(default)]
    min_position: u64,
    #[serde(default)]
    access_token: Option<String>,
}

/// A read's failure as the HTTP API answers it.
fn query_error(code: v1::ErrorCode, what: &str) -> ApiError {
    let message = match code {
        v1::ErrorCode::Unavailable => {
            format!("{what}: not yet projected, or no projector answering: retry")
        }
        v1::ErrorCode::Forbidden => format!("{what}: not a member of this conversation"),
        v1::ErrorCode::NotFound => format!("{what}: no such conversation"),
        _ => format!("{what} unavailable"),
    };
    ApiError(code, message)
}

/// `GET /v1/conversations`: the user's conversations across every
/// partition, most recent first, with unread counts and previews.
pub async fn conversations(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Query(p): Query<ReadParams>,
) -> Result<Response, ApiError> {
    let _ = p.access_token;
    let items = crate::query::conversations(&state, &user, p.min_position)
        .await
        .map_err(|code| query_error(code, "conversation list"))?;
    Ok(ProtoJson(v1::ConvListPage {
        items,
        has_more: false,
    })
    .into_response())
}

/// Asks about `conv` (the id checked first), at `min_position` or later.
async fn ask_about(state: &AppState, conv: &str, p: ReadParams, query: Q) -> Result<R, ApiError> {
    let _ = p.access_token;
    im_streams::ids::validate_id(im_streams::ids::IdKind::Conversation, conv)
        .map_err(|e| ApiError(v1::ErrorCode::BadRequest, e.to_string()))?;
    crate::query::ask_conv(state, conv, p.min_position, query)
        .await
        .map_err(|code| query_error(code, conv))
}

fn unexpected() -> ApiError {
    ApiError(v1::ErrorCode::Internal, "unexpected answer".into())
}

pub async fn members(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Path(conv): Path<String>,
    Query(p): Query<ReadParams>,
) -> Result<ProtoJson<v1::MembersResult>, ApiError> {
    let q = Q::Members(v1::MembersQuery {
        conversation_id: conv.clone(),
        user_id: user,
    });
    match ask_about(&state, &conv, p, q).await? {
        R::Members(m) => Ok(ProtoJson(m)),
        _ => Err(unexpected()),
    }
}

pub async fn my_role(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Path(conv): Path<String>,
    Query(p): Query<ReadParams>,
) -> Result<ProtoJson<v1::RoleResult>, ApiError> {
    let q = Q::Role(v1::RoleQuery {
        conversation_id: conv.clone(),
        user_id: user,
    });
    match ask_about(&state, &conv, p, q).await? {
        R::Role(r) => Ok(ProtoJson(r)),
        _ => Err(unexpected()),
    }
}

/// Ready when NATS is connected (the gateway's client and its delivery
/// dispatcher's connection) and every partition has a projector whose
/// heartbeat is recent and reports nothing wrong (cheap state only: a
/// probe asks no one). The streams were there at start, or the gateway
/// would not be.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let partitions = state.appender.topology().partitions;
    let mut problems = state.readiness.problems(&state.client, partitions);
    if !state.dispatcher.is_connected() {
        problems.push("the delivery connection to NATS is down".to_string());
    }
    if problems.is_empty() {
        return (StatusCode::OK, "ready").into_response();
    }
    ApiError(v1::ErrorCode::Unavailable, problems.join("; ")).into_response()
}

/// Prometheus text: connections and the writer's counters.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let w = state.appender.stats();
    let cache = state.appender.cache_usage();
    let body = format!(
        "# TYPE im_gateway_connections gauge\nim_gateway_connections {}\n\
         # TYPE im_gateway_events_stored_total counter\nim_gateway_events_stored_total {}\n\
         # TYPE im_gateway_append_conflicts_total counter\nim_gateway_append_conflicts_total {}\n\
         # TYPE im_gateway_forwarded_out_total counter\nim_gateway_forwarded_out_total {}\n\
         # TYPE im_gateway_forwarded_in_total counter\nim_gateway_forwarded_in_total {}\n\
         # TYPE im_gateway_index_lookups_total counter\nim_gateway_index_lookups_total {}\n\
         # TYPE im_gateway_index_scans_total counter\nim_gateway_index_scans_total {}\n\
         # TYPE im_gateway_stepped_over_total counter\nim_gateway_stepped_over_total {}\n\
         # TYPE im_gateway_writer_cache_conversations gauge\nim_gateway_writer_cache_conversations {}\n\
         # TYPE im_gateway_writer_cache_bytes gauge\nim_gateway_writer_cache_bytes {}\n",
        state.connections.load(std::sync::atomic::Ordering::Relaxed),
        w.stored,
        w.conflicts,
        w.forwarded_out,
        w.forwarded_in,
        w.index_lookups,
        w.index_scans,
        w.stepped_over,
        cache.0,
        cache.1,
    );
    (
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
        .into_response()
}
