//! The projector process: durable consumers per projection folding IM_CONV
//! and IM_RCPT into sled read models with atomic checkpoints, a query service
//! over NATS request/reply, and fan-out to `im.deliver.<user_id>`.
//!
//! Not built yet (issue 3). The writer's cold-load hook it will serve is the
//! `members` projection's state + version (see `im_streams::append`).
