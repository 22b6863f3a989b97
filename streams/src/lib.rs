//! The event log: subjects and partitions, stream definitions and the
//! append path. The rules it applies are `im-rules` (pure, no IO),
//! re-exported here.

pub mod append;
pub mod codec;
pub mod connect;
pub mod content;
pub mod dedupe_index;
pub mod definitions;
pub mod error;
pub mod exit;
pub mod identities;
pub mod log;
#[cfg(feature = "cli")]
pub mod logging;
pub mod media;
pub mod nats_auth;
pub mod presence;
pub mod seen;
pub mod signing;
pub mod snapshot;
pub mod subjects;
pub mod validity;
pub mod writer_cache;

pub use im_rules::{chain, conversation, ids, mapping, people, seal, search, verdict};

pub use append::{
    AppendOutcome, Appender, AppenderOptions, AppenderStats, ReceiptKind, ReceiptOutcome,
};
pub use conversation::{Action, Command, ConvState, MessageBody, Rejection, Role};
pub use definitions::{apply_streams, StreamSettings};
pub use error::StreamsError;
pub use subjects::Topology;
