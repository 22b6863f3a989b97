use im_schema::v1;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The upgrade was refused with this HTTP status (401 token, 429, 503),
    /// or the server closed before `Connected` with this close code.
    #[error("connection refused: {0}")]
    Refused(u16),
    /// The connection ended (with its close code, if the server sent one).
    #[error("connection closed ({0:?})")]
    Closed(Option<u16>),
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("websocket")]
    WebSocket(#[source] Box<tokio_tungstenite::tungstenite::Error>),
    #[error("undecodable frame")]
    Decode(#[source] im_schema::DecodeError),
    #[error("http")]
    Http(#[source] reqwest::Error),
    /// An HTTP answer other than 200 (after retrying "not yet" answers).
    #[error("http {status}: {body}")]
    HttpStatus { status: u16, body: String },
    /// An error frame for a command, not worth a retry (bad request, ...).
    #[error("{code:?}: {message}")]
    Command {
        code: v1::ErrorCode,
        message: String,
    },
    /// The server broke the protocol (a first frame other than `Connected`).
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("gave up after {0} attempts")]
    GaveUp(u32),
}

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        ClientError::WebSocket(Box::new(e))
    }
}

impl From<reqwest::Error> for ClientError {
    fn from(e: reqwest::Error) -> Self {
        ClientError::Http(e)
    }
}
