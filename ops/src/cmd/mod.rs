pub mod bench;
pub mod check;
pub mod nats_identities;
pub mod projections;
pub mod secrets;
pub mod streams;
pub mod token;
pub mod up;
