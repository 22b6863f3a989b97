//! After an owner unit starts on a lease it did not hold (taken, handed
//! over, or its own from before a restart), the last batch the previous
//! owner claimed may never have been published: it died between its claim
//! and its publish (I32). A client connected throughout would not learn of
//! those events until its conversation moved again. So the new owner
//! notifies: each conversation with events in that batch (`prev_conv`,
//! `conv`] gets a notification to its members (a `Deliver` without its
//! event, at the batch's last `conv_seq` there: what members of large
//! groups get for every event), which a client answers by reading history
//! from what it holds (docs/protocol.md); one that has it already does
//! nothing. A notification is not the event's fan-out: nothing is
//! delivered twice.

use std::collections::BTreeMap;

use im_schema::v1;
use im_streams::definitions::CONV_STREAM;

use crate::projections::{members, Effect};
use crate::query::QueryContext;

/// Events read from the claimed batch at most: one batch's worth of the
/// partition's events (a claim covers one batch).
pub const NOTICE_EVENTS_MAX: usize = crate::runner::BATCH_MAX;

#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    #[error("reading the claimed batch: {0}")]
    Read(#[from] im_streams::StreamsError),
    #[error("members: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// The notifications for the partition's events in (`after`, `upto`]: one
/// per conversation, to its members now.
pub async fn notices(
    ctx: &QueryContext,
    partition: u32,
    (after, upto): (u64, u64),
) -> Result<Vec<Effect>, NoticeError> {
    if upto <= after {
        return Ok(Vec::new());
    }
    let filter = ctx.topology.conv_partition_filter(partition);
    let events = im_streams::log::read_conv_events(
        &ctx.client,
        CONV_STREAM,
        &filter,
        after + 1,
        NOTICE_EVENTS_MAX,
    )
    .await?;
    let mut last: BTreeMap<String, (u64, u64, String)> = BTreeMap::new();
    for e in events.iter().filter(|e| e.stream_seq <= upto) {
        let kind = im_streams::conversation::event_type(&e.event).to_string();
        let at = (e.event.conv_seq, e.stream_seq, kind);
        last.insert(e.event.conversation_id.clone(), at);
    }
    let Some(state) = ctx.projection(members::NAME) else {
        return Ok(Vec::new());
    };
    let ks = state.ks();
    let mut out = Vec::new();
    for (conv, (conv_seq, stream_seq, event_type)) in last {
        let users = members::user_ids_of(&*ks, &conv)?;
        if users.is_empty() {
            continue;
        }
        out.push(Effect::Deliver {
            users,
            deliver: Box::new(v1::Deliver {
                conversation_id: conv,
                conv_seq,
                stream_seq,
                event: None,
                event_type,
                ..Default::default()
            }),
        });
    }
    Ok(out)
}
