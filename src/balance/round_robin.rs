//! `RoundRobin`: Monkey's "lockless round robin", one atomic counter per entry. Each
//! pick takes the next slot with one `fetch_add` and scans forward from it to the
//! first usable server, so workers never wait on each other. The price of having no
//! lock is that a skipped server's turn falls to its successor (it gets two turns);
//! `LockingRoundRobin` avoids that by holding a lock across the scan.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::{Balance, PickContext};

#[derive(Default)]
pub struct RoundRobin {
    /// The next slot; wraps modulo the number of servers at each pick.
    next: AtomicUsize,
}

impl Balance for RoundRobin {
    fn pick(&self, cx: &PickContext) -> Option<usize> {
        if cx.servers.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Relaxed) % cx.servers.len();
        cx.first_usable_from(start)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn exactly_even() {
        let servers = servers(4);
        assert_eq!(counts(&RoundRobin::default(), &servers, 4000), [1000; 4]);
    }

    #[test]
    fn skips_and_none() {
        check_skips(&RoundRobin::default());
        check_all_offline(&RoundRobin::default());
    }

    #[test]
    fn offline_turn_goes_to_successor() {
        let servers = servers(3);
        offline(&servers[1]);
        assert_eq!(counts(&RoundRobin::default(), &servers, 300), [100, 0, 200]);
    }
}
