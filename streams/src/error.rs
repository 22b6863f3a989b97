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
    #[error("jetstream unavailable ({context}): {source}")]
    Unavailable {
        /// What the caller was doing.
        context: &'static str,
        #[source]
        source: BoxError,
    },
    /// The stream refused an event as larger than its message limit
    /// (`max_msg_bytes`). Not retryable: the same command makes the same
    /// event. Nothing was stored.
    #[error("an event of {bytes} bytes exceeds the stream's message limit: {source}")]
    EventTooLarge {
        bytes: usize,
        #[source]
        source: BoxError,
    },
    /// No server of the list answered.
    #[error("connecting to {servers}: {source}")]
    Connect {
        servers: String,
        #[source]
        source: async_nats::ConnectError,
    },
    /// A server answered and refused who this process says it is.
    #[error(
        "the NATS server at {servers} refused this connection's identity ({who}): connect as \
         a component's NATS user (IM_NATS_USER and IM_NATS_PASSWORD, or --nats-creds / \
         --nats-nkey); `imctl up` writes each one's into <data dir>/nats/identities/<user>.env \
         (set -a; . data/nats/identities/im-operator.env; set +a)"
    )]
    IdentityRefused {
        servers: String,
        who: String,
        #[source]
        source: async_nats::ConnectError,
    },
    /// The log holds something the writer cannot trust (undecodable event, a
    /// conv_seq gap). Never silently skipped by a writer.
    #[error("corrupt log at stream seq {stream_seq}: {detail}")]
    Corrupt { stream_seq: u64, detail: String },
    /// A stored message that is not what it says it is.
    #[error("corrupt log at stream seq {stream_seq}: not a readable event")]
    Undecodable {
        stream_seq: u64,
        #[source]
        source: im_schema::DecodeError,
    },
    #[error("stream {stream} cannot change {field}: {detail}")]
    IncompatibleStream {
        stream: String,
        field: String,
        detail: String,
    },
    #[error("configuration: {0}")]
    Config(String),
    /// A setting that could not be read or used (a key or credentials
    /// file, a server address): what it was, and why.
    #[error("configuration: {what}")]
    Setting {
        what: String,
        #[source]
        source: BoxError,
    },
    #[error(transparent)]
    InvalidId(#[from] crate::ids::IdError),
}

/// An underlying error kept as a source, whatever its type (the NATS
/// client's errors differ per call; a server's reply may be only text).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl StreamsError {
    /// A setting `what` that could not be read or used, and why.
    pub fn setting(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StreamsError::Setting {
            what: what.into(),
            source: source.into(),
        }
    }

    pub(crate) fn unavailable(context: &'static str, source: impl Into<BoxError>) -> Self {
        StreamsError::Unavailable {
            context,
            source: source.into(),
        }
    }
}

/// `.or_unavailable("what the caller was doing")` on a JetStream result.
pub(crate) trait OrUnavailable<T> {
    fn or_unavailable(self, context: &'static str) -> Result<T, StreamsError>;
}

impl<T, E: Into<BoxError>> OrUnavailable<T> for Result<T, E> {
    fn or_unavailable(self, context: &'static str) -> Result<T, StreamsError> {
        self.map_err(|e| StreamsError::unavailable(context, e))
    }
}
