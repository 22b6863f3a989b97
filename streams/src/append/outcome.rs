//! What a command's append ended in: a leaf the conversions (`forward.rs`)
//! and the command loop both use.

use crate::conversation::Rejection;

/// What happened to a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Durably stored (JetStream's PubAck received). Positions are those of
    /// the command's last event.
    Stored {
        conv_id: String,
        stream_seq: u64,
        conv_seq: u64,
    },
    /// The same (sender, client_msg_id) was stored before; the original ids.
    Duplicate {
        conv_id: String,
        stream_seq: u64,
        conv_seq: u64,
    },
    /// Refused by the rules; nothing was appended.
    Rejected(Rejection),
}
