//! `Workload` (fproxy `-s4`): a weighted mix of the three load signals, each as the
//! server's share of the entry's total so that no unit dominates:
//! `score = 2·active/Σactive + bytes/Σbytes + busy_ms/Σbusy_ms` (each Σ over all
//! servers of the entry, at least 1); the lowest usable score wins, ties by list
//! order. Raw counters would not mix: bytes grow by megabytes while requests in
//! flight stay in the tens, so any fixed unit lets one signal take over as traffic
//! grows, while shares are unitless and each lies in 0..=1. Requests in flight
//! weigh double because they are the only present-tense signal: bytes and time are
//! history and even out the long run, and `active` stops a server with no history
//! (just added) from taking every request until it catches up. Two passes over
//! the servers, the sums then the minimum, in f64 (64-bit fixed point measured
//! slower, with the shifts it needs against overflow and its integer divisions).

use std::sync::atomic::Ordering::Relaxed;

use super::{least_by, Balance, PickContext};

pub struct Workload;

/// Weight of the requests-in-flight share; bytes and time weigh 1.
const ACTIVE_WEIGHT: f64 = 2.0;

impl Balance for Workload {
    fn pick(&self, cx: &PickContext) -> Option<usize> {
        let (mut active, mut bytes, mut busy) = (0u64, 0u64, 0u64);
        for s in cx.servers {
            active += u64::from(s.active.load(Relaxed));
            bytes = bytes.wrapping_add(s.bytes.load(Relaxed));
            busy = busy.wrapping_add(s.busy_ms.load(Relaxed));
        }
        let ka = ACTIVE_WEIGHT / active.max(1) as f64;
        let kb = 1.0 / bytes.max(1) as f64;
        let kt = 1.0 / busy.max(1) as f64;
        least_by(cx, |s| {
            f64::from(s.active.load(Relaxed)) * ka
                + to_f64(s.bytes.load(Relaxed)) * kb
                + to_f64(s.busy_ms.load(Relaxed)) * kt
        })
    }
}

/// One server's counter stays below 2^63 (8 EiB of bytes, 292 million years of
/// busy_ms), and the signed conversion is one instruction where the unsigned one
/// is a branchy sequence on x86-64. (The sums may pass 2^63: they use the exact one.)
#[inline]
fn to_f64(x: u64) -> f64 {
    x as i64 as f64
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
    fn huge_counters_still_compare() {
        let servers = servers(3);
        let tried = Tried::new(3);
        load(&servers[0], u32::MAX, 1 << 62, 1 << 62);
        load(&servers[1], u32::MAX, 1 << 62, 1 << 62);
        load(&servers[2], 1, 1 << 61, 1);
        assert_eq!(Workload.pick(&cx(&servers, &tried)), Some(2));
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
