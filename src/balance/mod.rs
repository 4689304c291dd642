//! Load balancers (SPEC section 3): one trait, one module per strategy.
//!
//! A balancer answers "which server next" for one request, skipping servers already
//! tried for it, servers that are offline and servers at their `MaxConnections`; the
//! connect path calls it again after each failed connect, so failover works the
//! same for every strategy. State shared across worker threads is atomics; only
//! `LockingRoundRobin` takes a lock, by design.
//!
//! The hashing helpers here ([`stable_hash`], [`mix`], [`rendezvous`]) are stable
//! across processes, restarts and machines (no `RandomState`), so every simian
//! instance maps a client IP or a sticky-cookie value to the same server.

mod first_alive;
mod least_bytes;
mod least_connections;
mod least_time;
mod locking_round_robin;
mod naive;
mod random;
mod round_robin;
mod source_hash;
mod weighted_round_robin;
mod workload;

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::config::{Balancer, Server};
use crate::upstream::ServerState;

pub use first_alive::FirstAlive;
pub use least_bytes::LeastBytes;
pub use least_connections::LeastConnections;
pub use least_time::LeastTime;
pub use locking_round_robin::LockingRoundRobin;
pub use naive::Naive;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use source_hash::SourceHash;
pub use weighted_round_robin::WeightedRoundRobin;
pub use workload::Workload;

/// Servers already tried for the current request, as a bitset: inline up to 256
/// servers, so the per-request path does not allocate for any real entry.
#[derive(Debug, Clone)]
pub enum Tried {
    Inline([u64; 4]),
    Heap(Vec<u64>),
}

impl Tried {
    pub fn new(n: usize) -> Tried {
        if n <= 256 {
            Tried::Inline([0; 4])
        } else {
            Tried::Heap(vec![0; n.div_ceil(64)])
        }
    }
    fn words(&self) -> &[u64] {
        match self {
            Tried::Inline(w) => w,
            Tried::Heap(w) => w,
        }
    }
    fn words_mut(&mut self) -> &mut [u64] {
        match self {
            Tried::Inline(w) => w,
            Tried::Heap(w) => w,
        }
    }
    pub fn insert(&mut self, i: usize) {
        if let Some(w) = self.words_mut().get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }
    #[inline]
    pub fn contains(&self, i: usize) -> bool {
        self.words()
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    pub fn clear(&mut self) {
        self.words_mut().iter_mut().for_each(|w| *w = 0);
    }
}

/// What a balancer may look at for one pick.
pub struct PickContext<'a> {
    pub servers: &'a [Arc<ServerState>],
    pub client_ip: Option<IpAddr>,
    pub client_port: u16,
    pub now_ms: u64,
    pub tried: &'a Tried,
    /// Per-server limit of requests in flight (`MaxConnections`).
    pub max_connections: Option<u32>,
    /// A sticky cookie leads this pick: drained servers still count.
    pub sticky: bool,
}

impl PickContext<'_> {
    /// May server `i` take this request now?
    #[inline]
    pub fn usable(&self, i: usize) -> bool {
        let s = &self.servers[i];
        !self.tried.contains(i)
            && s.is_available_to(self.now_ms, self.sticky)
            && self
                .max_connections
                .is_none_or(|m| s.active.load(Relaxed) < m)
    }

    /// The first usable server scanning from `start`, wrapping around.
    #[inline]
    pub fn first_usable_from(&self, start: usize) -> Option<usize> {
        let n = self.servers.len();
        if n == 0 {
            return None;
        }
        // One division at most, none per step.
        let start = if start < n { start } else { start % n };
        (start..n).chain(0..start).find(|&i| self.usable(i))
    }
}

pub trait Balance: Send + Sync {
    /// The next server for this request, or `None` when no usable one is left.
    fn pick(&self, cx: &PickContext) -> Option<usize>;

    /// New weights (`simian ctl weight`), one per server; `false` for balancers
    /// that have no weights.
    fn set_weights(&self, _weights: &[u32]) -> bool {
        false
    }
}

/// Build the balancer of an entry. `servers` is the entry's list in the same order
/// as the `ServerState`s later passed in [`PickContext::servers`].
pub fn build(kind: Balancer, servers: &[Server]) -> Box<dyn Balance> {
    match kind {
        Balancer::Naive => Box::new(Naive),
        Balancer::FirstAlive => Box::new(FirstAlive),
        Balancer::RoundRobin => Box::new(RoundRobin::default()),
        Balancer::LockingRoundRobin => Box::new(LockingRoundRobin::default()),
        Balancer::LeastConnections => Box::new(LeastConnections),
        Balancer::WeightedRoundRobin => Box::new(WeightedRoundRobin::new(servers)),
        Balancer::SourceHash => Box::new(SourceHash::new(servers)),
        Balancer::Random => Box::new(Random),
        Balancer::LeastBytes => Box::new(LeastBytes),
        Balancer::LeastTime => Box::new(LeastTime),
        Balancer::Workload => Box::new(Workload),
    }
}

/// The splitmix64 finaliser: a fast bijective mix of 64 bits, every output bit
/// depending on every input bit.
#[inline]
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A stable 64-bit hash of bytes (FNV-1a, then splitmix64 to spread FNV's weak low
/// bits): the same value in every process, build and machine, unlike `RandomState`.
/// For cookie values, IP addresses and server names, never for secrets.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix64(h)
}

/// The rendezvous score of `key` on a server whose salt is `salt` (both already
/// well spread, e.g. from [`stable_hash`] or [`splitmix64`]).
#[inline]
pub fn mix(key: u64, salt: u64) -> u64 {
    splitmix64(key ^ salt)
}

/// The salt of each server for [`rendezvous_with`]: a hash of its address as
/// written, so the mapping survives reordering the list and inserting servers.
pub fn salts(servers: &[Server]) -> Vec<u64> {
    servers
        .iter()
        .map(|s| stable_hash(s.text.as_bytes()))
        .collect()
}

/// Rendezvous (highest random weight) hashing over the usable servers, salted by
/// server index: the usable server with the highest `mix(key, splitmix64(index))`.
/// Only keys whose server became unusable move, and they come back with it; ties
/// (never in practice) go to list order. For `StickyCookie NAME hash`, with
/// `key = stable_hash(value)`. Salting by index means reordering or inserting
/// servers in the config reshuffles keys; [`rendezvous_with`] and [`salts`] avoid
/// that at the cost of keeping one `Vec<u64>` per entry.
pub fn rendezvous(key: u64, cx: &PickContext) -> Option<usize> {
    best_score(cx, cx.servers.len(), |i| mix(key, splitmix64(i as u64)))
}

/// [`rendezvous`] with precomputed per-server salts (see [`salts`]), so the mapping
/// depends on the servers' addresses rather than their positions in the list.
/// Servers beyond `salts` are never picked.
pub fn rendezvous_with(key: u64, salts: &[u64], cx: &PickContext) -> Option<usize> {
    let n = cx.servers.len().min(salts.len());
    best_score(cx, n, |i| mix(key, salts[i]))
}

/// The usable server below `n` with the highest score; ties go to the first.
#[inline]
fn best_score(cx: &PickContext, n: usize, score: impl Fn(usize) -> u64) -> Option<usize> {
    let mut best: Option<(usize, u64)> = None;
    for i in 0..n {
        let s = score(i);
        if best.is_none_or(|(_, b)| s > b) && cx.usable(i) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

/// The usable server with the smallest `metric`; ties go to list order. The metric
/// is read first and usability only checked for a new minimum, and a usable server
/// at zero ends the scan (nothing after it can be strictly smaller).
#[inline]
pub(crate) fn least_by<T: PartialOrd + Copy + Default>(
    cx: &PickContext,
    metric: impl Fn(&ServerState) -> T,
) -> Option<usize> {
    let zero = T::default();
    let mut best: Option<(usize, T)> = None;
    for (i, s) in cx.servers.iter().enumerate() {
        let v = metric(s);
        if best.is_none_or(|(_, b)| v < b) && cx.usable(i) {
            if v <= zero {
                return Some(i);
            }
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;
    use std::time::Duration;

    use super::{Balance, PickContext, Tried};
    use crate::config::{Address, Availability, Server, Span};
    use crate::upstream::ServerState;

    /// The clock every test picks at.
    pub const NOW: u64 = 10_000;

    pub fn spec(i: usize, weight: u32) -> Server {
        let text = format!("10.0.{}.{}:8080", i / 256, i % 256);
        Server {
            addr: Address::Inet(text.parse().unwrap()),
            text,
            weight,
            tls: None,
            span: Span::default(),
        }
    }

    pub fn specs(weights: &[u32]) -> Vec<Server> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| spec(i, w))
            .collect()
    }

    pub fn states(specs: &[Server]) -> Vec<Arc<ServerState>> {
        specs
            .iter()
            .map(|s| Arc::new(ServerState::new(s.clone())))
            .collect()
    }

    /// `n` servers of weight 1.
    pub fn servers(n: usize) -> Vec<Arc<ServerState>> {
        states(&specs(&vec![1; n]))
    }

    /// Take a server offline by passive failure (AttemptsCount 1) at [`NOW`].
    pub fn offline(s: &ServerState) {
        let a = Availability {
            attempts: 1,
            offline_timeout: Duration::from_secs(60),
        };
        s.connect_failed(&a, NOW);
    }

    pub fn set_active(s: &ServerState, n: u32) {
        s.active.store(n, Relaxed);
    }

    pub fn cx<'a>(servers: &'a [Arc<ServerState>], tried: &'a Tried) -> PickContext<'a> {
        PickContext {
            servers,
            client_ip: None,
            client_port: 0,
            now_ms: NOW,
            tried,
            max_connections: None,
            sticky: false,
        }
    }

    /// How many of `picks` picks went to each server.
    pub fn counts(b: &dyn Balance, servers: &[Arc<ServerState>], picks: usize) -> Vec<usize> {
        let tried = Tried::new(servers.len());
        let cx = cx(servers, &tried);
        let mut out = vec![0; servers.len()];
        for _ in 0..picks {
            out[b.pick(&cx).expect("a usable server")] += 1;
        }
        out
    }

    /// The common skip rules every balancer must honour: offline, health-down,
    /// tried and full servers are never picked, and nothing usable gives `None`.
    pub fn check_skips(b: &dyn Balance) {
        let servers = servers(4);
        offline(&servers[0]);
        servers[1].health_down.store(true, Relaxed);
        set_active(&servers[2], 5);
        let mut tried = Tried::new(4);
        let mut c = cx(&servers, &tried);
        c.max_connections = Some(5);
        for _ in 0..50 {
            assert_eq!(b.pick(&c), Some(3));
        }
        tried.insert(3);
        let mut c = cx(&servers, &tried);
        c.max_connections = Some(5);
        assert_eq!(b.pick(&c), None, "every server unusable");
        // Below the limit again, server 2 is the only one left.
        c.max_connections = Some(6);
        assert_eq!(b.pick(&c), Some(2));
        let none: Vec<Arc<ServerState>> = Vec::new();
        let empty = Tried::new(0);
        assert_eq!(b.pick(&cx(&none, &empty)), None, "no servers");
    }

    /// All offline gives `None`; back online after the window (one probe each).
    pub fn check_all_offline(b: &dyn Balance) {
        let servers = servers(3);
        servers.iter().for_each(|s| offline(s));
        let tried = Tried::new(3);
        assert_eq!(b.pick(&cx(&servers, &tried)), None);
        let mut later = cx(&servers, &tried);
        later.now_ms = NOW + 60_000;
        assert!(b.pick(&later).is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn first_usable_from_wraps() {
        let servers = servers(3);
        let tried = Tried::new(3);
        let c = cx(&servers, &tried);
        assert_eq!(c.first_usable_from(7), Some(1));
        offline(&servers[1]);
        offline(&servers[2]);
        assert_eq!(c.first_usable_from(1), Some(0));
    }

    #[test]
    fn stable_hash_is_fixed() {
        // Pinned values: changing them reshuffles every deployment's clients.
        assert_eq!(stable_hash(b""), splitmix64(0xcbf2_9ce4_8422_2325));
        assert_eq!(stable_hash(b"a"), splitmix64(0xaf63_dc4c_8601_ec8c));
        assert_ne!(stable_hash(b"ab"), stable_hash(b"ba"));
    }

    #[test]
    fn rendezvous_moves_only_keys_of_the_lost_server() {
        let servers = servers(4);
        let tried = Tried::new(4);
        let salts = salts(&servers.iter().map(|s| s.spec.clone()).collect::<Vec<_>>());
        let before: Vec<_> = (0..1000u64)
            .map(|k| {
                (
                    rendezvous(k, &cx(&servers, &tried)),
                    rendezvous_with(k, &salts, &cx(&servers, &tried)),
                )
            })
            .collect();
        let mut counts = [0; 4];
        before.iter().for_each(|(a, _)| counts[a.unwrap()] += 1);
        assert!(
            counts.iter().all(|&c| (200..=300).contains(&c)),
            "{counts:?}"
        );
        offline(&servers[1]);
        for (k, (a, b)) in before.iter().enumerate() {
            let c = cx(&servers, &tried);
            let (a2, b2) = (
                rendezvous(k as u64, &c),
                rendezvous_with(k as u64, &salts, &c),
            );
            assert!(
                a2 == *a || *a == Some(1),
                "key {k} moved from {a:?} to {a2:?}"
            );
            assert!(
                b2 == *b || *b == Some(1),
                "key {k} moved from {b:?} to {b2:?}"
            );
            assert_ne!(a2, Some(1));
            assert_ne!(b2, Some(1));
        }
    }

    #[test]
    fn build_covers_every_balancer() {
        let three = specs(&[1, 1, 1]);
        let servers = states(&three);
        for kind in Balancer::ALL {
            let b = build(kind, &three);
            let tried = Tried::new(3);
            assert!(b.pick(&cx(&servers, &tried)).is_some(), "{}", kind.name());
            check_skips(&*build(kind, &specs(&[1, 1, 1, 1])));
            check_all_offline(&*build(kind, &three));
        }
    }
}
