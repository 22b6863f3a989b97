//! Notifications over HTTP: a device's push registration and its end, do
//! not disturb and per-conversation mutes. Each is an event on the user's
//! own log (`people::push`), through the same path, rules, idempotency
//! and bounds as every command (`commands::execute`); the notifier reads
//! them from its `members` rows.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use im_schema::v1;
use im_streams::Action;
use serde::Deserialize;

use super::commands::{execute, idempotency_key, trace_header};
use super::people::ReadParams;
use super::{ApiError, AuthUser, ProtoJson};
use crate::AppState;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PushBody {
    platform: String,
    token: String,
    app_id: String,
    #[serde(default)]
    lang: String,
    #[serde(default)]
    client_msg_id: Option<String>,
}

/// `POST /v1/devices/{deviceId}/push`: wake this device while the user
/// has no connected device (replaces the device's earlier registration).
pub async fn register(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    Path(device_id): Path<String>,
    Json(body): Json<PushBody>,
) -> Result<Response, ApiError> {
    let action = Action::RegisterPush(v1::PushRegistered {
        device_id,
        platform: body.platform,
        token: body.token,
        app_id: body.app_id,
        lang: body.lang,
    });
    let key = idempotency_key(&headers, body.client_msg_id);
    Ok(execute(&state, None, (user, key, trace_header(&headers)), action).await)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyBody {
    #[serde(default)]
    client_msg_id: Option<String>,
}

/// `DELETE /v1/devices/{deviceId}/push`: the device is woken no more.
pub async fn unregister(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    Path(device_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // A DELETE usually has no body; one that has must be a `KeyBody`.
    let body: KeyBody = match body.is_empty() {
        true => KeyBody::default(),
        false => serde_json::from_slice(&body)
            .map_err(|e| ApiError(v1::ErrorCode::BadRequest, format!("the body: {e}")))?,
    };
    let action = Action::UnregisterPush(v1::PushUnregistered {
        device_id,
        token: String::new(),
        reason: v1::PushUnregisterReason::User as i32,
    });
    let key = idempotency_key(&headers, body.client_msg_id);
    Ok(execute(&state, None, (user, key, trace_header(&headers)), action).await)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuietBody {
    /// Until when (ms since the epoch); 0 ends it.
    until_ms: i64,
    #[serde(default)]
    client_msg_id: Option<String>,
}

/// `PUT /v1/me/notifications`: do not disturb until `untilMs`.
pub async fn do_not_disturb(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    Json(body): Json<QuietBody>,
) -> Result<Response, ApiError> {
    mute(state, user, headers, String::new(), body).await
}

/// `PUT /v1/me/notifications/conversations/{conversationId}`: no
/// notifications of one conversation until `untilMs`.
pub async fn mute_conversation(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    Path(conversation_id): Path<String>,
    Json(body): Json<QuietBody>,
) -> Result<Response, ApiError> {
    mute(state, user, headers, conversation_id, body).await
}

async fn mute(
    state: Arc<AppState>,
    user: String,
    headers: HeaderMap,
    conversation_id: String,
    body: QuietBody,
) -> Result<Response, ApiError> {
    let action = Action::MuteNotifications(v1::NotifyMuted {
        conversation_id,
        until_ms: body.until_ms,
    });
    let key = idempotency_key(&headers, body.client_msg_id);
    Ok(execute(&state, None, (user, key, trace_header(&headers)), action).await)
}

/// `GET /v1/me/notifications`: the user's push devices and mutes.
pub async fn settings(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Query(p): Query<ReadParams>,
) -> Result<ProtoJson<v1::NotifySettings>, ApiError> {
    let found = crate::query::notify_settings(&state, &user, p.min_position)
        .await
        .map_err(super::people::asked)?;
    Ok(ProtoJson(found))
}
