pub mod bench;
pub mod check;
pub mod projections;
pub mod streams;
pub mod token;
pub mod up;
