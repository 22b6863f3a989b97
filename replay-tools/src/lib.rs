//! The auditor CLI's library (`im-replay`): export, verify the hash chain and
//! the rules, reconstruct state as of a sequence or time, archive to object
//! storage.
//!
//! Not built yet (issue 5). The pieces it will reuse exist: the hash chain
//! (`im_streams::codec::payload_hash`, `ConvEvent.prev_hash`), the rules
//! (`im_streams::conversation::check_may_send`) and batched reads
//! (`im_streams::log`).
