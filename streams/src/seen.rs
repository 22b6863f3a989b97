//! What a writer knows of the commands already in one conversation's log,
//! so that a retry is answered with its original positions at any delay and
//! a new command costs nothing extra:
//!
//! - the `RECENT_COMMANDS_MAX` most recent command ids with their positions
//!   (a retry of one of these is answered at once);
//! - a Bloom filter of every older id the writer folded: "not in it" is a
//!   certain no, so a new id is published without asking anyone;
//! - for "maybe" (an older id, a false positive, or a part of the log this
//!   writer never folded), the caller asks the `dedupe` projection, which
//!   knows every id of the conversation up to `evicted_upto`.
//!
//! Events after the writer's version never need this: they reach the writer
//! through the conflict that a publish at a stale version meets, and the
//! refresh that follows puts them in `recent`.

use std::collections::{HashMap, VecDeque};

use fastbloom::BloomFilter;

/// Recent command ids a writer remembers per conversation with their
/// positions (~100 B each), for answering retries without a round trip.
pub const RECENT_COMMANDS_MAX: usize = 512;

/// Bytes of Bloom filter a conversation's older ids may use. 32 KiB hold
/// about 21,000 ids at a 1% false-positive rate; a conversation with more
/// history asks the `dedupe` projection for each new id past that (one
/// round trip), so memory stays bounded whatever the history's length.
pub const OLDER_FILTER_BYTES_MAX: usize = 32 * 1024;

/// False positives cost one lookup in the `dedupe` projection.
const FALSE_POSITIVE_RATE: f64 = 0.01;

/// Ids in the first filter layer; each next layer holds four times more.
const FIRST_LAYER_IDS: usize = 1024;

/// What is known of one command id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    /// In the log at (stream_seq, conv_seq), the command's last event.
    Stored { stream_seq: u64, conv_seq: u64 },
    /// Certainly not among the events up to the writer's version.
    New,
    /// Possibly among the events up to `upto` (a stream sequence): only the
    /// `dedupe` projection, once it has applied `upto`, can tell.
    Ask { upto: u64 },
}

/// A growing stack of Bloom layers, bounded by `OLDER_FILTER_BYTES_MAX`.
#[derive(Default)]
struct OlderIds {
    /// (filter, ids in it, ids it was sized for)
    layers: Vec<(BloomFilter, usize, usize)>,
    bytes: usize,
}

impl OlderIds {
    /// Adds an id; false when the byte bound leaves no room for it.
    fn insert(&mut self, id: &str) -> bool {
        if self.layers.last().is_none_or(|(_, n, cap)| n >= cap) {
            let capacity = FIRST_LAYER_IDS << (2 * self.layers.len());
            let layer = BloomFilter::with_false_pos(FALSE_POSITIVE_RATE).expected_items(capacity);
            let size = layer.num_bits() / 8;
            if self.bytes + size > OLDER_FILTER_BYTES_MAX {
                return false;
            }
            self.bytes += size;
            self.layers.push((layer, 0, capacity));
        }
        let (layer, n, _) = self.layers.last_mut().expect("a layer");
        layer.insert(id);
        *n += 1;
        true
    }

    fn may_contain(&self, id: &str) -> bool {
        self.layers.iter().any(|(l, _, _)| l.contains(id))
    }
}

/// The command ids of one conversation that a writer has folded.
#[derive(Default)]
pub struct SeenCommands {
    recent: HashMap<String, (u64, u64)>,
    order: VecDeque<(String, u64)>,
    older: OlderIds,
    /// Stream sequence of the newest event whose id is not in `recent`
    /// (0: none, every event so far is in `recent`).
    evicted_upto: u64,
    /// Whether every id up to `evicted_upto` is in `older`: false once the
    /// filter is full, or when a part of the log was never folded here.
    older_complete: bool,
    /// Heap bytes the recent ids hold (kept as they come and go).
    recent_bytes: usize,
}

/// One recent id's memory: the key twice (map and order), the positions,
/// and the containers' share.
fn recent_entry_bytes(msg_id: &str) -> usize {
    2 * (msg_id.len() + std::mem::size_of::<String>()) + 3 * std::mem::size_of::<u64>() + 16
}

impl SeenCommands {
    /// Nothing seen yet, and nothing before: a conversation folded from its
    /// first event.
    pub fn new() -> Self {
        SeenCommands {
            older_complete: true,
            ..Default::default()
        }
    }

    /// A conversation the writer took up from a snapshot at stream
    /// sequence `version` instead of folding its events: every id up to it
    /// is asked of the `dedupe` projection (a retry of any age is still
    /// found), later ones are known as they are folded.
    pub fn after_snapshot(version: u64) -> Self {
        SeenCommands {
            older_complete: false,
            evicted_upto: version,
            ..Default::default()
        }
    }

    /// Records a folded event. `msg_id` is its `Nats-Msg-Id`: a command's
    /// last event carries `<actor>:<client_msg_id>`, earlier ones a `:<i>`
    /// suffix, so a half-stored command is never mistaken for a stored one.
    /// An event without one (restored from an archive) is looked up in the
    /// projection, which applies the same rule to what it holds.
    pub fn record(&mut self, msg_id: &str, stream_seq: u64, conv_seq: u64) {
        if msg_id.is_empty() {
            self.forget(None, stream_seq);
            return;
        }
        if self
            .recent
            .insert(msg_id.to_string(), (stream_seq, conv_seq))
            .is_none()
        {
            self.order.push_back((msg_id.to_string(), stream_seq));
            self.recent_bytes += recent_entry_bytes(msg_id);
        }
        while self.order.len() > RECENT_COMMANDS_MAX {
            if let Some((old, seq)) = self.order.pop_front() {
                self.recent.remove(&old);
                self.recent_bytes -= recent_entry_bytes(&old);
                self.forget(Some(&old), seq);
            }
        }
    }

    fn forget(&mut self, id: Option<&str>, stream_seq: u64) {
        self.evicted_upto = self.evicted_upto.max(stream_seq);
        let kept = id.is_some_and(|id| self.older.insert(id));
        if !kept {
            self.older_complete = false;
        }
    }

    /// What is known of `msg_id` among the events folded so far.
    pub fn lookup(&self, msg_id: &str) -> Known {
        if let Some(&(stream_seq, conv_seq)) = self.recent.get(msg_id) {
            return Known::Stored {
                stream_seq,
                conv_seq,
            };
        }
        if self.evicted_upto == 0 || (self.older_complete && !self.older.may_contain(msg_id)) {
            return Known::New;
        }
        Known::Ask {
            upto: self.evicted_upto,
        }
    }

    /// Bytes held by the filter.
    pub fn filter_bytes(&self) -> usize {
        self.older.bytes
    }

    /// The memory held: the recent ids at their actual length, and the
    /// filter. O(1).
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.recent_bytes + self.older.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: usize) -> String {
        format!("u:{i}")
    }

    #[test]
    fn recent_ids_are_answered_with_their_positions() {
        let mut s = SeenCommands::new();
        s.record("a:1", 10, 1);
        assert_eq!(
            s.lookup("a:1"),
            Known::Stored {
                stream_seq: 10,
                conv_seq: 1
            }
        );
        assert_eq!(s.lookup("a:2"), Known::New);
    }

    #[test]
    fn an_evicted_id_is_never_called_new() {
        let mut s = SeenCommands::new();
        let n = RECENT_COMMANDS_MAX + 5_000;
        for i in 0..n {
            s.record(&id(i), 100 + i as u64, 1 + i as u64);
        }
        for i in 0..n - RECENT_COMMANDS_MAX {
            assert!(
                matches!(s.lookup(&id(i)), Known::Ask { upto } if upto == 100 + (n - RECENT_COMMANDS_MAX - 1) as u64),
                "id {i}"
            );
        }
        // New ids are almost always certain: at most a few false positives.
        let asked = (n..n + 10_000)
            .filter(|i| s.lookup(&id(*i)) != Known::New)
            .count();
        assert!(asked < 300, "{asked} of 10,000 new ids asked");
    }

    #[test]
    fn past_the_byte_bound_every_unknown_id_is_asked() {
        let mut s = SeenCommands::new();
        let n = 200_000;
        for i in 0..n {
            s.record(&id(i), 1 + i as u64, 1 + i as u64);
        }
        assert!(s.filter_bytes() <= OLDER_FILTER_BYTES_MAX);
        assert!(matches!(s.lookup("never:seen"), Known::Ask { .. }));
        assert!(matches!(s.lookup(&id(n - 1)), Known::Stored { .. }));
    }

    #[test]
    fn after_a_snapshot_what_it_covers_is_asked_and_what_follows_is_known() {
        let mut s = SeenCommands::after_snapshot(500);
        assert_eq!(s.lookup("a:old"), Known::Ask { upto: 500 });
        s.record("a:new", 501, 90);
        assert_eq!(
            s.lookup("a:new"),
            Known::Stored {
                stream_seq: 501,
                conv_seq: 90
            }
        );
        assert_eq!(s.lookup("a:other"), Known::Ask { upto: 500 });
    }

    #[test]
    fn an_event_without_a_msg_id_makes_lookups_ask() {
        let mut s = SeenCommands::new();
        s.record("", 7, 1);
        assert_eq!(s.lookup("a:1"), Known::Ask { upto: 7 });
    }
}
