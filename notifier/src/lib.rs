//! The notifier: wakes members who have no connected device through a
//! push gateway webhook (ARCHITECTURE.md, "Notifier"). It runs a projector
//! of its own (all partitions; `members`, `unread` and the `notify` queue,
//! in its own store, answering no client), decides debounce windows from
//! it (`decide.rs`), and sends what it decided, at least once and in
//! order per user (`send.rs`).

pub mod config;
pub mod control;
pub mod decide;
pub mod metrics;
pub mod opening;
pub mod outbox;
pub mod presence;
pub mod queue;
pub mod run;
pub mod send;
pub mod stats;
pub mod webhook;
pub mod window;

pub use config::NotifierConfig;
pub use reqwest::Url;
pub use run::{Notifier, NotifierError};
