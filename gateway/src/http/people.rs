//! People over HTTP: a user's profile and privacy (on their own log),
//! contacts and blocks (on the pair's log), read back from the `members`
//! projection. Commands take the same path, rules, idempotency and bounds
//! as every other (`commands::execute`).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use im_schema::v1;
use im_streams::ids::IdKind;
use im_streams::people::Audience;
use im_streams::Action;
use serde::Deserialize;

use super::commands::{execute, execute_inner, idempotency_key, trace_header};
use super::{ApiError, AuthUser, ProtoJson};
use crate::AppState;

/// Users one profiles request names, at most (the projectors' bound).
pub const PROFILES_PER_REQUEST_MAX: usize = 100;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(v1::ErrorCode::BadRequest, message.into())
}

fn check_user(field: &str, user: &str) -> Result<(), ApiError> {
    im_streams::ids::validate_id(IdKind::User, user).map_err(|e| bad(format!("{field}: {e}")))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileBody {
    display_name: String,
    #[serde(default)]
    avatar: Option<serde_json::Value>,
    #[serde(default)]
    status: String,
    #[serde(default)]
    client_msg_id: Option<String>,
}

/// `PUT /v1/me/profile`: the whole profile; contacts are told.
pub async fn put_profile(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    Json(body): Json<ProfileBody>,
) -> Result<Response, ApiError> {
    let avatar = match body.avatar {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            serde_json::from_value::<v1::MediaRef>(v).map_err(|e| bad(format!("avatar: {e}")))?,
        ),
    };
    let key = idempotency_key(&headers, body.client_msg_id);
    let action = Action::UpdateProfile {
        display_name: body.display_name,
        avatar,
        status: body.status,
    };
    let who = (user.clone(), key, trace_header(&headers));
    let (response, stored) = execute_inner(&state, None, who, action).await;
    // One task per stored change, so as many as a user's command rate
    // allows (`Limits::user_sends_per_sec`); each publishes to at most
    // `CONTACTS_PER_ANSWER_MAX` contacts.
    if let Some(pos) = stored {
        tokio::spawn(tell_contacts(state, user, pos));
    }
    Ok(response)
}

/// Pushes a user's new profile to their contacts' devices (ephemeral, as
/// typing: a device that misses it reads profiles when it next lists).
async fn tell_contacts(state: Arc<AppState>, user: String, pos: u64) {
    let Ok(profiles) = crate::query::profiles(&state, std::slice::from_ref(&user), pos).await
    else {
        return;
    };
    let Some(profile) = profiles.profiles.into_iter().next() else {
        return;
    };
    let Ok(contacts) = crate::query::contacts(&state, &user, 0).await else {
        return;
    };
    let notice = crate::cmd::reply(v1::envelope::Payload::Profile(profile));
    let notice = bytes::Bytes::from(im_schema::encode(&notice));
    for c in contacts.entries {
        // Not to a contact either side blocks.
        if c.state == v1::ContactState::Contact as i32 && !c.blocked && !c.blocked_by_them {
            if let Ok(subject) = im_streams::subjects::notice_subject(&c.user_id) {
                let _ = state.client.publish(subject, notice.clone()).await;
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrivacyBody {
    direct_chats: String,
    group_adds: String,
    #[serde(default)]
    client_msg_id: Option<String>,
}

fn audience(field: &str, name: &str) -> Result<Audience, ApiError> {
    match name {
        "everyone" => Ok(Audience::Everyone),
        "contacts" => Ok(Audience::Contacts),
        other => Err(bad(format!("{field} {other:?}: everyone or contacts"))),
    }
}

/// `PUT /v1/me/privacy`: who may start a direct conversation with me, and
/// who may add me to groups.
pub async fn put_privacy(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    Json(body): Json<PrivacyBody>,
) -> Result<Response, ApiError> {
    let action = Action::SetPrivacy {
        direct_chats: audience("directChats", &body.direct_chats)?,
        group_adds: audience("groupAdds", &body.group_adds)?,
    };
    let key = idempotency_key(&headers, body.client_msg_id);
    let who = (user, key, trace_header(&headers));
    Ok(execute(&state, None, who, action).await)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContactBody {
    #[serde(default)]
    client_msg_id: Option<String>,
}

/// `POST /v1/contacts/{userId}/{verb}`: request, accept, decline, remove,
/// block, unblock.
pub async fn contact_command(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    Path((target, verb)): Path<(String, String)>,
    body: Option<Json<ContactBody>>,
) -> Result<Response, ApiError> {
    check_user("userId", &target)?;
    let user_of = |t: String| match verb.as_str() {
        "request" => Some(Action::RequestContact { user: t }),
        "accept" => Some(Action::AcceptContact { user: t }),
        "decline" => Some(Action::DeclineContact { user: t }),
        "remove" => Some(Action::RemoveContact { user: t }),
        "block" => Some(Action::BlockUser { user: t }),
        "unblock" => Some(Action::UnblockUser { user: t }),
        _ => None,
    };
    let action = user_of(target.clone())
        .ok_or_else(|| ApiError(v1::ErrorCode::NotFound, format!("no command {verb:?}")))?;
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let key = idempotency_key(&headers, body.client_msg_id);
    let who = (user.clone(), key, trace_header(&headers));
    let (response, stored) = execute_inner(&state, None, who, action).await;
    if stored.is_some() {
        // Whose presence each may see changed.
        crate::presence::contacts_changed(&state, &user).await;
        crate::presence::contacts_changed(&state, &target).await;
    }
    Ok(response)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfilesParams {
    /// Comma-separated user ids.
    ids: String,
    /// Read your own writes: an IM_CONV stream sequence to wait for.
    #[serde(default)]
    min_position: u64,
    #[serde(default)]
    access_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadParams {
    /// Read your own writes: an IM_CONV stream sequence to wait for.
    #[serde(default)]
    pub(super) min_position: u64,
    #[serde(default)]
    access_token: Option<String>,
}

/// `GET /v1/users/profiles?ids=a,b,c`: up to 100 profiles in one request
/// (those who never set one are left out).
pub async fn profiles(
    State(state): State<Arc<AppState>>,
    AuthUser(_user): AuthUser,
    Query(p): Query<ProfilesParams>,
) -> Result<ProtoJson<v1::ProfilesResult>, ApiError> {
    let _ = p.access_token;
    let mut ids: Vec<String> = p.ids.split(',').map(str::to_string).collect();
    ids.sort();
    ids.dedup();
    if ids.len() > PROFILES_PER_REQUEST_MAX {
        return Err(ApiError(
            v1::ErrorCode::TooLarge,
            format!("at most {PROFILES_PER_REQUEST_MAX} ids per request"),
        ));
    }
    for id in &ids {
        check_user("ids", id)?;
    }
    let mut found = crate::query::profiles(&state, &ids, p.min_position)
        .await
        .map_err(asked)?;
    // Nobody's privacy but one's own (`GET /v1/me`).
    found.privacy.clear();
    Ok(ProtoJson(found))
}

/// `GET /v1/me`: the user's own profile and privacy.
pub async fn me(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Query(p): Query<ReadParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let _ = p.access_token;
    let found = crate::query::profiles(&state, std::slice::from_ref(&user), p.min_position)
        .await
        .map_err(asked)?;
    let privacy = found.privacy.into_iter().next().unwrap_or_default();
    let name = |v: i32| match Audience::from_wire(v) {
        Audience::Everyone => "everyone",
        Audience::Contacts => "contacts",
    };
    let profile = found.profiles.into_iter().next();
    Ok(Json(serde_json::json!({
        "userId": user,
        "profile": profile.map(|p| serde_json::from_str::<serde_json::Value>(&im_schema::to_json(&p)).unwrap_or_default()),
        "privacy": {
            "directChats": name(privacy.direct_chats),
            "groupAdds": name(privacy.group_adds),
        },
    })))
}

/// `GET /v1/me/contacts`: contacts, requests both ways, and blocks.
pub async fn contacts(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Query(p): Query<ReadParams>,
) -> Result<ProtoJson<v1::ContactsResult>, ApiError> {
    let _ = p.access_token;
    let mut found = crate::query::contacts(&state, &user, p.min_position)
        .await
        .map_err(asked)?;
    // Nobody is told who blocks them.
    found
        .entries
        .retain(|c| c.state != v1::ContactState::None as i32 || c.blocked);
    for c in &mut found.entries {
        c.blocked_by_them = false;
    }
    Ok(ProtoJson(found))
}

pub(super) fn asked(code: v1::ErrorCode) -> ApiError {
    let message = match code {
        v1::ErrorCode::BadRequest => "minPosition is past the log's end",
        _ => "the projectors could not answer in time: retry",
    };
    ApiError(code, message.into())
}
