//! What it means for an event to extend a conversation's log, in one place
//! for writers, projectors and auditors: the next `conv_seq`, the previous
//! event's hash, and creation first and only first. An event on the subject
//! that does not extend it (published around the writers) is not part of
//! the conversation: writers step over it, projectors dead-letter it,
//! auditors report it.

use im_schema::v1::{self, conv_event::Kind};

/// Why an event does not extend a conversation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("conv_seq {got} does not follow {last} (a gap, a repeat or a reorder)")]
    Position { last: u64, got: u64 },
    #[error("prev_hash does not match the hash of conv_seq {last}")]
    Hash { last: u64 },
    #[error("a conversation is created by its first event and only by it")]
    Creation,
}

/// Whether `event` extends a conversation whose last event is `last`
/// (conv_seq 0 and a zero hash before the first).
pub fn check_link(last: u64, last_hash: &[u8; 32], event: &v1::ConvEvent) -> Result<(), LinkError> {
    if event.conv_seq != last + 1 {
        return Err(LinkError::Position {
            last,
            got: event.conv_seq,
        });
    }
    if event.prev_hash != last_hash {
        return Err(LinkError::Hash { last });
    }
    if matches!(event.kind, Some(Kind::Created(_))) != (event.conv_seq == 1) {
        return Err(LinkError::Creation);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(conv_seq: u64, prev: [u8; 32], created: bool) -> v1::ConvEvent {
        v1::ConvEvent {
            conv_seq,
            prev_hash: prev.to_vec(),
            kind: Some(if created {
                Kind::Created(Default::default())
            } else {
                Kind::MessageSent(Default::default())
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_next_link_extends_a_conversation() {
        assert_eq!(check_link(0, &[0; 32], &event(1, [0; 32], true)), Ok(()));
        assert_eq!(check_link(4, &[3; 32], &event(5, [3; 32], false)), Ok(()));
        assert_eq!(
            check_link(4, &[3; 32], &event(4, [3; 32], false)),
            Err(LinkError::Position { last: 4, got: 4 })
        );
        assert_eq!(
            check_link(4, &[3; 32], &event(6, [3; 32], false)),
            Err(LinkError::Position { last: 4, got: 6 })
        );
        assert_eq!(
            check_link(4, &[3; 32], &event(5, [9; 32], false)),
            Err(LinkError::Hash { last: 4 })
        );
        assert_eq!(
            check_link(4, &[3; 32], &event(5, [3; 32], true)),
            Err(LinkError::Creation)
        );
        assert_eq!(
            check_link(0, &[0; 32], &event(1, [0; 32], false)),
            Err(LinkError::Creation)
        );
    }
}
