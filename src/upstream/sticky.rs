//! Sticky sessions by cookie (SPEC section 3): requests carrying cookie value V
//! keep going to the same server while it is alive.
//!
//! `table` mode: the first request with V picks a server with the entry's balancer
//! (`Random` spreads new cookies evenly) and the table remembers it. The table keys
//! on a hash of V (it holds no secrets), is split in shards so two workers rarely
//! meet on one lock, forgets assignments idle for `StickyTimeout`, and belongs to
//! the entry's live state so it survives a reload for the servers that remain.
//! `hash` mode has no table: rendezvous hashing of V over the alive servers, so
//! every instance and every restart agree, and only V's of a server that went
//! away move.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::upstream::ServerState;

const SHARDS: usize = 64;
/// A shard is swept for expired assignments when it grows past this.
const SWEEP_AT: usize = 4096;

#[derive(Default)]
struct Shard {
    map: HashMap<u64, (Arc<ServerState>, u64)>,
    /// Size after the last sweep: sweep again when it doubled.
    swept_len: usize,
    /// Assignments this shard holds at most (its part of `StickyTableSize`).
    capacity: usize,
}

impl Shard {
    /// Make room for one more assignment: forget the expired ones, and when the
    /// shard is still full, its least recently used eighth (`lru`).
    fn make_room(&mut self, now_ms: u64, timeout: u64) {
        if self.map.len() > SWEEP_AT.max(self.swept_len * 2) || self.map.len() >= self.capacity {
            self.map
                .retain(|_, (_, used)| now_ms.saturating_sub(*used) <= timeout);
            self.swept_len = self.map.len();
        }
        if self.map.len() < self.capacity {
            return;
        }
        crate::lru::forget_least_recent(&mut self.map, self.capacity, |(_, used)| *used);
        self.swept_len = self.map.len();
    }
}

pub struct StickyTable {
    shards: Box<[Mutex<Shard>]>,
    /// Atomic: a reload keeps the table (its assignments) but sets the timeout
    /// of the new configuration.
    timeout_ms: AtomicU64,
}

impl StickyTable {
    /// A table for at most `size` assignments (`StickyTableSize`).
    pub fn new(timeout: std::time::Duration, size: u32) -> StickyTable {
        let size = (size as usize).max(1);
        let n = SHARDS.min(size);
        StickyTable {
            shards: (0..n)
                .map(|i| {
                    Mutex::new(Shard {
                        capacity: size / n + usize::from(i < size % n),
                        ..Shard::default()
                    })
                })
                .collect(),
            timeout_ms: (timeout.as_millis() as u64).into(),
        }
    }

    /// `StickyTimeout` of a reloaded configuration.
    pub fn set_timeout(&self, timeout: std::time::Duration) {
        self.timeout_ms.store(timeout.as_millis() as u64, Relaxed);
    }

    fn timeout_ms(&self) -> u64 {
        self.timeout_ms.load(Relaxed)
    }

    /// The table's bound: a reload that changes `StickyTableSize` starts a new
    /// table (assignments are hints; losing them moves clients once).
    pub fn capacity(&self) -> usize {
        self.shards.iter().map(|s| s.lock().capacity).sum()
    }

    fn shard(&self, key: u64) -> &Mutex<Shard> {
        &self.shards[(key as usize) % self.shards.len()]
    }

    /// The server assigned to `key`, if the assignment is fresh; touches it.
    pub fn get(&self, key: u64, now_ms: u64) -> Option<Arc<ServerState>> {
        let mut sh = self.shard(key).lock();
        let (s, used) = sh.map.get_mut(&key)?;
        if now_ms.saturating_sub(*used) > self.timeout_ms() {
            sh.map.remove(&key);
            return None;
        }
        *used = now_ms;
        Some(s.clone())
    }

    pub fn assign(&self, key: u64, server: &Arc<ServerState>, now_ms: u64) {
        let timeout = self.timeout_ms();
        let mut sh = self.shard(key).lock();
        if !sh.map.contains_key(&key) {
            sh.make_room(now_ms, timeout);
        }
        sh.map.insert(key, (server.clone(), now_ms));
    }

    #[cfg(test)]
    pub(crate) fn timeout(&self) -> u64 {
        self.timeout_ms()
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value<'a>(
    headers: impl Iterator<Item = crate::http::HeaderLine<'a>>,
    name: &[u8],
) -> Option<&'a [u8]> {
    for h in headers {
        if !h.name.eq_ignore_ascii_case(b"cookie") {
            continue;
        }
        for pair in h.value.split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            if let Some(v) = pair.strip_prefix(name).and_then(|r| r.strip_prefix(b"=")) {
                return Some(v);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Address, Server, Span};
    use std::time::Duration;

    fn server(p: u16) -> Arc<ServerState> {
        Arc::new(ServerState::new(Server {
            text: format!("127.0.0.1:{p}"),
            addr: Address::Inet(format!("127.0.0.1:{p}").parse().unwrap()),
            weight: 1,
            tls: None,
            span: Span::default(),
        }))
    }

    #[test]
    fn assignments_expire() {
        let t = StickyTable::new(Duration::from_secs(10), 100);
        let a = server(1);
        t.assign(7, &a, 1000);
        assert!(Arc::ptr_eq(&t.get(7, 5000).unwrap(), &a));
        // Touched at 5000: still there at 14000, gone after 15000 idle.
        assert!(t.get(7, 14_000).is_some());
        assert!(t.get(7, 24_001).is_none());
        assert!(t.is_empty());
    }

    #[test]
    fn the_table_never_holds_more_than_its_size_and_keeps_the_recent() {
        let a = server(1);
        for size in [1u32, 10, 63, 64, 1000] {
            let t = StickyTable::new(Duration::from_secs(3600), size);
            assert_eq!(t.capacity(), size as usize);
            for k in 0..20_000u64 {
                t.assign(k.wrapping_mul(0x9E37_79B9_7F4A_7C15), &a, k);
                assert!(t.len() <= size as usize, "size {size}: {}", t.len());
            }
        }
        // The most recently used assignment survives a flood of new ones.
        let t = StickyTable::new(Duration::from_secs(3600), 1000);
        t.assign(42, &a, 0);
        for k in 1..50_000u64 {
            t.assign(k.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 << 63, &a, k);
            if k % 100 == 0 {
                assert!(t.get(42, k).is_some(), "lost the recently used key at {k}");
            }
        }
        assert!(t.len() <= 1000);
    }

    #[test]
    fn finds_cookie() {
        let buf = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: a=1; SID=abc; b=2\r\n\r\n";
        let head = crate::http::parse_request(buf).unwrap();
        assert_eq!(cookie_value(head.headers(buf), b"SID"), Some(&b"abc"[..]));
        assert_eq!(cookie_value(head.headers(buf), b"S"), None);
    }
}
