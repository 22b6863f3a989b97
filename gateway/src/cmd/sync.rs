//! `sync`: the client's known `conv -> last seq`; the answer lists the
//! user's conversations changed since (or unknown to it), with last seq and
//! unread. The client then pages history for each.

use std::collections::BTreeMap;

use im_schema::v1::{self, envelope::Payload, query_request::Query, query_response::Result as R};

use super::reply;
use crate::error::error_frame;
use crate::AppState;

/// Conversations one sync looks at, per partition: the most recent ones.
pub const SYNC_CONVERSATIONS_PER_PARTITION_MAX: u32 = 200;

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
    let mut changed = Vec::new();
    for partition in 0..state.appender.topology().partitions {
        let query = Query::ConvList(v1::ConvListQuery {
            user_id: user.to_string(),
            limit: SYNC_CONVERSATIONS_PER_PARTITION_MAX,
            ..Default::default()
        });
        match crate::query::ask(&state.client, partition, (0, 0), query).await {
            Ok(R::ConvList(page)) => {
                for item in page.items {
                    let Some(entry) = item.entry else { continue };
                    if entry.last_seq > known.get(&entry.conversation_id).copied().unwrap_or(0) {
                        changed.push(v1::ConversationChange {
                            conversation_id: entry.conversation_id,
                            last_seq: entry.last_seq,
                            unread: item.unread,
                        });
                    }
                }
            }
            Ok(_) => return error_frame(v1::ErrorCode::Internal, "unexpected answer", ""),
            Err(code) => return error_frame(code, "conversation list unavailable", ""),
        }
    }
    reply(Payload::SyncResponse(v1::SyncResponse { changed }))
}
