//! The event log: subjects and partitions, stream definitions, the
//! conversation aggregate (pure core) and the append path.

pub mod append;
pub mod chain;
pub mod codec;
pub mod connect;
pub mod conversation;
pub mod dedupe_index;
pub mod definitions;
pub mod error;
pub mod ids;
pub mod log;
pub mod media;
pub mod seen;
pub mod subjects;
pub mod writer_cache;

pub use append::{
    AppendOutcome, Appender, AppenderOptions, AppenderStats, ReceiptKind, ReceiptOutcome,
};
pub use conversation::{Action, Command, ConvState, MessageBody, Rejection, Role};
pub use definitions::{apply_streams, StreamSettings};
pub use error::StreamsError;
pub use subjects::Topology;
