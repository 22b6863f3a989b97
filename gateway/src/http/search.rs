//! Search over HTTP: messages the user could read, their conversations by
//! title (or, for a direct one, by the other's user id), and people
//! among their contacts (by display name or user id prefix) or by exact
//! user id. Answered by the `search` projection of every partition
//! (`crate::search`); a query the index would refuse is refused here
//! first, with the reason.

use std::sync::Arc;

use axum::extract::{Query, State};
use im_schema::v1;
use im_streams::ids::IdKind;
use serde::Deserialize;

use super::{ApiError, AuthUser, ProtoJson};
use crate::search::{Ask, Cursor};
use crate::AppState;
use im_streams::search::{LIMIT_MAX, RELEVANCE_DEPTH_MAX};

/// Hits per page unless asked: a screenful.
pub const LIMIT_DEFAULT: u32 = 20;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(v1::ErrorCode::BadRequest, message.into())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SearchParams {
    q: String,
    #[serde(default)]
    conversation_id: Option<String>,
    /// A page's `next`.
    #[serde(default)]
    before: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
    /// `newest` (the default) or `relevance`.
    #[serde(default)]
    order: Option<String>,
    #[serde(default)]
    min_position: u64,
    #[serde(default)]
    access_token: Option<String>,
}

fn checked(p: &SearchParams) -> Result<(u32, bool, Cursor), ApiError> {
    im_streams::search::parse(&p.q).map_err(|e| bad(format!("q: {e}")))?;
    let limit = p.limit.unwrap_or(LIMIT_DEFAULT);
    if !(1..=LIMIT_MAX).contains(&limit) {
        return Err(bad(format!("limit: 1 to {LIMIT_MAX}")));
    }
    let by_relevance = match p.order.as_deref() {
        None | Some("newest") => false,
        Some("relevance") => true,
        Some(other) => return Err(bad(format!("order {other:?}: newest or relevance"))),
    };
    let cursor = match p.before.as_deref() {
        None => Cursor::Start,
        Some(text) => Cursor::parse(text)
            .filter(|c| matches!(c, Cursor::Skip(_)) == by_relevance)
            .ok_or_else(|| bad("before: not a cursor of this order (pass a page's next)"))?,
    };
    if let Cursor::Skip(n) = cursor {
        if n.saturating_add(limit) > RELEVANCE_DEPTH_MAX {
            return Err(bad(format!(
                "by relevance, pages end at {RELEVANCE_DEPTH_MAX} hits"
            )));
        }
    }
    Ok((limit, by_relevance, cursor))
}

fn asked(code: v1::ErrorCode) -> ApiError {
    let message = match code {
        v1::ErrorCode::BadRequest => "minPosition is past the log's end, or the query is refused",
        v1::ErrorCode::Unavailable => "search is not caught up, or took too long: retry",
        _ => "search unavailable",
    };
    ApiError(code, message.into())
}

fn ask(user: String, p: &SearchParams, kind: v1::SearchDocKind) -> Result<Ask, ApiError> {
    let (limit, by_relevance, cursor) = checked(p)?;
    let conversation = p.conversation_id.clone().filter(|c| !c.is_empty());
    if let Some(conv) = &conversation {
        im_streams::ids::validate_id(IdKind::Conversation, conv)
            .map_err(|e| bad(format!("conversationId: {e}")))?;
    }
    Ok(Ask {
        user,
        q: p.q.clone(),
        kind,
        conversation,
        cursor,
        limit,
        by_relevance,
        users: Vec::new(),
        pos: p.min_position,
    })
}

/// `GET /v1/search/messages`: newest first (or by relevance), paged.
pub async fn messages(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Query(p): Query<SearchParams>,
) -> Result<ProtoJson<v1::SearchPage>, ApiError> {
    let _ = &p.access_token;
    let a = ask(user, &p, v1::SearchDocKind::Message)?;
    let page = crate::search::search(&state, &a).await.map_err(asked)?;
    Ok(ProtoJson(page))
}

/// A search answered on one page, by relevance: conversations, people.
fn one_page(user: String, p: &SearchParams, kind: v1::SearchDocKind) -> Result<Ask, ApiError> {
    if p.conversation_id.is_some() || p.before.is_some() {
        return Err(bad("searched on one page: no conversationId or before"));
    }
    let mut a = ask(user, p, kind)?;
    a.by_relevance = true;
    Ok(a)
}

/// `GET /v1/search/conversations`: the user's conversations whose title
/// (a direct one's: its members' user ids) matches, by relevance.
pub async fn conversations(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Query(p): Query<SearchParams>,
) -> Result<ProtoJson<v1::SearchPage>, ApiError> {
    let _ = &p.access_token;
    let a = one_page(user, &p, v1::SearchDocKind::Title)?;
    let mut page = crate::search::search(&state, &a).await.map_err(asked)?;
    page.next.clear();
    Ok(ProtoJson(page))
}

/// `GET /v1/search/users`: the user's contacts whose display name matches
/// or whose user id starts with the query, and the user whose id it is.
pub async fn users(
    State(state): State<Arc<AppState>>,
    AuthUser(user): AuthUser,
    Query(p): Query<SearchParams>,
) -> Result<ProtoJson<v1::SearchPage>, ApiError> {
    let _ = &p.access_token;
    let mut a = one_page(user.clone(), &p, v1::SearchDocKind::User)?;
    let contacts = crate::query::contacts(&state, &user, p.min_position)
        .await
        .map_err(asked)?;
    a.users = contacts
        .entries
        .into_iter()
        .filter(|c| c.state == v1::ContactState::Contact as i32 && !c.blocked && !c.blocked_by_them)
        .map(|c| c.user_id)
        .collect();
    let typed = p.q.trim();
    let exact = im_streams::ids::validate_id(IdKind::User, typed).is_ok() && typed != user;
    let mut page = match a.users.is_empty() {
        true => v1::SearchPage::default(),
        false => crate::search::search(&state, &a).await.map_err(asked)?,
    };
    page.next.clear();
    let by_id = a
        .users
        .iter()
        .filter(|u| u.starts_with(typed) && !typed.is_empty());
    let mut extra: Vec<String> = by_id.cloned().collect();
    if exact && !extra.iter().any(|u| u == typed) {
        let profiles = crate::query::profiles(&state, &[typed.to_string()], 0).await;
        if profiles.is_ok_and(|r| !r.profiles.is_empty()) {
            extra.push(typed.to_string());
        }
    }
    for u in extra {
        if page.hits.len() >= a.limit as usize || page.hits.iter().any(|h| h.sender_id == u) {
            continue;
        }
        page.hits.push(id_hit(&u, typed));
    }
    Ok(ProtoJson(page))
}

/// A user found by their id: the typed prefix marked.
fn id_hit(user: &str, typed: &str) -> v1::SearchHit {
    let rest = &user[typed.len().min(user.len())..];
    let mut snippet = vec![v1::SnippetPart {
        text: user[..user.len() - rest.len()].to_string(),
        hit: true,
    }];
    if !rest.is_empty() {
        snippet.push(v1::SnippetPart {
            text: rest.to_string(),
            hit: false,
        });
    }
    v1::SearchHit {
        kind: v1::SearchDocKind::User as i32,
        conversation_id: im_streams::ids::user_log_id(user).unwrap_or_default(),
        sender_id: user.to_string(),
        snippet,
        ..Default::default()
    }
}
