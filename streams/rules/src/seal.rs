//! Sealing: the one place that turns a command's decided events into what
//! the log stores. Each is positioned after the state (`conv_seq`), chained
//! (`prev_hash`, the sha256 of the previous event's stored bytes) and
//! encoded. Writers, the auditor, the simulators and the bench seeder all
//! seal here, so an event is the same bytes whoever made it.

use bytes::Bytes;
use im_schema::v1;
use sha2::{Digest, Sha256};

use crate::conversation::{apply, ConvState};

/// sha256 of an event's stored payload: the link the next event carries.
pub fn payload_hash(payload: &[u8]) -> [u8; 32] {
    Sha256::digest(payload).into()
}

/// An event as the log stores it: positioned, chained and encoded.
#[derive(Clone, Debug, PartialEq)]
pub struct Sealed {
    pub event: v1::ConvEvent,
    pub payload: Bytes,
    pub hash: [u8; 32],
}

/// Seals a command's decided events after `state`: the i-th at
/// `conv_seq + 1 + i`, each carrying the hash of the one before it (the
/// state's last hash for the first).
pub fn seal(state: &ConvState, decided: Vec<v1::ConvEvent>) -> Vec<Sealed> {
    let (mut conv_seq, mut prev) = (state.conv_seq, state.last_hash);
    decided
        .into_iter()
        .map(|mut event| {
            conv_seq += 1;
            event.conv_seq = conv_seq;
            event.prev_hash = prev.to_vec();
            let payload = Bytes::from(im_schema::encode(&event));
            prev = payload_hash(&payload);
            Sealed {
                event,
                payload,
                hash: prev,
            }
        })
        .collect()
}

impl ConvState {
    /// Folds a sealed event that the log stored at subject sequence
    /// `stream_seq`.
    pub fn extend(&mut self, sealed: &Sealed, stream_seq: u64) {
        apply(self, &sealed.event);
        self.record_position(stream_seq, sealed.hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use im_schema::v1::conv_event::Kind;

    fn decided(text: &str) -> v1::ConvEvent {
        v1::ConvEvent {
            conversation_id: "c".into(),
            actor: "a".into(),
            kind: Some(Kind::MessageSent(v1::MessageSent {
                sealed: None,
                body: Some(v1::message_sent::Body::Text(text.into())),
                meta: Default::default(),
            })),
            ..Default::default()
        }
    }

    #[test]
    fn each_event_follows_and_chains_to_the_one_before() {
        let mut state = ConvState::empty("c");
        state.conv_seq = 4;
        state.last_hash = [3; 32];
        let sealed = seal(&state, vec![decided("x"), decided("y")]);
        assert_eq!(
            sealed.iter().map(|s| s.event.conv_seq).collect::<Vec<_>>(),
            [5, 6]
        );
        assert_eq!(sealed[0].event.prev_hash, vec![3; 32]);
        assert_eq!(sealed[1].event.prev_hash, sealed[0].hash.to_vec());
        for s in &sealed {
            assert_eq!(s.payload, im_schema::encode(&s.event));
            assert_eq!(s.hash, payload_hash(&s.payload));
        }
        state.extend(&sealed[0], 77);
        assert_eq!(
            (state.conv_seq, state.version, state.last_hash),
            (5, 77, sealed[0].hash)
        );
    }
}
