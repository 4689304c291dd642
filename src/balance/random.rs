//! `Random` (eproxy's request): a uniformly random usable server. Each worker
//! thread has its own splitmix64 generator in a thread-local (seeded from the
//! clock, a per-thread `RandomState` and the thread id), so picks share nothing and
//! cost a few nanoseconds. An unusable draw is redrawn up to [`DRAWS`] times, which
//! keeps the choice uniform among usable servers unless most are unusable; then
//! the first usable from one more random start is taken (O(n) at worst). Being
//! memoryless, it is what spreads new sticky cookies evenly.

use std::cell::Cell;
use std::hash::BuildHasher;

use super::{splitmix64, Balance, PickContext};

/// Random draws before falling back to a scan.
const DRAWS: usize = 4;

thread_local! {
    /// splitmix64 state; 0 = not seeded yet.
    static STATE: Cell<u64> = const { Cell::new(0) };
}

pub struct Random;

/// The next random 64 bits of this thread's generator.
fn next_u64() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        if x == 0 {
            x = seed();
        }
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        splitmix64(x)
    })
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let per_thread = std::hash::RandomState::new().hash_one(std::thread::current().id());
    splitmix64(nanos ^ per_thread) | 1
}

/// A uniform index below `n` (Lemire's multiply-shift, no division).
#[inline]
fn below(n: usize) -> usize {
    ((u128::from(next_u64()) * n as u128) >> 64) as usize
}

impl Balance for Random {
    fn pick(&self, cx: &PickContext) -> Option<usize> {
        let n = cx.servers.len();
        if n == 0 {
            return None;
        }
        for _ in 0..DRAWS {
            let i = below(n);
            if cx.usable(i) {
                return Some(i);
            }
        }
        cx.first_usable_from(below(n))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    fn within(counts: &[usize], expected: usize, tolerance: f64) {
        for &c in counts {
            let dev = (c as f64 - expected as f64).abs() / expected as f64;
            assert!(dev <= tolerance, "{counts:?} vs {expected}");
        }
    }

    #[test]
    fn uniform_over_30k() {
        let servers = servers(4);
        within(&counts(&Random, &servers, 30_000), 7_500, 0.15);
    }

    #[test]
    fn uniform_among_usable() {
        let servers = servers(4);
        offline(&servers[1]);
        let c = counts(&Random, &servers, 30_000);
        assert_eq!(c[1], 0);
        within(&[c[0], c[2], c[3]], 10_000, 0.15);
    }

    #[test]
    fn threads_get_different_streams() {
        let a: Vec<u64> = std::thread::spawn(|| (0..4).map(|_| next_u64()).collect())
            .join()
            .unwrap();
        let b: Vec<u64> = std::thread::spawn(|| (0..4).map(|_| next_u64()).collect())
            .join()
            .unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn skips_and_none() {
        check_skips(&Random);
        check_all_offline(&Random);
    }
}
