//! The read models, each a fold of events into its own keyspace. A fold is
//! IO-free apart from the keyspace it writes, so it is tested without NATS;
//! the runner feeds it, commits its writes with the checkpoint, and carries
//! out its effects (deliveries) after the commit.

use im_schema::v1;
use im_streams::codec::StoredEvent;

use crate::store::StoreError;
use crate::tx::Tx;

pub mod convlist;
pub mod dedupe;
pub mod history;
pub mod members;
pub mod membership;
pub mod people;
pub mod receipts;
pub mod search;
pub mod unread;

/// One event, from either stream.
pub enum Input<'a> {
    Conv(&'a StoredEvent),
    Rcpt {
        stream_seq: u64,
        event: &'a v1::ReceiptEvent,
    },
}

/// Something to publish once the commit that produced it is durable.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// To each of `users`; with `deliver.group`, also once on the
    /// conversation's group subject (`users` are then those whose
    /// gateways must learn to join it: the joined, or every member when
    /// the group just became large).
    Deliver {
        users: Vec<String>,
        deliver: Box<v1::Deliver>,
    },
    Receipt {
        users: Vec<String>,
        update: v1::ReceiptUpdate,
    },
}

/// What a fold may use besides its keyspace.
pub struct FoldCtx<'a> {
    /// Member lists, kept by the folds (see `members_cache.rs`).
    pub members: &'a mut crate::members_cache::MembersCache,
    /// Whether effects are wanted (a rebuild's folds need none).
    pub effects: bool,
    /// Groups with more members than this are delivered once on their
    /// group subject (`Deliver.group`), not per member.
    pub large_above: usize,
}

pub trait Projection: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Whether it also consumes IM_RCPT.
    fn reads_receipts(&self) -> bool {
        false
    }
    /// Whether it keeps rows that are not a function of the log (the
    /// notifier's queue and outbox, which it works off): never rebuilt or
    /// repaired, since a new generation would lose them.
    fn keeps_own_rows(&self) -> bool {
        false
    }
    /// Folds one event. The writes an event makes do not grow with its
    /// conversation's size (membership changes write their members' rows).
    fn apply(
        &self,
        tx: &mut Tx,
        input: &Input,
        ctx: &mut FoldCtx,
    ) -> Result<Vec<Effect>, StoreError>;
}

impl std::fmt::Debug for dyn Projection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every projection, in the order the runner starts them.
pub fn all() -> Vec<std::sync::Arc<dyn Projection>> {
    vec![
        std::sync::Arc::new(history::History),
        std::sync::Arc::new(members::Members),
        std::sync::Arc::new(unread::Unread),
        std::sync::Arc::new(convlist::ConvList),
        std::sync::Arc::new(receipts::Receipts),
        std::sync::Arc::new(dedupe::Dedupe),
        std::sync::Arc::new(search::Search),
    ]
}

/// The projection names, for configs and CLIs.
pub const NAMES: [&str; 7] = [
    "history", "members", "unread", "convlist", "receipts", "dedupe", "search",
];

/// The conversation a model key belongs to: every key of every projection
/// names exactly one, first (after the tag) or last. Bookkeeping keys
/// belong to none.
pub fn conv_of_key(key: &[u8]) -> Option<&[u8]> {
    let (&tag, rest) = key.split_first()?;
    let first = || rest.split(|b| *b == 0).next();
    // The last part follows the last separator: ids hold no 0 byte, so a 0
    // inside a sequence before it does not matter.
    let last = || rest.rsplit(|b| *b == 0).next();
    match tag {
        crate::chain::HEAD
        | history::ENTRY
        | members::CONVERSATION
        | members::RECENT
        | members::RECENT_COUNT
        | membership::MEMBER
        | membership::BLACKLIST
        | membership::KIND
        | membership::MEMBERS_SEQ
        | receipts::CURSORS
        | unread::MARK
        | unread::CURSOR
        | convlist::SUMMARY
        | people::ROW
        | search::DOC
        | search::TITLE
        | search::USER_NAME => first(),
        members::USER_CONV
        | unread::ROW
        | convlist::ENTRY
        | dedupe::RECORD
        | people::CONTACT
        | search::SPANS => last(),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod testing;
