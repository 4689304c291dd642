//! `LeastConnections`: the usable server with the fewest requests in flight
//! (`ServerState::active`; idle pooled connections do not count, since they cost the
//! backend nothing), ties broken by list order. It adapts to slow backends, which
//! pile up requests, where round robin would keep feeding them. Exactness needs a
//! scan of every server's counter, O(n); the scan stops early at an idle server.

use std::sync::atomic::Ordering::Relaxed;

use super::{least_by, Balance, PickContext};

pub struct LeastConnections;

impl Balance for LeastConnections {
    fn pick(&self, cx: &PickContext) -> Option<usize> {
        least_by(cx, |s| s.active.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::Tried;
    use super::*;

    #[test]
    fn fewest_in_flight_ties_by_order() {
        let servers = servers(4);
        let tried = Tried::new(4);
        for (s, n) in servers.iter().zip([3, 1, 2, 1]) {
            set_active(s, n);
        }
        assert_eq!(LeastConnections.pick(&cx(&servers, &tried)), Some(1));
        set_active(&servers[1], 2);
        assert_eq!(LeastConnections.pick(&cx(&servers, &tried)), Some(3));
        offline(&servers[3]);
        assert_eq!(LeastConnections.pick(&cx(&servers, &tried)), Some(1));
    }

    #[test]
    fn spreads_when_requests_stay_in_flight() {
        // Each pick holds its request open: picks fill the servers level by level.
        let servers = servers(3);
        let tried = Tried::new(3);
        for _ in 0..30 {
            let i = LeastConnections.pick(&cx(&servers, &tried)).unwrap();
            servers[i].active.fetch_add(1, Relaxed);
        }
        assert!(servers.iter().all(|s| s.active.load(Relaxed) == 10));
    }

    #[test]
    fn skips_and_none() {
        check_skips(&LeastConnections);
        check_all_offline(&LeastConnections);
    }
}
