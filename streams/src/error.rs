//! The crate's error kinds. Rejections by the rules are not errors: they are
//! an `AppendOutcome`.

/// What can go wrong talking to JetStream or reading the log.
#[derive(Debug, thiserror::Error)]
pub enum StreamsError {
    /// The subject kept moving: every retry met a newer version.
    #[error("conflict: expected version {expected}, log is at {actual} after {attempts} attempts")]
    Conflict {
        expected: u64,
        actual: u64,
        attempts: u32,
    },
    /// JetStream did not answer, or answered with an error we cannot act on.
    /// The command may or may not have been stored: retry with the same
    /// client_msg_id, which is safe.
    #[error("jetstream unavailable: {0}")]
    Unavailable(String),
    /// The log holds something the writer cannot trust (undecodable event, a
    /// conv_seq gap). Never silently skipped by a writer.
    #[error("corrupt log at stream seq {stream_seq}: {detail}")]
    Corrupt { stream_seq: u64, detail: String },
    #[error("stream {stream} cannot change {field}: {detail}")]
    IncompatibleStream {
        stream: String,
        field: String,
        detail: String,
    },
    #[error("configuration: {0}")]
    Config(String),
}

impl StreamsError {
    pub(crate) fn unavailable(e: impl std::fmt::Display) -> Self {
        StreamsError::Unavailable(e.to_string())
    }
}
