//! The projector: durable consumers per projection fold IM_CONV and IM_RCPT
//! into sled read models, each commit carrying its checkpoint atomically; a
//! query service answers over NATS request/reply; deliveries go out to
//! `im.deliver.<user_id>` only after the event is applied.

pub mod acks;
pub mod chain;
pub mod dead_letters;
pub mod digest;
pub mod fold;
pub mod heartbeat;
pub mod judge;
pub mod keys;
pub mod lease;
pub mod members_cache;
pub mod metrics;
pub mod notice;
pub mod opening;
pub mod pipeline;
pub mod pool;
pub mod projections;
pub mod projector;
pub mod query;
pub mod rebuild;
pub mod repair;
pub mod runner;
pub mod search;
pub mod store;
pub mod store_fjall;
pub mod supervisor;
pub mod tx;

pub use projector::{
    Clients, Projector, ProjectorConfig, ProjectorError, Serves, DEFAULT_FANOUT_THRESHOLD,
    DEFAULT_INSTANCE,
};
pub use runner::RunError;
