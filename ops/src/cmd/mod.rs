pub mod token;
pub mod up;
