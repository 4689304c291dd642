//! `WeightedRoundRobin`: nginx's smooth weighted round robin, made lockless. nginx
//! keeps a `current` weight per server and, at each pick, adds every weight to its
//! `current`, picks the largest and subtracts the total from it; the result gives
//! each server its share while interleaving them (weights 3:2:1 give `a b a c b a`,
//! never `a a a b b c`). That state would need a lock shared by every worker, so the
//! whole cycle (length Σweights after dividing by their gcd, scaled down to at most
//! [`MAX_CYCLE`] slots, each server keeping at least one) is computed once here and
//! one atomic counter walks it: a pick is a `fetch_add` and a table read. When the
//! slot's server is unusable, the pick is drawn instead among the usable servers in
//! proportion to their weights (an O(n) scan, only on that path, hashing the counter
//! for the draw). Walking on along the cycle would be cheaper but unfair: with
//! weights 100:1:1 and the first server down, the slot after each long run of it
//! would take that whole run, giving one server twice the other's share. Weights come
//! from `weight=N` or from a server listed several times (the config folds those).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use arc_swap::ArcSwap;

use super::{splitmix64, Balance, PickContext};
use crate::config::Server;

/// Longest precomputed cycle (unless there are more servers than this).
pub const MAX_CYCLE: u64 = 4096;

pub struct WeightedRoundRobin {
    /// Swapped whole by `simian ctl weight` (a pick reads it without a lock).
    plan: ArcSwap<Plan>,
    /// Picks so far; the slot is this modulo the cycle's length.
    next: AtomicUsize,
}

struct Plan {
    /// One full smooth cycle, as server indices.
    cycle: Box<[u32]>,
    /// The weights the cycle was built from, for the draw around unusable servers.
    weights: Box<[u64]>,
}

impl Plan {
    fn new(weights: &[u32]) -> Plan {
        let weights = cycle_weights(weights);
        Plan {
            cycle: smooth_cycle(&weights).into(),
            weights: weights.into(),
        }
    }
}

impl WeightedRoundRobin {
    pub fn new(servers: &[Server]) -> WeightedRoundRobin {
        let weights: Vec<u32> = servers.iter().map(|s| s.weight).collect();
        WeightedRoundRobin {
            plan: ArcSwap::from_pointee(Plan::new(&weights)),
            next: AtomicUsize::new(0),
        }
    }

    /// A usable server drawn with probability proportional to its weight, using
    /// `seed` as the randomness; `None` when nothing is usable.
    fn weighted_draw(plan: &Plan, cx: &PickContext, seed: u64) -> Option<usize> {
        let n = cx.servers.len().min(plan.weights.len());
        let total: u64 = (0..n)
            .filter(|&i| cx.usable(i))
            .map(|i| plan.weights[i])
            .sum();
        if total == 0 {
            return None;
        }
        let mut r = splitmix64(seed) % total;
        for i in (0..n).filter(|&i| cx.usable(i)) {
            if r < plan.weights[i] {
                return Some(i);
            }
            r -= plan.weights[i];
        }
        // A server became unusable between the two scans.
        cx.first_usable_from(0)
    }
}

impl Balance for WeightedRoundRobin {
    fn pick(&self, cx: &PickContext) -> Option<usize> {
        let plan = self.plan.load();
        if cx.servers.is_empty() || plan.cycle.is_empty() {
            return None;
        }
        let ticket = self.next.fetch_add(1, Relaxed);
        let i = plan.cycle[ticket % plan.cycle.len()] as usize;
        if i < cx.servers.len() && cx.usable(i) {
            return Some(i);
        }
        Self::weighted_draw(&plan, cx, ticket as u64)
    }

    fn set_weights(&self, weights: &[u32]) -> bool {
        self.plan.store(std::sync::Arc::new(Plan::new(weights)));
        true
    }
}

/// The weights the cycle uses: divided by their gcd, then scaled down
/// proportionally when their sum exceeds the cycle's cap.
fn cycle_weights(weights: &[u32]) -> Vec<u64> {
    let w: Vec<u64> = weights.iter().map(|&w| u64::from(w.max(1))).collect();
    let g = w.iter().fold(0, |g, &x| gcd(g, x)).max(1);
    let w: Vec<u64> = w.iter().map(|x| x / g).collect();
    let total: u64 = w.iter().sum();
    let cap = MAX_CYCLE.max(w.len() as u64);
    if total <= cap {
        return w;
    }
    w.iter()
        .map(|&x| ((u128::from(x) * u128::from(cap) / u128::from(total)) as u64).max(1))
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// nginx's smooth weighted round robin, run for one full cycle.
fn smooth_cycle(weights: &[u64]) -> Vec<u32> {
    let total: i64 = weights.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            let mut best = 0;
            for (i, &w) in weights.iter().enumerate() {
                current[i] += w as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            best as u32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::Tried;
    use super::*;

    fn wrr(
        weights: &[u32],
    ) -> (
        WeightedRoundRobin,
        Vec<std::sync::Arc<crate::upstream::ServerState>>,
    ) {
        let specs = specs(weights);
        (WeightedRoundRobin::new(&specs), states(&specs))
    }

    #[test]
    fn three_two_one_exact_and_smooth() {
        let (b, servers) = wrr(&[3, 2, 1]);
        assert_eq!(&*b.plan.load().cycle, &[0, 1, 0, 2, 1, 0]);
        assert_eq!(counts(&b, &servers, 6), [3, 2, 1]);
        assert_eq!(counts(&b, &servers, 600), [300, 200, 100]);
    }

    #[test]
    fn equal_weights_never_repeat() {
        let (b, servers) = wrr(&[1, 1, 1]);
        let tried = Tried::new(3);
        let picks: Vec<_> = (0..300)
            .map(|_| b.pick(&cx(&servers, &tried)).unwrap())
            .collect();
        assert!(picks.windows(2).all(|w| w[0] != w[1]), "{picks:?}");
        assert_eq!(counts(&b, &servers, 300), [100; 3]);
    }

    #[test]
    fn gcd_and_cap() {
        let (b, _) = wrr(&[2, 4, 6]);
        assert_eq!(b.plan.load().cycle.len(), 6);
        let (b, servers) = wrr(&[30_000, 10_000, 1]);
        assert!(b.plan.load().cycle.len() as u64 <= MAX_CYCLE + 3);
        let c = counts(&b, &servers, b.plan.load().cycle.len());
        assert_eq!(c[2], 1, "a tiny weight keeps one slot");
        assert!((c[0] as f64 / c[1] as f64 - 3.0).abs() < 0.01, "{c:?}");
    }

    #[test]
    fn unusable_share_spreads_by_weight() {
        let (b, servers) = wrr(&[3, 2, 1]);
        offline(&servers[0]);
        let c = counts(&b, &servers, 6000);
        assert_eq!(c[0], 0);
        assert!(
            c[1].abs_diff(4000) < 200 && c[2].abs_diff(2000) < 200,
            "{c:?}"
        );
        // A heavy server down: the walk crosses its long run.
        let (b, servers) = wrr(&[100, 1, 1]);
        offline(&servers[0]);
        let c = counts(&b, &servers, 10_200);
        assert_eq!(c[0], 0);
        assert!(
            c[1].abs_diff(5100) < 300 && c[2].abs_diff(5100) < 300,
            "{c:?}"
        );
    }

    #[test]
    fn skips_and_none() {
        check_skips(&WeightedRoundRobin::new(&specs(&[1, 2, 3, 4])));
        check_all_offline(&WeightedRoundRobin::new(&specs(&[5, 1, 1])));
    }
}
