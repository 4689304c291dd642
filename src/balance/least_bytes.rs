//! `LeastBytes` (fproxy `-s2`): the usable server that has moved the fewest bytes
//! (`ServerState::bytes`, client-to-server plus server-to-client), ties by list
//! order. It evens out transfer volume rather than request count, which suits
//! backends whose cost is mostly bandwidth (downloads, uploads, tcp tunnels).

use std::sync::atomic::Ordering::Relaxed;

use super::{least_by, Balance, PickContext};

pub struct LeastBytes;

impl Balance for LeastBytes {
    fn pick(&self, cx: &PickContext) -> Option<usize> {
        least_by(cx, |s| s.bytes.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::Tried;
    use super::*;

    #[test]
    fn fewest_bytes_ties_by_order() {
        let servers = servers(4);
        let tried = Tried::new(4);
        for (s, b) in servers.iter().zip([5000, 700, 900, 700]) {
            s.bytes.store(b, Relaxed);
        }
        assert_eq!(LeastBytes.pick(&cx(&servers, &tried)), Some(1));
        let mut t = Tried::new(4);
        t.insert(1);
        assert_eq!(LeastBytes.pick(&cx(&servers, &t)), Some(3));
    }

    #[test]
    fn skips_and_none() {
        check_skips(&LeastBytes);
        check_all_offline(&LeastBytes);
    }
}
