//! Whether a member had a device connected when a window opened or since,
//! from the buckets the gateways keep (`im_presence`, `im_last_seen`):
//! presence is not in the log, so it is read when a window is decided.

use async_nats::jetstream::kv::{Operation, Store};
use im_streams::definitions::{open_bucket, LAST_SEEN_BUCKET, PRESENCE_BUCKET, PRESENCE_TTL};

pub struct Presence {
    entries: Store,
    last_seen: Store,
}

const TTL_MS: i64 = PRESENCE_TTL.as_millis() as i64;

impl Presence {
    pub async fn open(
        js: &async_nats::jetstream::Context,
    ) -> Result<Self, im_streams::StreamsError> {
        Ok(Presence {
            entries: open_bucket(js, PRESENCE_BUCKET).await?,
            last_seen: open_bucket(js, LAST_SEEN_BUCKET).await?,
        })
    }

    /// Connected now, or the last device left at or after `since_ms`: the
    /// member saw the window's messages arrive (or synced them). A bucket
    /// that cannot be read counts as "not connected": a notification too
    /// many beats a message nobody is told of.
    pub async fn connected_since(&self, user: &str, since_ms: i64, now_ms: i64) -> bool {
        if let Ok(Some(e)) = self.entries.entry(user).await {
            if e.operation == Operation::Put
                && im_streams::presence::is_online(
                    &im_streams::presence::decode(&e.value),
                    now_ms,
                    TTL_MS,
                )
            {
                return true;
            }
        }
        match self.last_seen.get(user).await {
            Ok(Some(v)) => std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .is_some_and(|seen| seen >= since_ms),
            _ => false,
        }
    }
}
