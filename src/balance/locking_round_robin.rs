//! `LockingRoundRobin` (Monkey): round robin with the counter under a
//! `parking_lot::Mutex`. The lock is held only for the scan to the next usable
//! server (never across a connect, unlike Monkey, which held it across blocking
//! connects), and it buys exactness: the counter moves past the server actually
//! picked, so the rotation stays even among the usable servers when some are
//! skipped. The cost is contention between workers; `RoundRobin` is lockless.

use parking_lot::Mutex;

use super::{Balance, PickContext};

#[derive(Default)]
pub struct LockingRoundRobin {
    /// The server to try first at the next pick.
    next: Mutex<usize>,
}

impl Balance for LockingRoundRobin {
    fn pick(&self, cx: &PickContext) -> Option<usize> {
        let n = cx.servers.len();
        if n == 0 {
            return None;
        }
        let mut next = self.next.lock();
        let picked = cx.first_usable_from(*next % n);
        if let Some(i) = picked {
            *next = (i + 1) % n;
        }
        picked
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn exactly_even() {
        let servers = servers(4);
        assert_eq!(
            counts(&LockingRoundRobin::default(), &servers, 4000),
            [1000; 4]
        );
    }

    #[test]
    fn stays_even_among_usable() {
        let servers = servers(3);
        offline(&servers[1]);
        assert_eq!(
            counts(&LockingRoundRobin::default(), &servers, 300),
            [150, 0, 150]
        );
    }

    #[test]
    fn skips_and_none() {
        check_skips(&LockingRoundRobin::default());
        check_all_offline(&LockingRoundRobin::default());
    }
}
