//! The auditor CLI's library (`im-replay`): export the streams, verify the
//! hash chain and the rules, reconstruct a conversation as of a sequence
//! or time, and archive stream segments to object storage and back.

pub mod audit;
pub mod cmd;
pub mod objects;
pub mod read;

use im_streams::error::BoxError;

/// Why a replay tool failed (not a violation: those are reports).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("jetstream: {0}")]
    JetStream(#[source] BoxError),
    #[error("object storage: {0}")]
    Storage(#[source] BoxError),
    #[error("no object {key}")]
    NoObject { key: String },
    #[error("{0}")]
    Invalid(String),
}
