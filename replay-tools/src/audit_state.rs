//! An audit saved and taken up again (`im-replay verify --state FILE`):
//! everything the audit of IM_CONV up to a sequence knows (each
//! conversation's rules state, chain head, commands seen, unfinished
//! command), so a nightly audit reads only the new events. The file is the
//! state's bytes followed by their sha256, checked before anything in it
//! is believed: a state changed or cut short is refused, never used.

use sha2::{Digest as _, Sha256};

use super::*;

/// The state format this build writes and reads.
pub const STATE_FORMAT: u32 = 1;

/// Bytes of the digest that ends a state file.
pub(super) const DIGEST_BYTES: usize = 32;

/// Why a saved state cannot be taken up.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("the state's digest does not match its contents: it was changed or cut short")]
    Digest,
    #[error("the state does not decode")]
    Undecodable(#[source] prost::DecodeError),
    #[error("state format {0} is newer than this im-replay's ({STATE_FORMAT})")]
    TooNew(u32),
    #[error("the state's digest is {found}, not the {expected} expected")]
    NotTheExpected { expected: String, found: String },
    #[error("the state of conversation {0:?} is not a conversation's rules state")]
    NotAState(String),
    #[error("the state is not laid out as this build writes it: {0}")]
    Malformed(&'static str),
    #[error("reading the state")]
    Io(#[source] std::io::Error),
}

/// Where an audit stands, as `save` records it beside the auditor's own
/// state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Position {
    pub last_seq: u64,
    pub last_payload_hash: [u8; 32],
    /// Events audited over every run.
    pub events: u64,
    /// sha256 over each run's range digest in turn (hex).
    pub chain_digest: String,
}

impl Position {
    /// Where the audit stands after a run that covered `report`'s range
    /// and ended at `last_seq`, whose payload hashes to `last_hash`.
    pub fn after(&self, report: &Report, last_seq: u64, last_hash: [u8; 32]) -> Position {
        let mut chain = Sha256::new();
        chain.update(self.chain_digest.as_bytes());
        chain.update(report.range_digest.as_bytes());
        Position {
            last_seq,
            last_payload_hash: last_hash,
            events: self.events + report.events,
            chain_digest: hex::encode(chain.finalize()),
        }
    }
}

fn command(c: &Option<(String, String)>) -> Option<v1::AuditCommand> {
    c.as_ref().map(|(actor, id)| v1::AuditCommand {
        actor: actor.clone(),
        client_msg_id: id.clone(),
    })
}

fn uncommand(c: Option<v1::AuditCommand>) -> Option<(String, String)> {
    c.map(|c| (c.actor, c.client_msg_id))
}

impl ConvAudit {
    pub(super) fn save(&self, conv: &str) -> v1::AuditedConversation {
        let mut commands: Vec<u128> = self.commands.iter().copied().collect();
        commands.sort_unstable();
        v1::AuditedConversation {
            conversation_id: conv.to_string(),
            state: self
                .state
                .as_ref()
                .filter(|s| s.exists())
                .map(im_streams::snapshot::to_wire),
            events: self.events,
            commands: commands.iter().flat_map(|c| c.to_be_bytes()).collect(),
            direct_created: self.direct_created.clone(),
            people_opened: command(&self.people_opened),
            last: command(&self.last),
        }
    }

    fn restore(saved: v1::AuditedConversation) -> Result<ConvAudit, StateError> {
        let conv = saved.conversation_id;
        let state = match saved.state {
            None => ConvState::empty(conv.clone()),
            Some(wire) => im_streams::snapshot::from_wire(&conv, wire)
                .ok_or_else(|| StateError::NotAState(conv.clone()))?,
        };
        Ok(ConvAudit {
            state: Some(state),
            commands: saved
                .commands
                .chunks_exact(16)
                .map(|c| u128::from_be_bytes(c.try_into().expect("16 bytes")))
                .collect(),
            direct_created: saved.direct_created,
            people_opened: uncommand(saved.people_opened),
            last: uncommand(saved.last),
            events: saved.events,
        })
    }
}

impl Auditor {
    /// The conversations it holds, in order.
    pub fn conversation_ids(&self) -> impl Iterator<Item = &str> {
        self.convs.keys().map(String::as_str)
    }

    /// One conversation's audit as field 6 of `AuditState`
    /// (`conversations`), appended to `out`.
    pub fn encode_conversation(&self, conv: &str, out: &mut Vec<u8>) {
        if let Some(audit) = self.convs.get(conv) {
            prost::encoding::message::encode(6, &audit.save(conv), out);
        }
    }

    /// An auditor that goes on from a saved state, checking signatures
    /// against `keys`; and where the saved audit stood.
    pub fn restore(
        saved: v1::AuditState,
        keys: im_streams::signing::WriterKeys,
    ) -> Result<(Auditor, Position), StateError> {
        if saved.format > STATE_FORMAT {
            return Err(StateError::TooNew(saved.format));
        }
        let position = Position {
            last_seq: saved.last_seq,
            last_payload_hash: saved.last_payload_hash.try_into().unwrap_or([0; 32]),
            events: saved.events,
            chain_digest: saved.chain_digest,
        };
        let convs = saved
            .conversations
            .into_iter()
            .map(|c| Ok((c.conversation_id.clone(), ConvAudit::restore(c)?)))
            .collect::<Result<_, StateError>>()?;
        let auditor = Auditor {
            convs,
            keys,
            ..Default::default()
        };
        Ok((auditor, position))
    }
}

/// A state's head: every field but its conversations.
pub fn head(position: &Position) -> v1::AuditState {
    v1::AuditState {
        format: STATE_FORMAT,
        last_seq: position.last_seq,
        last_payload_hash: position.last_payload_hash.to_vec(),
        events: position.events,
        chain_digest: position.chain_digest.clone(),
        conversations: Vec::new(),
    }
}
