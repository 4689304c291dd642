//! `Workload` (fproxy `-s4`): a weighted mix of the three load signals, each taken
//! as the server's share of the entry's total so that no unit dominates:
//!
//! `score = 2·active/ΣACTIVE + bytes/ΣBYTES + busy_ms/ΣBUSY_MS` (each Σ over all
//! servers of the entry, at least 1), lowest usable score wins, ties by list order.
//!
//! Raw counters would not mix: bytes grow by megabytes while requests in flight
//! stay in the tens, so any fixed unit favours one signal as traffic grows. Shares
//! are unitless and each lies in 0..=1. Requests in flight weigh double because they
//! are the only present-tense signal; bytes and time are history, which evens out
//! the long run, while `active` stops a newly added server (zero history) from
//! taking every request until it catches up. Two passes over the servers (the sums,
//! then the minimum), in 64-bit fixed point.

use std::sync::atomic::Ordering::Relaxed;

use super::{least_by_index, Balance, PickContext};

pub struct Workload;

/// Weight of the requests-in-flight share; bytes and time weigh 1.
const ACTIVE_WEIGHT: u64 = 2;

impl Balance for Workload {
    fn pick(&self, cx: &PickContext) -> Option<usize> {
        let load = |i: usize| {
            let s = &cx.servers[i];
            (
                u64::from(s.active.load(Relaxed)),
                s.bytes.load(Relaxed),
                s.busy_ms.load(Relaxed),
            )
        };
        let (mut active, mut bytes, mut busy) = (0u64, 0u64, 0u64);
        for i in 0..cx.servers.len() {
            let (a, b, t) = load(i);
            active = active.saturating_add(a);
            bytes = bytes.saturating_add(b);
            busy = busy.saturating_add(t);
        }
        let (sa, ka) = share(active, ACTIVE_WEIGHT);
        let (sb, kb) = share(bytes, 1);
        let (st, kt) = share(busy, 1);
        least_by_index(cx, |i| {
            // Clamped: a counter may have grown past its total since the sums.
            let (a, b, t) = load(i);
            (a.min(active) >> sa) * ka + (b.min(bytes) >> sb) * kb + (t.min(busy) >> st) * kt
        })
    }
}

/// Fixed point for `weight · x / total` as `(x >> shift) · k`: the total is shifted
/// into 32 bits and `k = weight · 2^60 / total`, so a term is at most
/// `weight · 2^60`, the three add up within 64 bits, and the precision is 2^-28.
/// Integers rather than floats for the per-server pass (u64 to f64 conversions
/// made it slower), but `k` is divided in f64: a 64-bit integer division costs
/// several times more on common x86 cores, and there are three per pick.
fn share(total: u64, weight: u64) -> (u32, u64) {
    let shift = (64 - total.leading_zeros()).saturating_sub(32);
    let k = (weight << 60) as f64 / (total >> shift).max(1) as f64;
    (shift, k as u64)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::Tried;
    use super::*;

    fn load(s: &crate::upstream::ServerState, active: u32, bytes: u64, busy: u64) {
        set_active(s, active);
        s.bytes.store(bytes, Relaxed);
        s.busy_ms.store(busy, Relaxed);
    }

    #[test]
    fn mixes_the_three_signals() {
        let servers = servers(3);
        let tried = Tried::new(3);
        // s0 has the most requests in flight but far less history:
        // s0 = 2·0.5 + 0.1 + 0.1 = 1.2; s1 = s2 = 2·0.25 + 0.45 + 0.45 = 1.4.
        load(&servers[0], 2, 100, 10);
        load(&servers[1], 1, 450, 45);
        load(&servers[2], 1, 450, 45);
        assert_eq!(Workload.pick(&cx(&servers, &tried)), Some(0));
        load(&servers[0], 3, 100, 10);
        // One more in flight tips it: s0 = 2·0.6 + 0.1 + 0.1 = 1.4,
        // s1 = s2 = 2·0.2 + 0.45 + 0.45 = 1.3, and the tie goes to s1.
        assert_eq!(Workload.pick(&cx(&servers, &tried)), Some(1));
    }

    #[test]
    fn units_do_not_dominate() {
        // Gigabytes on one side, a request queue on the other: both count.
        let servers = servers(2);
        let tried = Tried::new(2);
        load(&servers[0], 0, 9_000_000_000, 1000);
        load(&servers[1], 10, 1_000_000_000, 1000);
        // s0 = 0 + 0.9 + 0.5 = 1.4; s1 = 2 + 0.1 + 0.5 = 2.6.
        assert_eq!(Workload.pick(&cx(&servers, &tried)), Some(0));
    }

    #[test]
    fn huge_counters_do_not_overflow() {
        let servers = servers(3);
        let tried = Tried::new(3);
        load(&servers[0], u32::MAX, u64::MAX / 2, u64::MAX / 2);
        load(&servers[1], u32::MAX, u64::MAX / 2, u64::MAX / 2);
        load(&servers[2], 1, u64::MAX / 4, 1);
        assert_eq!(Workload.pick(&cx(&servers, &tried)), Some(2));
        let (shift, k) = share(10, 1);
        assert_eq!(shift, 0);
        assert!(k.abs_diff((1 << 60) / 10) < 1 << 10);
        assert_eq!(share(u64::MAX, 2).0, 32);
    }

    #[test]
    fn idle_server_wins_at_once() {
        let servers = servers(3);
        let tried = Tried::new(3);
        load(&servers[0], 1, 10, 10);
        assert_eq!(Workload.pick(&cx(&servers, &tried)), Some(1));
    }

    #[test]
    fn skips_and_none() {
        check_skips(&Workload);
        check_all_offline(&Workload);
    }
}
