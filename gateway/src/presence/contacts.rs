//! Whose presence a user may see: their contacts (accepted requests) and
//! everyone sharing a conversation of at most `GROUP_MEMBERS_MAX` members
//! with them, asked of the projectors (their contacts, their conversation
//! list, then each one's members) and cached for a while.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use im_schema::v1::{self, query_request::Query as Q, query_response::Result as R};

use crate::AppState;

/// The conversations looked at, most recent first: a user in more sees
/// the presence of the members of their latest ones.
pub const CONVERSATIONS_MAX: usize = 200;
/// Conversations larger than this give no contacts: presence in a group of
/// N costs N × N pushes as its members come and go (a 1,000-member group
/// connecting is a million notices), and a large group shows no "online"
/// dots anyway. Direct conversations and small groups do.
pub const GROUP_MEMBERS_MAX: usize = 64;
/// Contacts kept per user: a user in huge groups sees presence of this
/// many of their members (a large group's members are not all shown
/// online anyway). About 40 bytes each: 80 KB at most per user.
pub const CONTACTS_MAX: usize = 2_000;
/// Member lists asked at once per lookup.
const MEMBER_ASKS_IN_FLIGHT: usize = 8;
/// Lookups running at once on this gateway (connects, refreshes and
/// `GET /v1/presence` together): each is a fan-out of queries, and a
/// reconnect storm must not turn into a query storm on the projectors.
const LOOKUPS_IN_FLIGHT: usize = 8;
/// How long a user's contacts are reused: a conversation joined since
/// shows its members' presence after at most this.
pub const CONTACTS_TTL: Duration = Duration::from_secs(60);
/// Users whose contacts are cached: with `CONTACTS_MAX` ids each, 80 MB
/// at the very worst; most users have tens of contacts.
pub const CACHED_USERS_MAX: usize = 1_024;

pub type Contacts = Arc<HashSet<String>>;

pub struct ContactCache {
    cache: Mutex<lru::LruCache<String, (Instant, Contacts)>>,
    lookups: tokio::sync::Semaphore,
}

impl Default for ContactCache {
    fn default() -> Self {
        let cap = std::num::NonZeroUsize::new(CACHED_USERS_MAX).expect("non-zero");
        ContactCache {
            cache: Mutex::new(lru::LruCache::new(cap)),
            lookups: tokio::sync::Semaphore::new(LOOKUPS_IN_FLIGHT),
        }
    }
}

impl ContactCache {
    fn cached(&self, user: &str) -> Option<Contacts> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match cache.get(user) {
            Some((at, contacts)) if at.elapsed() < CONTACTS_TTL => Some(contacts.clone()),
            _ => None,
        }
    }

    pub fn forget(&self, user: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.pop(user);
    }

    fn keep(&self, user: &str, contacts: Contacts) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.put(user.to_string(), (Instant::now(), contacts));
    }
}

/// `user`'s contacts (never including `user`).
pub async fn of(state: &AppState, user: &str) -> Result<Contacts, v1::ErrorCode> {
    if let Some(c) = state.presence.contacts.cached(user) {
        return Ok(c);
    }
    let _turn = state
        .presence
        .contacts
        .lookups
        .acquire()
        .await
        .map_err(|_| v1::ErrorCode::Unavailable)?;
    let list = crate::query::conversations(state, user, 0).await?;
    let convs = list
        .into_iter()
        .filter_map(|i| i.entry.map(|e| e.conversation_id))
        .take(CONVERSATIONS_MAX);
    let asks = convs.map(|conv| async move {
        // One page past the limit: a larger group is skipped by its count.
        let q = Q::Members(v1::MembersQuery {
            conversation_id: conv.clone(),
            user_id: user.to_string(),
            limit: GROUP_MEMBERS_MAX as u32 + 1,
            ..Default::default()
        });
        crate::query::ask_conv(state, &conv, 0, q).await
    });
    let mut answers = futures::stream::iter(asks).buffer_unordered(MEMBER_ASKS_IN_FLIGHT);
    let mut contacts = HashSet::new();
    // Contacts made by request and acceptance, whether or not they chat;
    // not those who are only asked, asking or blocked.
    let people = crate::query::contacts(state, user, 0).await?.entries;
    let accepted = people
        .iter()
        .filter(|c| c.state() == v1::ContactState::Contact && !c.blocked);
    contacts.extend(accepted.map(|c| c.user_id.clone()).take(CONTACTS_MAX));
    while let Some(answer) = answers.next().await {
        // A conversation left since the list was read is no one's contact.
        let Ok(R::Members(m)) = answer else { continue };
        if m.members.len() > GROUP_MEMBERS_MAX {
            continue;
        }
        let ids = m.members.into_iter().map(|m| m.user_id);
        contacts.extend(
            ids.filter(|id| id != user)
                .take(CONTACTS_MAX - contacts.len().min(CONTACTS_MAX)),
        );
    }
    // Either side's block hides presence, shared conversations or not.
    for c in people.iter().filter(|c| c.blocked || c.blocked_by_them) {
        contacts.remove(&c.user_id);
    }
    let contacts = Arc::new(contacts);
    // None yet may be a conversation not projected yet: asked again next time.
    if !contacts.is_empty() {
        state.presence.contacts.keep(user, contacts.clone());
    }
    Ok(contacts)
}
