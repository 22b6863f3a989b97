//! Asking the projectors (never sled directly): one request per partition
//! subject, with a bounded wait.

use std::time::Duration;

use im_schema::v1::{self, query_request::Query, query_response::Result as R};

/// How long a query may take, `min_position` wait included.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn ask(
    client: &async_nats::Client,
    partition: u32,
    pos: (u64, u64),
    query: Query,
) -> Result<R, v1::ErrorCode> {
    ask_with(client, partition, pos, false, query).await
}

/// `ask`; with `after_delivered`, the answer also covers every event the
/// partition's projector had delivered when the query reached it (a
/// delivery may leave before its event is committed: I12).
pub async fn ask_with(
    client: &async_nats::Client,
    partition: u32,
    pos: (u64, u64),
    after_delivered: bool,
    query: Query,
) -> Result<R, v1::ErrorCode> {
    let req = v1::QueryRequest {
        min_position: pos.0,
        min_rcpt_position: pos.1,
        query: Some(query),
        after_delivered,
    };
    let subject = im_streams::subjects::query_subject(partition);
    let reply = tokio::time::timeout(
        QUERY_TIMEOUT,
        client.request(subject, im_schema::encode(&req).into()),
    )
    .await
    .map_err(|_| v1::ErrorCode::Unavailable)?
    .map_err(|_| v1::ErrorCode::Unavailable)?;
    let resp: v1::QueryResponse =
        im_schema::decode(&reply.payload).map_err(|_| v1::ErrorCode::Internal)?;
    match resp.result {
        Some(R::Error(e)) => Err(match v1::QueryErrorCode::try_from(e.code) {
            Ok(v1::QueryErrorCode::NotYet) => v1::ErrorCode::Unavailable,
            Ok(v1::QueryErrorCode::BadRequest) => v1::ErrorCode::BadRequest,
            Ok(v1::QueryErrorCode::Forbidden) => v1::ErrorCode::Forbidden,
            Ok(v1::QueryErrorCode::NotFound) => v1::ErrorCode::NotFound,
            _ => v1::ErrorCode::Internal,
        }),
        Some(r) => Ok(r),
        None => Err(v1::ErrorCode::Internal),
    }
}

/// A query's kind, as its latency is labelled.
fn kind_of(query: &Query) -> &'static str {
    match query {
        Query::History(_) => "history",
        Query::Members(_) => "members",
        Query::Role(_) => "role",
        Query::Receipts(_) => "receipts",
        Query::ConvList(_) => "conv_list",
        Query::Unread(_) => "unread",
        _ => "other",
    }
}

/// A query about one conversation, at `pos` or later. A refusal (forbidden,
/// not found) is confirmed against the log: when the projector has not yet
/// applied the conversation's latest event, the answer is "not yet"
/// (`Unavailable`, a 503 with Retry-After), never a refusal of a state that
/// is already gone (a group created a moment ago, a member just added).
pub async fn ask_conv(
    state: &crate::AppState,
    conv: &str,
    pos: u64,
    query: Query,
) -> Result<R, v1::ErrorCode> {
    // A user's or a pair's log is read through the people endpoints only
    // (a request hidden from a blocker is on the pair's log).
    if im_streams::ids::is_people_log(conv) {
        return Err(v1::ErrorCode::NotFound);
    }
    let partition = state.appender.topology().partition_of(conv);
    let started = std::time::Instant::now();
    let kind = kind_of(&query);
    let answer = ask(&state.client, partition, (pos, 0), query.clone()).await;
    state.metrics.query_took(kind, started);
    match past_end(state, pos, answer).await {
        Err(v1::ErrorCode::Forbidden | v1::ErrorCode::NotFound) => {
            let latest = state
                .appender
                .log_position(conv)
                .await
                .map_err(|_| v1::ErrorCode::Unavailable)?;
            ask(&state.client, partition, (latest.max(pos), 0), query).await
        }
        other => other,
    }
}

/// "Not yet" for a position the log has not reached is a position no write
/// produced (positions come from acks and answers of stored writes): the
/// client's mistake, `BadRequest`, rather than a 503 it would retry in vain.
pub(crate) async fn past_end(
    state: &crate::AppState,
    pos: u64,
    answer: Result<R, v1::ErrorCode>,
) -> Result<R, v1::ErrorCode> {
    if pos == 0 || answer != Err(v1::ErrorCode::Unavailable) {
        return answer;
    }
    match state.appender.log_end().await {
        Ok(end) if pos > end => Err(v1::ErrorCode::BadRequest),
        _ => answer,
    }
}

/// Contact entries one answer holds (~60 bytes each, 300 KB): past it the
/// first by user id, marked `truncated`.
pub const CONTACTS_PER_ANSWER_MAX: usize = 5_000;

/// Conversations one list asks each partition for: the most recent ones.
pub const CONVERSATIONS_PER_PARTITION_MAX: u32 = 200;

/// The user's conversations in every partition (asked at once), merged,
/// most recent first; every event delivered before the call included
/// (a sync after `Connected` misses nothing: I12).
pub async fn conversations(
    state: &crate::AppState,
    user: &str,
    pos: u64,
) -> Result<Vec<v1::ConvListItem>, v1::ErrorCode> {
    let asks = (0..state.appender.topology().partitions).map(|p| {
        let query = Query::ConvList(v1::ConvListQuery {
            user_id: user.to_string(),
            limit: CONVERSATIONS_PER_PARTITION_MAX,
            ..Default::default()
        });
        ask_with(&state.client, p, (pos, 0), true, query)
    });
    let started = std::time::Instant::now();
    let answers = futures::future::join_all(asks).await;
    state.metrics.query_took("conv_list", started);
    let mut items = Vec::new();
    for answer in answers {
        match past_end(state, pos, answer).await? {
            R::ConvList(page) => items.extend(page.items),
            _ => return Err(v1::ErrorCode::Internal),
        }
    }
    let key = |i: &v1::ConvListItem| {
        i.entry
            .as_ref()
            .map(|e| (e.last_activity_ms, e.conversation_id.clone()))
    };
    items.sort_by_key(|i| std::cmp::Reverse(key(i)));
    Ok(items)
}

/// Profiles asked of the partitions their users' logs are in, at once.
pub async fn profiles(
    state: &crate::AppState,
    users: &[String],
    pos: u64,
) -> Result<v1::ProfilesResult, v1::ErrorCode> {
    profiles_with(state, users, pos, false).await
}

/// `user`'s own notification settings (push devices, mutes); empty when
/// they set none.
pub async fn notify_settings(
    state: &crate::AppState,
    user: &str,
    pos: u64,
) -> Result<v1::NotifySettings, v1::ErrorCode> {
    let found = profiles_with(state, &[user.to_string()], pos, true).await?;
    Ok(found.notify.into_iter().next().unwrap_or_default())
}

async fn profiles_with(
    state: &crate::AppState,
    users: &[String],
    pos: u64,
    with_notify: bool,
) -> Result<v1::ProfilesResult, v1::ErrorCode> {
    let topology = state.appender.topology();
    let mut by_partition: std::collections::BTreeMap<u32, Vec<String>> = Default::default();
    for u in users {
        let log = im_streams::ids::user_log_id(u).map_err(|_| v1::ErrorCode::BadRequest)?;
        by_partition
            .entry(topology.partition_of(&log))
            .or_default()
            .push(u.clone());
    }
    let asks = by_partition.into_iter().map(|(p, user_ids)| {
        let query = Query::Profiles(v1::ProfilesQuery {
            user_ids,
            with_notify,
        });
        ask(&state.client, p, (pos, 0), query)
    });
    let mut out = v1::ProfilesResult::default();
    for answer in futures::future::join_all(asks).await {
        match past_end(state, pos, answer).await? {
            R::Profiles(r) => {
                out.profiles.extend(r.profiles);
                out.privacy.extend(r.privacy);
                out.notify.extend(r.notify);
            }
            _ => return Err(v1::ErrorCode::Internal),
        }
    }
    Ok(out)
}

/// A user's contact entries, merged over every partition.
pub async fn contacts(
    state: &crate::AppState,
    user: &str,
    pos: u64,
) -> Result<v1::ContactsResult, v1::ErrorCode> {
    let asks = (0..state.appender.topology().partitions).map(|p| {
        let query = Query::Contacts(v1::ContactsQuery {
            user_id: user.to_string(),
        });
        ask(&state.client, p, (pos, 0), query)
    });
    let mut out = v1::ContactsResult::default();
    for answer in futures::future::join_all(asks).await {
        match past_end(state, pos, answer).await? {
            R::Contacts(r) => {
                out.entries.extend(r.entries);
                out.truncated |= r.truncated;
            }
            _ => return Err(v1::ErrorCode::Internal),
        }
    }
    out.entries.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    if out.entries.len() > CONTACTS_PER_ANSWER_MAX {
        out.entries.truncate(CONTACTS_PER_ANSWER_MAX);
        out.truncated = true;
    }
    Ok(out)
}
