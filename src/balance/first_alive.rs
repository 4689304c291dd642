//! `FirstAlive` (Monkey): the first usable server from the top of the list. The list
//! is a priority order: every request goes to the first server while it is up, the
//! next ones are hot standbys that take over only while it is offline, full or
//! already tried for this request.

use super::{Balance, PickContext};

pub struct FirstAlive;

impl Balance for FirstAlive {
    fn pick(&self, cx: &PickContext) -> Option<usize> {
        (0..cx.servers.len()).find(|&i| cx.usable(i))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn always_the_first_usable() {
        let servers = servers(3);
        assert_eq!(counts(&FirstAlive, &servers, 100), [100, 0, 0]);
        offline(&servers[0]);
        assert_eq!(counts(&FirstAlive, &servers, 100), [0, 100, 0]);
    }

    #[test]
    fn skips_and_none() {
        check_skips(&FirstAlive);
        check_all_offline(&FirstAlive);
    }
}
