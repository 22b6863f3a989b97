//! HTTP commands (JSON): group creation and administration, leave, recall,
//! edit. Each becomes a `Command` on the same append path and rules as the
//! WebSocket; an `Idempotency-Key` header (or `clientMsgId` in the body)
//! makes a retry safe.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use im_schema::v1;
use im_streams::{Action, AppendOutcome, Command, Role};
use serde::Deserialize;

use super::{ApiError, AuthUser};
use crate::error::streams_code;
use crate::AppState;

pub(super) fn idempotency_key(headers: &HeaderMap, body_key: Option<String>) -> String {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(body_key)
        // No key: each request is a new command, under an id no earlier
        // request (of this or any gateway, before any restart) had: ids are
        // remembered for good, so a reused one would be answered as a
        // duplicate of whatever carried it first.
        .unwrap_or_else(|| format!("http-{}", uuid_like()))
}

/// 128 random bits as 32 hex digits.
fn uuid_like() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// `X-Trace-Id` of a request, if it has one.
pub(super) fn trace_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-trace-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Who asks, with which idempotency key and trace id.
pub(super) type Asker = (String, String, Option<String>);

/// Runs a command on a conversation, or (`conv` None) a people command on
/// the log it belongs to, within the command bound, as the API's answer.
pub(super) async fn execute(
    state: &AppState,
    conv: Option<&str>,
    (user, key, trace): Asker,
    action: Action,
) -> Response {
    let (response, _) = execute_inner(state, conv, (user, key, trace), action).await;
    response
}

/// `execute`, also saying where the command was stored if it was just now.
pub(super) async fn execute_inner(
    state: &AppState,
    conv: Option<&str>,
    (user, key, trace): Asker,
    action: Action,
) -> (Response, Option<u64>) {
    // One rate for every way in: a user's HTTP commands draw on the same
    // bucket as their devices' sends (`Limits::user_sends_per_sec`).
    if !state.user_rates.take(&user) {
        let message = "command rate exceeded for this user (all devices and HTTP): retry later with the same Idempotency-Key";
        return (
            ApiError(v1::ErrorCode::RateLimited, message.into()).into_response(),
            None,
        );
    }
    let cmd = Command {
        actor: user,
        client_msg_id: key,
        action,
    };
    let bound = std::time::Duration::from_millis(state.config.limits.command_timeout_ms);
    let trace = crate::cmd::trace_id(trace.as_deref());
    tracing::debug!(trace_id = trace, user = cmd.actor, conv, "command");
    let started = std::time::Instant::now();
    let run = async {
        match conv {
            Some(conv) => state.appender.execute(conv, &cmd, &trace).await,
            None => state.appender.execute_people(&cmd, &trace).await,
        }
    };
    let outcome = tokio::time::timeout(bound, run).await;
    state.metrics.append_took("http", started);
    let Ok(outcome) = outcome else {
        let message = format!(
            "no outcome within {} ms; it may or may not be stored: retry with the same Idempotency-Key",
            bound.as_millis()
        );
        return (
            ApiError(v1::ErrorCode::Timeout, message).into_response(),
            None,
        );
    };
    match outcome {
        Ok(AppendOutcome::Stored {
            conv_id,
            stream_seq,
            conv_seq,
        }) => {
            state.presence.wrote(&cmd.actor);
            let answer = positions(&conv_id, stream_seq, conv_seq, false);
            (answer, Some(stream_seq))
        }
        Ok(AppendOutcome::Duplicate {
            conv_id,
            stream_seq,
            conv_seq,
        }) => (positions(&conv_id, stream_seq, conv_seq, true), None),
        Ok(AppendOutcome::Rejected(r)) => (super::errors::refused(&r), None),
        Err(e) => (
            ApiError(streams_code(&e), e.to_string()).into_response(),
            None,
        ),
    }
}

/// A stored command's answer; `duplicate` when a retry found the original.
/// Positions are 64-bit, so strings, as everywhere in the API (proto3 JSON).
fn positions(conv: &str, stream_seq: u64, conv_seq: u64, duplicate: bool) -> Response {
    let body = serde_json::json!({
        "conversationId": conv,
        "convSeq": conv_seq.to_string(),
        "streamSeq": stream_seq.to_string(),
        "duplicate": duplicate,
    });
    (StatusCode::OK, Json(body)).into_response()
}

fn role_of(name: &str) -> Result<Role, ApiError> {
    match name {
        "member" => Ok(Role::Member),
        "admin" => Ok(Role::Admin),
        other => Err(ApiError(
            v1::ErrorCode::BadRequest,
            format!("role {other:?}: member or admin"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewMember {
    user_id: String,
    #[serde(default)]
    role: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateGroup {
    conversation_id: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    members: Vec<NewMember>,
    #[serde(default)]
    client_msg_id: Option<String>,
}

/// Bounds a request body's member list before any work is done: what one
/// command may add (a larger group grows by `add-members`).
const CREATE_MEMBERS_MAX: usize = im_streams::conversation::MEMBERS_PER_COMMAND_MAX;

/// A body's members as (user, role), refused past `CREATE_MEMBERS_MAX`.
fn members_of(members: Vec<NewMember>) -> Result<Vec<(String, Role)>, ApiError> {
    if members.len() > CREATE_MEMBERS_MAX {
        return Err(ApiError(
            v1::ErrorCode::TooLarge,
            format!(
                "more than {CREATE_MEMBERS_MAX} members in one request: add the rest with add-members"
            ),
        ));
    }
    members
        .into_iter()
        .map(|m| Ok((m.user_id, role_of(m.role.as_deref().unwrap_or("member"))?)))
        .collect()
}

pub async fn create_group(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    Json(body): Json<CreateGroup>,
) -> Result<Response, ApiError> {
    let members = members_of(body.members)?;
    let key = idempotency_key(&headers, body.client_msg_id);
    let action = Action::CreateGroup {
        title: body.title,
        members,
    };
    let who = (user, key, trace_header(&headers));
    Ok(execute(&state, Some(&body.conversation_id), who, action).await)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Options {
    #[serde(default)]
    client_msg_id: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default, deserialize_with = "super::opt_int64")]
    until_ms: Option<i64>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    /// `add-members`: who, with their roles.
    #[serde(default)]
    members: Option<Vec<NewMember>>,
}

/// `POST /v1/conversations/{id}/{verb}` and `.../{verb}/{target}`: one
/// handler maps the verb and its body to the action.
pub async fn command(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    Path(path): Path<Vec<(String, String)>>,
    body: Option<Json<Options>>,
) -> Result<Response, ApiError> {
    let get = |name: &str| path.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let conv = get("id").unwrap_or_default();
    let verb = get("verb").unwrap_or_default();
    let target = get("target");
    let mut opts = body.map(|Json(o)| o).unwrap_or_default();
    let key = idempotency_key(&headers, opts.client_msg_id.clone());
    let who = || {
        target
            .clone()
            .or(opts.user_id.clone())
            .ok_or_else(|| ApiError(v1::ErrorCode::BadRequest, "which user?".into()))
    };
    let seq = || {
        target
            .as_deref()
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError(
                    v1::ErrorCode::BadRequest,
                    "which message (conv_seq)?".into(),
                )
            })
    };
    let action = match verb.as_str() {
        "add-member" => Action::AddMember {
            user: who()?,
            role: role_of(opts.role.as_deref().unwrap_or("member"))?,
        },
        "add-members" => Action::AddMembers {
            users: members_of(opts.members.take().ok_or_else(|| {
                ApiError(v1::ErrorCode::BadRequest, "members is required".into())
            })?)?,
        },
        "remove-member" => Action::RemoveMember { user: who()? },
        "leave" => Action::Leave,
        "role" => Action::ChangeRole {
            user: who()?,
            role: role_of(opts.role.as_deref().unwrap_or("member"))?,
        },
        "transfer-ownership" => Action::TransferOwnership { user: who()? },
        "mute" => Action::Mute {
            user: who()?,
            until_ms: opts
                .until_ms
                .ok_or_else(|| ApiError(v1::ErrorCode::BadRequest, "untilMs is required".into()))?,
        },
        "unmute" => Action::Unmute { user: who()? },
        "blacklist" => Action::Blacklist { user: who()? },
        "unblacklist" => Action::Unblacklist { user: who()? },
        "recall" => Action::Recall { conv_seq: seq()? },
        "edit" => Action::Edit {
            conv_seq: seq()?,
            text: opts
                .text
                .clone()
                .ok_or_else(|| ApiError(v1::ErrorCode::BadRequest, "text is required".into()))?,
        },
        other => {
            return Err(ApiError(
                v1::ErrorCode::NotFound,
                format!("no command {other:?}"),
            ))
        }
    };
    let who = (user, key, trace_header(&headers));
    Ok(execute(&state, Some(&conv), who, action).await)
}
