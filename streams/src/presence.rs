//! A presence entry's value (bucket `im_presence`), pure: `{gateway id:
//! last refresh ms}` per user. A gateway adds, refreshes and removes its
//! own line; a line older than the TTL is a crashed gateway's and is
//! dropped by whoever writes; the notifier reads it.

use std::collections::BTreeMap;

/// The gateways a user is connected to, with when each last said so.
pub type Entry = BTreeMap<String, i64>;

pub fn decode(bytes: &[u8]) -> Entry {
    serde_json::from_slice(bytes).unwrap_or_default()
}

pub fn encode(entry: &Entry) -> bytes::Bytes {
    serde_json::to_vec(entry)
        .expect("a map of strings to numbers")
        .into()
}

/// `entry` with `gateway`'s line set to `now` (or removed, `present`
/// false) and lines older than `ttl_ms` dropped.
pub fn with_line(mut entry: Entry, gateway: &str, present: bool, now: i64, ttl_ms: i64) -> Entry {
    entry.retain(|_, seen| now - *seen < ttl_ms);
    if present {
        entry.insert(gateway.to_string(), now);
    } else {
        entry.remove(gateway);
    }
    entry
}

/// Online: some gateway refreshed the user's line within the TTL.
pub fn is_online(entry: &Entry, now: i64, ttl_ms: i64) -> bool {
    entry.values().any(|seen| now - *seen < ttl_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_set_removed_and_expired() {
        let e = with_line(Entry::new(), "a", true, 1_000, 30_000);
        let e = with_line(e, "b", true, 2_000, 30_000);
        assert!(is_online(&e, 2_000, 30_000));
        // b goes; a crashed long ago is dropped by b's next write.
        let e = with_line(e, "b", false, 40_000, 30_000);
        assert!(e.is_empty(), "{e:?}");
        assert!(!is_online(&e, 40_000, 30_000));
        let stale = with_line(Entry::new(), "a", true, 0, 30_000);
        assert!(!is_online(&stale, 30_000, 30_000));
        assert_eq!(decode(&encode(&stale)), stale);
        assert!(decode(b"garbage").is_empty());
    }
}
