//! Reads: history, the conversation list, members and roles, answered by
//! the projectors through `query.rs`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use im_schema::v1::{self, query_request::Query as Q, query_response::Result as R};
use serde::Deserialize;

use super::{ApiError, AuthUser, ProtoJson};
use crate::AppState;

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
        v1::ErrorCode::BadRequest => {
            format!("{what}: minPosition is past the log's end: no write has that position")
        }
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

/// `GET .../members`: a page of members (`after`, `limit`; the answer's
/// `nextAfter` names the next page, empty on the last).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MembersParams {
    #[serde(default)]
    min_position: u64,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    after: String,
    #[serde(default)]
    limit: u32,
}

pub async fn members(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Path(conv): Path<String>,
    Query(p): Query<MembersParams>,
) -> Result<ProtoJson<v1::MembersResult>, ApiError> {
    let q = Q::Members(v1::MembersQuery {
        conversation_id: conv.clone(),
        user_id: user,
        after_user_id: p.after,
        limit: p.limit,
    });
    let read = ReadParams {
        min_position: p.min_position,
        access_token: p.access_token,
    };
    match ask_about(&state, &conv, read, q).await? {
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

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReceiptsParams {
    /// The message asked about: `deliveredTo`/`readBy` list who reached it.
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    min_position: u64,
    #[serde(default)]
    access_token: Option<String>,
}

/// `GET /v1/conversations/{id}/receipts?seq`: every member's delivered and
/// read cursors, and who has received and read `seq` ("read by" in groups).
/// Members only.
pub async fn receipts(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Path(conv): Path<String>,
    Query(p): Query<ReceiptsParams>,
) -> Result<ProtoJson<v1::ReceiptsResult>, ApiError> {
    let q = Q::Receipts(v1::ReceiptsQuery {
        conversation_id: conv.clone(),
        user_id: user,
        seq: p.seq,
    });
    let read = ReadParams {
        min_position: p.min_position,
        access_token: p.access_token,
    };
    match ask_about(&state, &conv, read, q).await? {
        R::Receipts(r) => Ok(ProtoJson(r)),
        _ => Err(unexpected()),
    }
}
