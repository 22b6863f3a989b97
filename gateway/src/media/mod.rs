//! Media: object storage for uploads (issue 6, in progress).

pub mod store;
