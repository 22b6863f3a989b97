//! Rates and counts beyond one connection: a user's sends across all their
//! devices on this gateway, and connections per client address (I18).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Instant;

/// Users whose send rate is tracked at once. A bucket is ~100 bytes, so
/// this is ~10 MB at most; an evicted user comes back with a full bucket,
/// so eviction only ever forgives (bounded by the burst).
pub const USER_BUCKETS_MAX: usize = 100_000;

/// A token bucket: `rate` tokens a second up to `burst`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32) -> Self {
        TokenBucket {
            tokens: f64::from(burst),
            last: Instant::now(),
            rate: f64::from(rate),
            burst: f64::from(burst),
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Every user's sends on this gateway, whichever device or protocol.
pub struct UserRates {
    buckets: Mutex<lru::LruCache<String, TokenBucket>>,
    rate: u32,
    burst: u32,
}

impl UserRates {
    pub fn new(rate: u32, burst: u32) -> Self {
        UserRates {
            buckets: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(USER_BUCKETS_MAX).expect("not zero"),
            )),
            rate,
            burst,
        }
    }

    /// Whether `user` may send one more now.
    pub fn take(&self, user: &str) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = buckets.get_mut(user) {
            return bucket.take();
        }
        let mut bucket = TokenBucket::new(self.rate, self.burst);
        let ok = bucket.take();
        buckets.put(user.to_string(), bucket);
        ok
    }
}

/// The address a connection counts against: an IPv4 address, or an IPv6
/// /64 (what one subscriber usually gets; counting /128s would let one
/// host take any number of addresses).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

/// Open WebSocket connections per client address; an entry lives while
/// its address has one (so the map is bounded by `connections_max`).
#[derive(Default)]
pub struct AddressCounts(Mutex<HashMap<IpAddr, usize>>);

impl AddressCounts {
    /// Counts one more from `ip` unless it has `max` already.
    pub fn try_add(&self, ip: IpAddr, max: usize) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    pub fn remove(&self, ip: IpAddr) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_has_one_bucket_across_devices() {
        let rates = UserRates::new(1, 3);
        assert!((0..3).all(|_| rates.take("ann")));
        assert!(!rates.take("ann"), "the burst is shared");
        assert!(rates.take("ben"), "another user has their own");
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(other));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn an_address_has_at_most_max_connections() {
        let counts = AddressCounts::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(counts.try_add(ip, 2) && counts.try_add(ip, 2));
        assert!(!counts.try_add(ip, 2));
        counts.remove(ip);
        assert!(counts.try_add(ip, 2));
        assert!(counts.try_add("10.0.0.2".parse().unwrap(), 2));
    }
}
