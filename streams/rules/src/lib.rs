//! The conversation rules as a pure core, with no IO: ids, the aggregate
//! (`decide`/`apply`), what it means for an event to extend a log
//! (`chain`), the one `seal` that positions, chains and encodes events, and
//! the one mapping between actions and the events that carry them.
//!
//! The crate depends on no async runtime and no NATS client, so the
//! compiler keeps the rules free of IO (ARCHITECTURE.md, I8).

pub mod chain;
pub mod content;
pub mod conversation;
pub mod ids;
pub mod mapping;
pub mod people;
pub mod seal;
pub mod search;
pub mod verdict;

pub use conversation::{Action, Command, ConvState, MessageBody, Rejection, Role};
pub use seal::{payload_hash, seal, Sealed};
