//! `LeastTime` (fproxy `-s3`): the usable server with the least total connection
//! time (`ServerState::busy_ms`, the summed duration of the connections it served),
//! ties by list order. Long-lived or slow exchanges weigh more than quick ones, so
//! it evens out how long each backend is kept busy rather than how often it is used.

use std::sync::atomic::Ordering::Relaxed;

use super::{least_by, Balance, PickContext};

pub struct LeastTime;

impl Balance for LeastTime {
    fn pick(&self, cx: &PickContext) -> Option<usize> {
        least_by(cx, |s| s.busy_ms.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::Tried;
    use super::*;

    #[test]
    fn least_busy_ties_by_order() {
        let servers = servers(3);
        let tried = Tried::new(3);
        for (s, t) in servers.iter().zip([40, 10, 10]) {
            s.busy_ms.store(t, Relaxed);
        }
        assert_eq!(LeastTime.pick(&cx(&servers, &tried)), Some(1));
        servers[1].health_down.store(true, Relaxed);
        assert_eq!(LeastTime.pick(&cx(&servers, &tried)), Some(2));
    }

    #[test]
    fn skips_and_none() {
        check_skips(&LeastTime);
        check_all_offline(&LeastTime);
    }
}
