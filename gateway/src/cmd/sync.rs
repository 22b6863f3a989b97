//! `sync`: the client's known `conv -> last seq`; the answer lists the
//! user's conversations changed since (or unknown to it), with last seq and
//! unread. The client then pages history for each.

use std::collections::BTreeMap;

use im_schema::v1::{self, envelope::Payload};

use super::reply;
use crate::error::error_frame;
use crate::AppState;

/// Entries accepted in a client's `known` map.
pub const SYNC_KNOWN_MAX: usize = 10_000;

pub async fn run(state: &AppState, user: &str, req: v1::SyncRequest) -> v1::Envelope {
    if req.known.len() > SYNC_KNOWN_MAX {
        return error_frame(
            v1::ErrorCode::TooLarge,
            format!("more than {SYNC_KNOWN_MAX} known conversations"),
            "",
        );
    }
    let known: BTreeMap<String, u64> = req.known.into_iter().collect();
    let items = match crate::query::conversations(state, user, 0).await {
        Ok(items) => items,
        Err(code) => return error_frame(code, "conversation list unavailable", ""),
    };
    let changed = items
        .into_iter()
        .filter_map(|item| {
            let entry = item.entry?;
            let known = known.get(&entry.conversation_id).copied().unwrap_or(0);
            (entry.last_seq > known).then_some(v1::ConversationChange {
                conversation_id: entry.conversation_id,
                last_seq: entry.last_seq,
                unread: item.unread,
                unread_capped: item.unread_capped,
            })
        })
        .collect();
    reply(Payload::SyncResponse(v1::SyncResponse { changed }))
}
