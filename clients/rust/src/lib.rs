//! A Rust client of the gateway (docs/protocol.md), in two layers:
//!
//! - [`Connection`]: one WebSocket in either subprotocol, past its
//!   `Connected` frame; envelopes in and out, several per frame. The tests
//!   and `imctl bench` drive the gateway through it.
//! - [`Client`]: the recovery algorithm on top: reconnect with jittered
//!   backoff, `sync` after every connect, gaps and notifications filled from
//!   history, each conversation's events handed out once and in order, and
//!   sends retried with their `client_msg_id` until answered. The same
//!   algorithm as the TypeScript SDK (`clients/ts`).

mod client;
mod connection;
mod error;
mod frames;
mod log;
mod people;

pub use client::{
    Backoff, Client, ClientConfig, ClientStats, LogEvent, FILL_PAGE, READY_MAX, SEND_ATTEMPTS_MAX,
};
pub use connection::{ConnectOptions, Connection, Ws, CONNECT_TIMEOUT};
pub use error::ClientError;
pub use frames::{decode_frame, encode_frame, Wire};
pub use log::{ConversationLog, PENDING_MAX};
pub use people::{is_people_log, CommandResult, ContactVerb, PeopleNews, PEOPLE_NEWS_MAX};
