//! `GET /v1/presence?users=a,b`: online and last seen of the users asked
//! about who are the caller's contacts (`contacts.rs`); the others are left
//! out, so the answer says nothing of strangers.

use std::sync::Arc;

use axum::extract::{Query, State};
use im_schema::v1;
use serde::Deserialize;

use super::{ApiError, AuthUser, ProtoJson};
use crate::presence::{contacts, QUERY_USERS_MAX};
use crate::AppState;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PresenceParams {
    /// Comma-separated user ids.
    users: String,
    #[serde(default)]
    access_token: Option<String>,
}

pub async fn presence(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Query(p): Query<PresenceParams>,
) -> Result<ProtoJson<v1::PresenceList>, ApiError> {
    let _ = p.access_token;
    let asked: std::collections::BTreeSet<&str> =
        p.users.split(',').filter(|u| !u.is_empty()).collect();
    if asked.len() > QUERY_USERS_MAX {
        let message = format!("at most {QUERY_USERS_MAX} users per request");
        return Err(ApiError(v1::ErrorCode::BadRequest, message));
    }
    for u in &asked {
        im_streams::ids::validate_id(im_streams::ids::IdKind::User, u)
            .map_err(|e| ApiError(v1::ErrorCode::BadRequest, e.to_string()))?;
    }
    let contacts = contacts::of(&state, &user).await.map_err(|code| {
        ApiError(
            code,
            "presence: the caller's conversations are not available: retry".into(),
        )
    })?;
    let shared: Vec<String> = asked
        .into_iter()
        .filter(|u| contacts.contains(*u))
        .map(str::to_string)
        .collect();
    let users = state.presence.lookup(shared).await;
    Ok(ProtoJson(v1::PresenceList { users }))
}
