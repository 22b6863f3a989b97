//! The verdict on each conversation event, reached once per instance by
//! the one function writers and auditors call too
//! (`im_streams::validity`): signed by a key registered for its position,
//! and exactly what the rules produce from the state before it. Every
//! projection dead-letters what fails, so nothing unsigned, forged or
//! against the rules is shown to anyone (I30).
//!
//! The state before an event comes from the `members` projection's rows
//! (`members::rules_state`), kept here in memory while it is used
//! (bounded in bytes) and moved on by each valid event. Where `members`
//! has already applied an event, its dead letters are the verdict: a
//! verdict is a function of the log before the event and never changes.

use std::num::NonZeroUsize;
use std::sync::Arc;

use im_schema::v1;
use im_streams::codec::StoredEvent;
use im_streams::conversation::ConvState;
use im_streams::signing::{SignatureError, Signed, WriterKeys};
use im_streams::validity::{self, Invalid};
use lru::LruCache;

use crate::projections::members;
use crate::runner::{dead_letter_key, Source};
use crate::store::StoreError;
use crate::tx::Tx;

/// Bytes of conversation state the judge keeps, all conversations
/// together. A 5,000-member group's state is ~500 KB, a small
/// conversation's with a full message index ~60 KB: 64 MiB keeps the busy
/// ones; a miss costs one read of the conversation's rows.
pub const JUDGE_CACHE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Conversations kept, whatever their size.
pub const JUDGE_CACHE_CONVERSATIONS_MAX: usize = 1 << 16;

/// Signature verdicts of a batch's events, by stream seq.
pub type SignatureVerdicts = std::collections::HashMap<u64, Result<(), SignatureError>>;

/// Threads that verify a batch's signatures: the cores (asking costs
/// system calls, so it is asked once).
static VERIFY_THREADS: std::sync::LazyLock<usize> =
    std::sync::LazyLock::new(|| std::thread::available_parallelism().map_or(1, |n| n.get()));

/// Events verified on one thread at least: fewer are verified in less time
/// than a thread takes to start (at everyday rates a batch is an event).
const VERIFY_CHUNK_MIN: usize = 64;

/// The signature verdicts of many events, reached in parallel (as many
/// threads as cores), each exactly the writers' (`WriterKeys::check_many`).
pub fn sign_verdicts(keys: &WriterKeys, events: &[Signed<'_>]) -> SignatureVerdicts {
    let chunk = events.len().div_ceil(*VERIFY_THREADS).max(VERIFY_CHUNK_MIN);
    if events.len() <= chunk {
        // One part: verified here, without a thread to start and join.
        let verdicts = keys.check_many(events);
        return events.iter().map(|e| e.stream_seq).zip(verdicts).collect();
    }
    std::thread::scope(|scope| {
        let parts: Vec<_> = events
            .chunks(chunk)
            .map(|part| scope.spawn(move || (part, keys.check_many(part))))
            .collect();
        parts
            .into_iter()
            .flat_map(|h| {
                let (part, verdicts) = h.join().expect("verifying does not panic");
                part.iter()
                    .map(|e| e.stream_seq)
                    .zip(verdicts)
                    .collect::<Vec<_>>()
            })
            .collect()
    })
}

/// Why an event is refused, as its dead letter says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: String,
    pub reason: String,
}

impl Refusal {
    pub fn new(code: &str, reason: impl std::fmt::Display) -> Self {
        Refusal {
            code: code.to_string(),
            reason: reason.to_string(),
        }
    }

    fn invalid(e: &Invalid) -> Self {
        Refusal::new(e.code(), with_causes(e))
    }

    /// A refusal for an error, its causes in the reason (a dead letter keeps
    /// what the decoder said).
    pub fn of_error(code: &str, e: &dyn std::error::Error) -> Self {
        Refusal::new(code, with_causes(e))
    }
}

/// An error and its causes, as one line.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let said = cause.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        next = cause.source();
    }
    text
}

/// What the judge knows of a conversation. Nearly every entry is a
/// `State`: boxing it would add an allocation to each for the rare
/// `Unknown`.
#[allow(clippy::large_enum_variant)]
enum Known {
    State {
        state: ConvState,
        bytes: Measured,
    },
    /// Folded from a later stream sequence than its creation (a keyspace
    /// rebuilt `--from-seq`): its rules state is not known, only
    /// signatures are checked.
    Unknown,
}

/// A state's memory: its membership measured again only when the member
/// count changed, its recent-message index as its length times an entry's
/// bytes, measured on the entries at hand when the membership is (ids
/// differ little within a conversation). O(1) per event; counting every
/// entry at the longest an id may be overstated a state fivefold, and a
/// working set that fits (1,000 busy conversations) thrashed.
#[derive(Clone, Copy, Default)]
struct Measured {
    members: usize,
    bytes: usize,
    entry_bytes: usize,
}

impl Measured {
    fn of(state: &ConvState, before: Measured) -> Measured {
        let count = state.members.len() + state.blacklist.len();
        let unchanged = count == before.members && before.bytes > 0;
        if unchanged && (before.entry_bytes > 0 || state.messages.is_empty()) {
            return before;
        }
        let entries = state.messages.len().max(1);
        Measured {
            members: count,
            bytes: state.membership_bytes(),
            entry_bytes: state
                .index_bytes()
                .saturating_sub(std::mem::size_of::<ConvState>() + state.title.capacity())
                / entries,
        }
    }

    fn total(&self, state: &ConvState) -> usize {
        self.bytes
            + std::mem::size_of::<ConvState>()
            + state.title.capacity()
            + state.messages.len() * self.entry_bytes
    }
}

pub struct Judge {
    keys: Arc<WriterKeys>,
    /// Signature verdicts reached for the batch at hand, by stream seq
    /// (`WriterKeys::check_many`); an event without one is checked here.
    signed: SignatureVerdicts,
    states: LruCache<String, Known>,
    sizes: std::collections::HashMap<String, usize>,
    bytes: usize,
    bytes_max: usize,
}

impl Default for Judge {
    fn default() -> Self {
        Self::new(JUDGE_CACHE_BYTES_MAX)
    }
}

/// Where the rules state of a conversation the judge does not hold comes
/// from.
#[derive(Clone, Copy)]
pub enum Rows<'a, 't> {
    /// The `members` rows of the keyspace being folded.
    Members(&'a Tx<'t>),
    /// Nowhere: the fold starts at the log's beginning (a repair of one
    /// conversation into scratch), so a conversation starts empty.
    Genesis,
}

impl Judge {
    pub fn new(bytes_max: usize) -> Self {
        Self::with_bounds(bytes_max, JUDGE_CACHE_CONVERSATIONS_MAX)
    }

    fn with_bounds(bytes_max: usize, conversations_max: usize) -> Self {
        Judge {
            keys: Arc::default(),
            signed: SignatureVerdicts::default(),
            states: LruCache::new(NonZeroUsize::new(conversations_max.max(1)).expect("non-zero")),
            sizes: Default::default(),
            bytes: 0,
            bytes_max,
        }
    }

    /// The keys the next events are checked against (prepared for them),
    /// and the signature verdicts reached for them already, if any.
    pub fn set_keys(&mut self, keys: Arc<WriterKeys>, signed: SignatureVerdicts) {
        self.keys = keys;
        self.signed = signed;
    }

    /// Forgets every state (the rows they came from changed underneath: a
    /// failed commit, a repair, a swapped keyspace).
    pub fn clear(&mut self) {
        self.states.clear();
        self.sizes.clear();
        self.bytes = 0;
    }

    /// Forgets one conversation's state.
    pub fn forget(&mut self, conv: &str) {
        self.states.pop(conv);
        self.bytes -= self.sizes.remove(conv).unwrap_or(0);
    }

    /// Whether `stored` is part of its conversation; a valid event moves
    /// the conversation's state on. `genesis`: a conversation with no rows
    /// must start at its creation.
    pub fn judge(
        &mut self,
        rows: Rows,
        genesis: bool,
        stored: &StoredEvent,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let conv = stored.event.conversation_id.as_str();
        if !self.states.contains(conv) {
            let known = load(rows, genesis, stored)?;
            // At the count bound the least recent goes: its bytes with it.
            if let Some((gone, _)) = self.states.push(conv.to_string(), known) {
                if gone != conv {
                    self.bytes -= self.sizes.remove(&gone).unwrap_or(0);
                }
            }
        }
        let signed = match self.signed.remove(&stored.stream_seq) {
            Some(signed) => signed,
            None => {
                let c = stored.candidate();
                self.keys.check_at(c.stream_seq, c.signature, c.payload)
            }
        };
        let verdict = match self.states.get_mut(conv).expect("put above") {
            Known::Unknown => signed.map_err(|e| Refusal::invalid(&Invalid::Signature(e))),
            Known::State { state, bytes } => {
                let verdict =
                    validity::fold_signed(state, signed, stored).map_err(|e| Refusal::invalid(&e));
                *bytes = Measured::of(state, *bytes);
                verdict
            }
        };
        self.account(conv);
        Ok(verdict)
    }

    /// Keeps the byte total true after `conv` changed, evicting the least
    /// recently used past the bound (never the one just used).
    fn account(&mut self, conv: &str) {
        let now = match self.states.peek(conv) {
            Some(Known::State { state, bytes }) => bytes.total(state) + conv.len(),
            _ => conv.len() + 64,
        };
        let before = self.sizes.insert(conv.to_string(), now).unwrap_or(0);
        self.bytes = self.bytes + now - before;
        while self.bytes > self.bytes_max && self.states.len() > 1 {
            if let Some((c, _)) = self.states.pop_lru() {
                self.bytes -= self.sizes.remove(&c).unwrap_or(0);
            }
        }
    }

    /// (conversations, bytes) kept.
    pub fn usage(&self) -> (usize, usize) {
        (self.states.len(), self.bytes)
    }
}

/// The state a conversation's next event is judged against.
fn load(rows: Rows, genesis: bool, stored: &StoredEvent) -> Result<Known, StoreError> {
    let conv = stored.event.conversation_id.as_str();
    let loaded = match rows {
        Rows::Members(tx) => members::rules_state(tx, conv)?,
        Rows::Genesis => None,
    };
    Ok(match loaded {
        Some(state) => Known::State {
            bytes: Measured::of(&state, Measured::default()),
            state,
        },
        None if genesis || stored.event.conv_seq == 1 => Known::State {
            state: ConvState::empty(conv),
            bytes: Measured::default(),
        },
        None => Known::Unknown,
    })
}

/// The verdicts `members` recorded for the IM_CONV events from `first` to
/// `last` (a rebuild's round): its dead letters there, read at once; every
/// other event of the range is valid.
pub fn recorded_between(
    members: &dyn crate::store::Keyspace,
    first: u64,
    last: u64,
) -> Result<Recorded, StoreError> {
    let from = dead_letter_key(Source::Conv, first);
    let to = dead_letter_key(Source::Conv, last.saturating_add(1));
    members
        .range(&from, &to, false, usize::MAX)?
        .into_iter()
        .map(|(k, v)| {
            let l: v1::DeadLetter = crate::store::decode_value(&k, &v)?;
            let refusal = Refusal {
                code: l.code,
                reason: l.reason,
            };
            Ok((l.stream_seq, refusal))
        })
        .collect()
}

/// Recorded verdicts of a range: the refused events (the rest are valid).
pub type Recorded = std::collections::BTreeMap<u64, Refusal>;

/// The verdict `members` recorded for an event it has applied: its dead
/// letter's, or valid.
pub fn recorded(members_tx: &Tx, stream_seq: u64) -> Result<Result<(), Refusal>, StoreError> {
    let letter: Option<v1::DeadLetter> =
        members_tx.get_msg(&dead_letter_key(Source::Conv, stream_seq))?;
    Ok(match letter {
        Some(l) => Err(Refusal {
            code: l.code,
            reason: l.reason,
        }),
        None => Ok(()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use im_streams::conversation::{decide, Action, Command, Role};
    use im_streams::seal::seal;

    /// A group's creation, as stored at `stream_seq`.
    fn created(conv: &str, stream_seq: u64) -> StoredEvent {
        let cmd = Command {
            actor: "own".into(),
            client_msg_id: "c".into(),
            action: Action::CreateGroup {
                title: conv.into(),
                members: vec![("ann".into(), Role::Member)],
            },
        };
        let state = ConvState::empty(conv);
        let sealed = seal(&state, decide(&state, &cmd, 1_000).unwrap()).remove(0);
        StoredEvent {
            stream_seq,
            subject: format!("im.conv.0.{conv}"),
            event: sealed.event,
            hash: sealed.hash,
            payload: sealed.payload,
            writer: String::new(),
            msg_id: String::new(),
            signature: None,
        }
    }

    /// A state's bytes as counted are its bytes as measured, within a
    /// rounding, and a thousand busy conversations (a full recent index
    /// each) fit the default bound: the working set of a busy instance.
    #[test]
    fn a_full_index_is_counted_at_its_size_and_a_thousand_fit() {
        let mut state = ConvState::empty("c1");
        for i in 0..3 {
            let member = im_streams::conversation::MemberState {
                role: Role::Member,
                muted_until_ms: 0,
            };
            state.members.insert(format!("user{i}"), member);
        }
        for seq in 1..=im_streams::conversation::MESSAGE_INDEX_MAX as u64 {
            let meta = im_streams::conversation::MessageMeta {
                sender: format!("user{}", seq % 3),
                client_msg_id: format!("m-{seq:08}"),
                sent_at_ms: 0,
                recalled: false,
            };
            state.messages.insert(seq, meta);
        }
        let counted = Measured::of(&state, Measured::default()).total(&state);
        let measured = state.index_bytes() + state.membership_bytes();
        assert!(counted <= measured && counted + state.messages.len() >= measured);
        assert!(1_000 * counted < JUDGE_CACHE_BYTES_MAX, "{counted}");
    }

    #[test]
    fn its_bytes_are_those_of_the_states_it_holds_at_either_bound() {
        let mut judge = Judge::with_bounds(usize::MAX, 4);
        for i in 0..50u64 {
            let ev = created(&format!("c{i}"), i + 1);
            assert_eq!(judge.judge(Rows::Genesis, true, &ev).unwrap(), Ok(()));
        }
        let (held, bytes) = judge.usage();
        assert_eq!(held, 4);
        assert_eq!(bytes, judge.sizes.values().sum::<usize>());
        assert_eq!(judge.sizes.len(), 4, "sizes of evicted states are gone");
        let one = bytes / 4;
        let mut judge = Judge::with_bounds(2 * one, 1_000);
        for i in 0..50u64 {
            let ev = created(&format!("d{i}"), i + 1);
            judge.judge(Rows::Genesis, true, &ev).unwrap().unwrap();
        }
        let (held, bytes) = judge.usage();
        assert!(held <= 2 && bytes <= 2 * one, "{held} {bytes}");
    }
}
