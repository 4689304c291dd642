//! `RateLimit` state (SPEC section 9): a token bucket per client address, per
//! entry. Shared by the workers (a client's connections may land on any), so it
//! is split in shards that two workers rarely meet on; bounded, with the least
//! recently seen clients forgotten first (a forgotten client starts again with a
//! full bucket, which is what a client unseen for that long would have anyway).
//! Kept across a reload for an entry that remains.

use rustc_hash::FxHashMap as HashMap;
use std::net::IpAddr;

use parking_lot::Mutex;

use crate::config::rules::RateLimit;

const SHARDS: usize = 32;
/// Clients remembered per entry at most: ~50 bytes each, so about 5 MB.
pub const MAX_CLIENTS: usize = 100_000;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    seen_ms: u64,
}

pub struct RateTable {
    shards: Box<[Mutex<HashMap<IpAddr, Bucket>>]>,
    per_shard: usize,
    /// Requests refused (`simian_rate_limited_total`).
    pub limited: std::sync::atomic::AtomicU64,
}

impl Default for RateTable {
    fn default() -> Self {
        RateTable::new(MAX_CLIENTS)
    }
}

impl RateTable {
    pub fn new(max_clients: usize) -> RateTable {
        RateTable {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            per_shard: (max_clients / SHARDS).max(1),
            limited: Default::default(),
        }
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, Bucket>> {
        let h = match ip {
            IpAddr::V4(v4) => u64::from(u32::from(*v4)),
            IpAddr::V6(v6) => {
                let x = u128::from(*v6);
                (x ^ (x >> 64)) as u64
            }
        };
        // Fibonacci hashing: neighbouring addresses spread over the shards.
        &self.shards[(h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 59) as usize % SHARDS]
    }

    /// Take one token for `ip`. `Err(ms)`: none left; one is back in `ms`.
    pub fn take(&self, ip: IpAddr, limit: &RateLimit, now_ms: u64) -> Result<(), u64> {
        let mut map = self.shard(&ip).lock();
        if !map.contains_key(&ip) && map.len() >= self.per_shard {
            crate::lru::forget_least_recent(&mut map, self.per_shard, |b| b.seen_ms);
        }
        let burst = f64::from(limit.burst);
        let b = map.entry(ip).or_insert(Bucket {
            tokens: burst,
            seen_ms: now_ms,
        });
        let elapsed = now_ms.saturating_sub(b.seen_ms) as f64 / 1000.0;
        b.tokens = (b.tokens + elapsed * limit.per_second).min(burst);
        // Workers read the clock before taking the lock: a late one must not move
        // the bucket's time back (the same milliseconds would refill it twice).
        b.seen_ms = b.seen_ms.max(now_ms);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            self.limited
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let wait_s = (1.0 - b.tokens) / limit.per_second;
            Err((wait_s * 1000.0).ceil() as u64)
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_the_rate() {
        let t = RateTable::default();
        let l = RateLimit {
            per_second: 5.0,
            burst: 5,
        };
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..5 {
            assert!(t.take(ip, &l, 0).is_ok());
        }
        assert_eq!(t.take(ip, &l, 0), Err(200));
        assert!(t.take(ip, &l, 200).is_ok());
        assert!(t.take(ip, &l, 200).is_err());
        // Another client is not affected.
        assert!(t.take("10.0.0.2".parse().unwrap(), &l, 200).is_ok());
    }

    #[test]
    fn bounded() {
        let t = RateTable::new(1000);
        let l = RateLimit {
            per_second: 1.0,
            burst: 1,
        };
        for i in 0..100_000u32 {
            let _ = t.take(IpAddr::V4(i.into()), &l, u64::from(i));
        }
        assert!(t.len() <= 1000, "{}", t.len());
    }
}
