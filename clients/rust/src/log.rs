//! Per-conversation ordering: events are handed out exactly once and in
//! `conv_seq` order; anything past a gap waits until history fills it.

use std::collections::BTreeMap;

use crate::LogEvent;

/// Events held past a gap, per conversation. Past it the highest are
/// dropped: they are in the log, and the gap fill pages them in again.
pub const PENDING_MAX: usize = 1_000;

#[derive(Debug, Default)]
pub struct ConversationLog {
    /// The highest seq handed out with every lower one (0: none yet).
    pub known: u64,
    pending: BTreeMap<u64, LogEvent>,
}

impl ConversationLog {
    pub fn new(known: u64) -> Self {
        ConversationLog {
            known,
            pending: BTreeMap::new(),
        }
    }

    /// Takes an event from any source; returns those now in order, once each.
    pub fn offer(&mut self, e: LogEvent) -> Vec<LogEvent> {
        if e.seq <= self.known || self.pending.contains_key(&e.seq) {
            return Vec::new();
        }
        self.pending.insert(e.seq, e);
        if self.pending.len() > PENDING_MAX {
            self.pending.pop_last();
        }
        let mut out = Vec::new();
        while let Some(next) = self.pending.remove(&(self.known + 1)) {
            self.known = next.seq;
            out.push(next);
        }
        out
    }

    /// Something past `known` is held: `known + 1` is missing.
    pub fn has_gap(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The highest stream position held: a history page must reach it.
    pub fn held_position(&self) -> u64 {
        self.pending
            .values()
            .map(|e| e.stream_seq)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64) -> LogEvent {
        LogEvent {
            conversation_id: "c".into(),
            seq,
            stream_seq: 100 + seq,
            event: Default::default(),
        }
    }

    fn seqs(v: Vec<LogEvent>) -> Vec<u64> {
        v.into_iter().map(|e| e.seq).collect()
    }

    #[test]
    fn hands_out_in_order_once_and_holds_past_a_gap() {
        let mut log = ConversationLog::new(0);
        assert_eq!(seqs(log.offer(ev(1))), [1]);
        assert_eq!(seqs(log.offer(ev(3))), Vec::<u64>::new());
        assert!(log.has_gap());
        assert_eq!(log.held_position(), 103);
        assert_eq!(seqs(log.offer(ev(1))), Vec::<u64>::new());
        assert_eq!(seqs(log.offer(ev(2))), [2, 3]);
        assert!(!log.has_gap());
        assert_eq!(seqs(log.offer(ev(3))), Vec::<u64>::new());
    }

    #[test]
    fn holds_at_most_pending_max_dropping_the_highest() {
        let mut log = ConversationLog::new(0);
        for seq in 2..(PENDING_MAX as u64 + 10) {
            log.offer(ev(seq));
        }
        assert_eq!(log.pending.len(), PENDING_MAX);
        // Seq 1 arriving fills the gap; the one held too many was dropped.
        let out = seqs(log.offer(ev(1)));
        assert_eq!(
            (out.len(), out.last()),
            (PENDING_MAX, Some(&(PENDING_MAX as u64)))
        );
        assert_eq!(log.known, PENDING_MAX as u64);
    }
}
